"""slim.data.dataset: README statistics, leave-one-out invariants, tie rule, custom loader, bad input, download."""
from __future__ import annotations

import http.server
import io
import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slim.data.dataset import DataFormatError, SequentialDataset, load_custom, load_dataset, load_ml100k

# ---- statistics promised by the dataset READMEs ----------------------------------------------

# (users, items, interactions, mean length as printed (2 decimals), min length, max length)
README_STATS = {
    # /work/shared/data/ml-100k/README.md, "Statistics" (its "mean 106.05" is 100,000 / 943 = 106.0445
    # rounded up; we compare means to 0.01)
    "ml100k": (943, 1682, 100_000, 106.05, 20, 737),
    # /work/shared/data/amazon-video-games/README.md, "Statistics" (reconstructed sequences)
    "games": (50_546, 16_859, 440_264, 8.71, 5, 50),
    # /work/shared/data/amazon-industrial-scientific/README.md, "Statistics"
    "scientific": (8_317, 4_344, 58_492, 7.03, 5, 78),
}


@pytest.mark.parametrize("fixture", list(README_STATS))
def test_readme_statistics(fixture, request):
    ds: SequentialDataset = request.getfixturevalue(fixture)
    users, items, inter, mean_len, min_len, max_len = README_STATS[fixture]
    s = ds.stats()
    assert (s["users"], s["items"], s["interactions"]) == (users, items, inter)
    assert s["mean_length"] == pytest.approx(inter / users)
    assert abs(s["mean_length"] - mean_len) <= 0.01
    assert (s["min_length"], s["max_length"]) == (min_len, max_len)
    assert ds.items.index[0] == 1 and ds.items.index[-1] == items  # 0 is padding
    assert ds.values.min() >= 1 and ds.values.max() <= items


@pytest.mark.parametrize("fixture", list(README_STATS))
def test_targets_not_in_train_prefix(fixture, request):
    ds: SequentialDataset = request.getfixturevalue(fixture)
    width = ds.n_items + 1
    user_of = np.repeat(np.arange(ds.n_users), ds.lengths)
    pos = np.arange(ds.n_interactions) - np.repeat(ds.offsets[:-1], ds.lengths)
    in_prefix = pos < np.repeat(ds.lengths - 2, ds.lengths)
    prefix_keys = user_of[in_prefix] * width + ds.values[in_prefix]
    for split in ("valid", "test"):
        keys = np.arange(ds.n_users) * width + ds.targets(split)
        assert not np.isin(keys, prefix_keys).any(), split
    assert (ds.targets("valid") != ds.targets("test")).all()
    u = ds.n_users // 2
    assert ds.history(u, "test").tolist() == ds.sequence(u)[:-1].tolist()
    assert ds.history(u, "valid").tolist() == ds.train_prefix(u).tolist()
    assert ds.target(u, "valid") == ds.targets("valid")[u]


def test_ml100k_equal_timestamps_keep_file_order(ml100k, data_dir):
    raw = pd.read_csv(data_dir / "ml-100k" / "raw" / "ml-100k.inter", sep="\t", dtype=str)
    raw.columns = ["user_id", "item_id", "rating", "timestamp"]
    raw["timestamp"] = raw["timestamp"].astype(float)
    assert raw.duplicated(["user_id", "timestamp"]).any()  # the README: every user has ties
    expected = raw.sort_values(["user_id", "timestamp"], kind="stable").groupby("user_id", sort=False)["item_id"]
    expected = {u: list(items) for u, items in expected}
    id_of = ml100k.items["item_id"]
    for u in range(ml100k.n_users):
        assert id_of.loc[ml100k.sequence(u)].tolist() == expected[ml100k.user_ids[u]]


def test_to_hf_items_equal_sequences(ml100k):
    hf = ml100k.to_hf()
    assert hf.column_names == ["user_idx", "user_id", "items"]
    assert len(hf) == ml100k.n_users
    for u in (0, 1, ml100k.n_users - 1):
        row = hf[u]
        assert row["items"] == ml100k.sequence(u).tolist()
        assert row["user_id"] == ml100k.user_ids[u] and row["user_idx"] == u
    flat = np.concatenate([np.asarray(x) for x in hf["items"]])
    assert np.array_equal(flat, ml100k.values)


def test_builtin_item_text(ml100k, games, scientific):
    assert ml100k.titles([1]) == ["Toy Story"]
    assert "genre: Animation" in ml100k.items.loc[1, "text"]
    assert games.titles([1]) == ["Fire Emblem: The Sacred Stones"]
    assert (scientific.items["title"].str.len() > 0).all()


