"""Hostile input against slim.demo.uploads and DemoService.resolve: bounded before matching, typed, and
answered with a short message naming the problem and the fix (never a traceback, never user text in full).

The same inputs go through the real app in tests/test_hostile_app.py (gradio_client and the browser).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from slim.demo.uploads.history import (Catalogue, history_from_file, history_from_picks, history_from_text,
                                      history_from_titles)
from slim.demo.uploads.limits import MAX_ROWS, MAX_UPLOAD_BYTES, UploadError

TITLES = ["Toy Story", "GoldenEye", "Four Rooms", "Usual Suspects, The", "Star Wars", "Fargo", "Godfather, The",
          "Babe", "Dead Man Walking"] + [f"Film number {i}" for i in range(1, 1700)]  # ML-100K-sized


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue(TITLES, range(1, len(TITLES) + 1))


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return p


# ---- 1. every input path is bounded the same way, before any matching -----------------------
def unknown_lines(n: int) -> str:
    return "\n".join(f"unknown {k:05d} zq" for k in range(n))


def test_a_paste_of_50000_unknown_lines_is_refused_before_matching(cat):
    text = unknown_lines(50_000)
    assert len(text.encode()) < MAX_UPLOAD_BYTES  # under the byte bound: only the row bound stops it
    t0 = time.perf_counter()
    with pytest.raises(UploadError, match=r"50,000 titles; the limit is 5,000.*most recent"):
        history_from_text(text, cat)
    assert time.perf_counter() - t0 < 1.0  # was 14.7 s of fuzzy matching


@pytest.mark.parametrize("path", ["csv", "json", "jsonl", "list", "dict"])
def test_every_path_has_the_same_row_bound(tmp_path, cat, path):
    n = MAX_ROWS + 1
    titles = [f"unknown {k}" for k in range(n)]
    with pytest.raises(UploadError, match="the limit is 5,000"):
        if path == "csv":
            history_from_file(write(tmp_path, "h.csv", "title\n" + "\n".join(titles) + "\n"), cat)
        elif path == "json":
            history_from_file(write(tmp_path, "h.json", json.dumps(titles)), cat)
        elif path == "jsonl":
            history_from_file(write(tmp_path, "h.jsonl", "".join(json.dumps({"title": t}) + "\n" for t in titles)), cat)
        elif path == "list":
            history_from_titles(titles, cat)
        else:
            history_from_titles({"titles": titles}, cat)


def test_the_largest_accepted_paste_is_matched_in_bounded_time(cat):
    t0 = time.perf_counter()
    with pytest.raises(UploadError, match="Only 0 title"):
        history_from_text(unknown_lines(MAX_ROWS), cat)
    assert time.perf_counter() - t0 < 6.0  # ~1.5 s on a quiet 2-core box


def test_byte_bound_for_pastes_and_lists(cat):
    with pytest.raises(UploadError, match="longer than 1 MB"):
        history_from_text("x" * (MAX_UPLOAD_BYTES + 1), cat)
    with pytest.raises(UploadError, match="longer than 1 MB"):
        history_from_titles(["y" * 400_000] * 3, cat)
    h = history_from_text("Toy Story\nFargo\nBabe\n" + "z" * 5000, cat)  # one over-long row: dropped unread
    assert h.titles == ["Toy Story", "Fargo", "Babe"] and "longer than 300" in h.dropped[0].reason


# ---- 3. types and text are validated ---------------------------------------------------------
def test_lone_surrogate_in_a_paste_is_a_dropped_row_not_a_crash(cat):
    h = history_from_text("Toy Story\nFargo\nBabe\nbad \ud800 title", cat)
    assert h.titles == ["Toy Story", "Fargo", "Babe"]
    assert "lone surrogate" in h.dropped[0].reason
    h.dropped_table().to_json()  # the table the page shows encodes (it raised UnicodeEncodeError)
    json.dumps(h.dropped_table().to_dict(orient="records"), ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("name, body", [
    ("h.json", '["Toy Story", "Fargo", "Babe", "x\\ud800y"]'),
    ("h.jsonl", '{"title": "Toy Story"}\n{"title": "Fargo"}\n{"title": "Babe"}\n{"title": "\\ud800"}\n'),
])
def test_surrogate_escape_in_json_upload(tmp_path, cat, name, body):
    h = history_from_file(write(tmp_path, name, body), cat)
    assert h.titles == ["Toy Story", "Fargo", "Babe"]
    json.dumps(h.dropped_table().to_dict(orient="records"), ensure_ascii=False).encode("utf-8")


def test_surrogate_in_a_json_field_name_is_shown_replaced(tmp_path, cat):
    with pytest.raises(UploadError) as e:
        history_from_file(write(tmp_path, "h.json", '[{"\\ud800x": "Fargo"}]'), cat)
    str(e.value).encode("utf-8")  # the message itself is valid text
    assert "no 'title' field" in str(e.value)


@pytest.mark.parametrize("value, message", [
    (12345, "not int"), ([["Toy Story"], ["Fargo"]], "Record 1 is list"),
    ([{"title": ["a"]}], "title is list"),
])
def test_title_lists_of_the_wrong_type(cat, value, message):
    with pytest.raises(UploadError, match=message):
        history_from_titles(value, cat)


def test_deeply_nested_json_upload(tmp_path, cat):
    with pytest.raises(UploadError, match="nested too deeply.*flat list"):
        history_from_file(write(tmp_path, "h.json", "[" * 100_000), cat)


# ---- 5. timestamps: reported, rule stated, deterministic -------------------------------------
def test_all_unreadable_timestamps_are_reported(tmp_path, cat):
    h = history_from_file(write(tmp_path, "h.csv", "title,timestamp\nFargo,soon\nBabe,later\nToy Story,never\n"), cat)
    assert h.titles == ["Fargo", "Babe", "Toy Story"]
    note = " ".join(h.notices)
    assert "3 of 3 row(s) have no readable timestamp (row(s) 2, 3, 4)" in note and "file order" in note
    assert "every row has a readable one" in note  # the rule


def test_nan_timestamps_give_the_same_order_wherever_the_nan_is(tmp_path, cat):
    orders = []
    for nan_row in range(3):
        ts = ["3", "1", "2"]
        ts[nan_row] = "nan"
        body = "title,timestamp\n" + "".join(f"{t},{s}\n" for t, s in zip(["Fargo", "Babe", "Toy Story"], ts))
        h = history_from_file(write(tmp_path, f"h{nan_row}.csv", body), cat)
        orders.append(h.titles)
        assert any(f"row(s) {nan_row + 2})" in n for n in h.notices), h.notices
    assert orders == [["Fargo", "Babe", "Toy Story"]] * 3  # file order, the stated rule
    ok = history_from_file(write(tmp_path, "ok.csv", "title,timestamp\nFargo,3\nBabe,1\nToy Story,2\n"), cat)
    assert ok.titles == ["Babe", "Toy Story", "Fargo"] and not ok.notices


# ---- 6. short messages that name the problem and the fix -------------------------------------
def test_utf16_without_bom_is_read(tmp_path, cat):
    h = history_from_file(write(tmp_path, "h.csv", "title\nToy Story\nFargo\nBabe\n".encode("utf-16-le")), cat)
    assert h.titles == ["Toy Story", "Fargo", "Babe"]
    assert any("UTF-16 without a byte-order mark" in n for n in h.notices)


def test_cr_only_line_endings(tmp_path, cat):
    h = history_from_file(write(tmp_path, "h.csv", "title,timestamp\rToy Story,1\rFargo,2\rBabe,3\r"), cat)
    assert h.titles == ["Toy Story", "Fargo", "Babe"]


def test_torn_last_jsonl_line_is_dropped_with_a_notice(tmp_path, cat):
    body = '{"title": "Toy Story"}\n{"title": "Fargo"}\n{"title": "Babe"}\n{"title": "Sta'
    h = history_from_file(write(tmp_path, "h.jsonl", body), cat)
    assert h.titles == ["Toy Story", "Fargo", "Babe"]
    assert any("Line 4, the last line, is not complete JSON" in n for n in h.notices)


def test_random_binary_bytes_are_named_as_binary(tmp_path, cat):
    import random

    rng = random.Random(0)
    raw = bytes(rng.randrange(1, 256) for _ in range(3000))  # no NUL: the Latin-1 fallback must catch it
    with pytest.raises(UploadError, match="not a text file") as e:
        history_from_file(write(tmp_path, "h.csv", raw), cat)
    assert len(str(e.value)) < 200


def test_cp1252_quotes_are_text_not_binary(tmp_path, cat):
    h = history_from_file(write(tmp_path, "h.csv", b"title\nToy Story\nFargo\nBabe\nIt\x92s \x96 fine\n"), cat)
    assert h.titles == ["Toy Story", "Fargo", "Babe"] and any("Latin-1" in n for n in h.notices)


def test_long_header_and_titles_are_truncated_in_messages(tmp_path, cat):
    with pytest.raises(UploadError) as e:
        history_from_file(write(tmp_path, "h.csv", "a" * 100_000 + "\n1\n"), cat)
    assert "Missing column 'title'" in str(e.value) and len(str(e.value)) < 300
    with pytest.raises(UploadError) as e:
        history_from_text("q" * 250 + "\nzz\nyy", cat)
    assert len(str(e.value)) < 600


def test_picks_not_in_the_list_get_a_short_message(cat):
    with pytest.raises(UploadError, match=r"2 picked value\(s\) are not catalogue titles: 'Not a film', 'x'"):
        history_from_picks(["Toy Story", "Not a film", "x"], cat)


def test_a_dict_is_read_like_a_json_upload(cat):
    h = history_from_titles({"titles": ["Toy Story", "Fargo", "Babe"]}, cat)
    assert h.titles == ["Toy Story", "Fargo", "Babe"]
    with pytest.raises(UploadError, match="no 'titles'"):
        history_from_titles({"movies": ["Toy Story"]}, cat)


# ---- the service's API resolution ------------------------------------------------------------
@pytest.fixture(scope="module")
def service(ml100k, data_dir, tmp_path_factory):
    from slim.demo.service import DemoService

    return DemoService(root=tmp_path_factory.mktemp("hostile-root"), data_dir=data_dir)


@pytest.mark.parametrize("dataset, value, message", [
    ("ml-100k", "[" * 100_000, "nested too deeply"),
    ("ml-100k", 3.5, "not float"),
    ("ml-100k", None, "Give a dataset user id"),
    (["ml-100k"], "196", "dataset must be a name"),
    ("ml-100k", "9" * 100_000, "is not in ml-100k"),
    ("x" * 10_000, "196", "Unknown dataset"),
    ("ml-100k", {"user": 1}, "no 'titles'"),
])
def test_resolve_answers_hostile_api_values_with_messages(service, dataset, value, message):
    with pytest.raises(UploadError, match=message) as e:
        service.resolve(dataset, value)
    assert len(str(e.value)) < 400


def test_resolve_takes_an_integer_user_id_and_a_titles_dict(service):
    assert service.resolve("ml-100k", 196).user_id == "196"
    req = service.resolve("ml-100k", {"titles": ["Toy Story", "Fargo", "Babe"]})
    assert req.titles == ["Toy Story (1995)", "Fargo (1996)", "Babe (1995)"] or len(req.titles) == 3