# ---- custom datasets ---------------------------------------------------------------------------

ITEMS_CSV = "item_id,title,category\nA,Alpha,tools\nB,Beta,\nC,Gamma,glue\nD,Delta,tape\n"


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_custom_csv_with_timestamp_sorts_stably(tmp_path):
    items = _write(tmp_path / "items.csv", ITEMS_CSV)
    inter = _write(tmp_path / "inter.csv",
                   "user_id,item_id,timestamp\nu1,C,30\nu1,A,10\nu1,D,20\nu1,B,20\nu2,B,5\nu2,A,6\nu2,C,7\n")
    ds = load_custom(inter, items)
    assert ds.n_users == 2 and ds.n_items == 4 and ds.n_interactions == 7
    assert list(ds.user_ids) == ["u1", "u2"]
    ids = ds.items["item_id"]
    assert ids.loc[ds.sequence(0)].tolist() == ["A", "D", "B", "C"]  # D and B tie at 20: file order
    assert ids.loc[ds.sequence(1)].tolist() == ["B", "A", "C"]
    assert ds.items.loc[1, "text"] == "Alpha. category: tools"
    assert ds.items.loc[2, "text"] == "Beta"


def test_custom_jsonl_without_timestamp_uses_file_order(tmp_path):
    items = _write(tmp_path / "items.jsonl", "".join(
        json.dumps({"item_id": i, "title": t, "brand": "Acme"}) + "\n" for i, t in [(1, "One"), (2, "Two"), (3, "Three")]))
    inter = _write(tmp_path / "inter.jsonl", "".join(
        json.dumps({"user_id": u, "item_id": i}) + "\n" for u, i in [("x", 3), ("x", 1), ("x", 2), ("y", 2), ("y", 3), ("y", 1)]))
    ds = load_dataset(f"custom:{inter},{items}")
    assert ds.items["item_id"].loc[ds.sequence(0)].tolist() == ["3", "1", "2"]
    assert ds.titles(ds.sequence(1)) == ["Two", "Three", "One"]
    assert ds.items.loc[1, "text"] == "One. brand: Acme"


def test_custom_jsonl_with_timestamp_and_csv_without(tmp_path):
    items = _write(tmp_path / "items.csv", ITEMS_CSV)
    inter = _write(tmp_path / "inter.jsonl", "".join(
        json.dumps({"user_id": "u", "item_id": i, "timestamp": t}) + "\n" for i, t in [("A", 3), ("B", 1), ("C", 2)]))
    assert load_custom(inter, items).items["item_id"].loc[load_custom(inter, items).sequence(0)].tolist() == ["B", "C", "A"]
    inter_csv = _write(tmp_path / "inter.csv", "user_id,item_id\nu,C\nu,B\nu,A\n")
    ds = load_custom(inter_csv, items)
    assert ds.items["item_id"].loc[ds.sequence(0)].tolist() == ["C", "B", "A"]


BAD_INTERACTIONS = {
    # name: (file content, line the error must name)
    "missing column": ("user_id,item\nu,A\n", 1),
    "unknown item": ("user_id,item_id\nu,A\nu,B\nu,Z\n", 4),
    "short user": ("user_id,item_id\nu,A\nu,B\nu,C\nv,A\nv,B\n", 5),
    "non-utf8": (b"user_id,item_id\nu,A\nu,\xff\xfeB\nu,C\n", 3),
    "duplicate row": ("user_id,item_id\nu,A\nu,B\nu,C\nu,B\n", 5),
    "empty file": ("", 1),
    "bad timestamp": ("user_id,item_id,timestamp\nu,A,1\nu,B,soon\nu,C,3\n", 3),
    "ragged row": ("user_id,item_id\nu,A\nu,B,extra,fields\nu,C\n", 3),
    "empty id": ("user_id,item_id\nu,A\n,B\nu,C\n", 3),
}


@pytest.mark.parametrize("case", list(BAD_INTERACTIONS))
def test_bad_interactions_name_file_and_line(tmp_path, case):
    content, line = BAD_INTERACTIONS[case]
    items = _write(tmp_path / "items.csv", ITEMS_CSV)
    inter = _write(tmp_path / "inter.csv", content)
    with pytest.raises(DataFormatError) as err:
        load_custom(inter, items)
    assert str(inter) in str(err.value) and f"line {line}:" in str(err.value), str(err.value)
    assert err.value.line == line and "Fix:" in str(err.value)


def test_bad_jsonl_names_line(tmp_path):
    items = _write(tmp_path / "items.csv", ITEMS_CSV)
    inter = _write(tmp_path / "inter.jsonl", '{"user_id": "u", "item_id": "A"}\n{"user_id": "u"}\n')
    with pytest.raises(DataFormatError, match=r"inter\.jsonl, line 2: empty item_id"):
        load_custom(inter, items)
    _write(inter, '{"user_id": "u", "item_id": "A"}\n{not json}\n')
    with pytest.raises(DataFormatError, match=r"line 2: invalid JSON"):
        load_custom(inter, items)


def test_bad_items_file(tmp_path):
    inter = _write(tmp_path / "inter.csv", "user_id,item_id\nu,A\nu,B\nu,C\n")
    items = _write(tmp_path / "items.csv", "item_id,title\nA,a\nB,b\nC,c\nB,again\n")
    with pytest.raises(DataFormatError, match=r"items\.csv, line 5: duplicate item_id"):
        load_custom(inter, items)
    _write(items, "item_id,name\nA,a\n")
    with pytest.raises(DataFormatError, match=r"items\.csv, line 1: missing column"):
        load_custom(inter, items)
    _write(items, ITEMS_CSV)
    with pytest.raises(DataFormatError, match=r"nope\.csv: file not found"):
        load_custom(tmp_path / "nope.csv", items)


# ---- ML-100K download path (real HTTP server on 127.0.0.1, GroupLens zip layout) ---------------

GENRES = 19


def _grouplens_zip() -> bytes:
    u_data = [  # user item rating ts (tab-separated, no header); user 1 has a timestamp tie
        (1, 10, 5, 300), (1, 20, 3, 100), (1, 30, 4, 200), (1, 40, 2, 200),
        (2, 20, 4, 50), (2, 10, 1, 60), (2, 30, 5, 70),
    ]
    flags = lambda *on: "|".join("1" if g in on else "0" for g in range(GENRES))  # noqa: E731
    u_item = [  # id|title|release date|video release|IMDb URL|19 genre flags (latin-1)
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{flags(3, 4, 5)}",
        f"20|Amélie (2001)|01-Jan-2001||http://x|{flags(5, 14)}",
        f"30|GoldenEye (1995)|01-Jan-1995||http://x|{flags(1, 2, 16)}",
        f"40|unknown||||{flags(0)}",
    ]
    assert all(len(line.split("|")) == 24 for line in u_item)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/u.data", "".join("\t".join(map(str, r)) + "\n" for r in u_data))
        zf.writestr("ml-100k/u.item", ("\n".join(u_item) + "\n").encode("latin-1"))
        zf.writestr("ml-100k/README", "test copy")
    return buf.getvalue()


@pytest.fixture
def grouplens_server():
    payload = _grouplens_zip()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            if self.path != "/ml-100k.zip":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ml-100k.zip"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_ml100k_download(tmp_path, grouplens_server):
    ds = load_ml100k(tmp_path, download_url=grouplens_server)
    raw = tmp_path / "ml-100k" / "raw"
    assert (raw / "ml-100k.inter").exists() and (raw / "ml-100k.item").exists()
    assert ds.stats()["users"] == 2 and ds.n_items == 4 and ds.n_interactions == 7
    ids = ds.items["item_id"]
    assert ids.loc[ds.sequence(0)].tolist() == ["20", "30", "40", "10"]  # 30 and 40 tie at ts 200
    assert ids.loc[ds.sequence(1)].tolist() == ["20", "10", "30"]
    assert ds.titles([1, 2]) == ["Toy Story (1995)", "Amélie (2001)"]
    assert ds.items.loc[1, "year"] == "1995"
    assert ds.items.loc[1, "genre"] == "Animation Children's Comedy"
    assert ds.items.loc[2, "text"] == "Amélie (2001). year: 2001. genre: Comedy Romance"
    # the second load reads the files written by the first: no server needed
    again = load_ml100k(tmp_path, download_url="http://127.0.0.1:9/unreachable.zip")
    assert np.array_equal(again.values, ds.values)


def test_ml100k_download_bad_zip(tmp_path, grouplens_server):
    with pytest.raises(Exception):
        load_ml100k(tmp_path, download_url=grouplens_server.replace("ml-100k.zip", "missing.zip"))
    assert not (tmp_path / "ml-100k" / "raw" / "ml-100k.inter").exists()
