"""gradio_client against the real app on 127.0.0.1: the ``/recommend`` endpoint.

One app process for the module (models load once, as in production). The student is the real
SmolLM2 GGUF in llama.cpp, limited to 64 new tokens to keep the suite fast. The rankings must come
from the checkpoints that ship in ``assets/ml-100k/checkpoints``: a dataset user is ranked by the
fitted SLIM model (never the untrained cosine fallback), a custom history by the fitted ``match``
projection. The live teacher runs in its own app process, only where its GGUF is installed.
"""
from __future__ import annotations

import re

import pytest

from app_server import ROOT, missing_requirements, running_app
from slim.demo.config import TEACHER_DISABLED, TEACHER_HELP
from slim.demo.display import MATCH_LABEL
from slim.demo.models import local_teacher_installed

why = missing_requirements()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")

SLIM_FITTED = re.compile(r"SLIM \((SASRec|GRU4Rec|SRGNN)\)")  # DemoService labels a fitted `slim` checkpoint so


@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    with running_app(ROOT / "test-artifacts" / "app_api.log") as url:
        yield Client(url, verbose=False)


def _check_table(rows: list[dict], n: int = 10) -> None:
    assert len(rows) >= n
    assert set(rows[0]) == {"rank", "variant", "title", "score", "next_item"}
    first = [r for r in rows if r["variant"] == rows[0]["variant"]]
    assert [r["rank"] for r in first] == list(range(1, n + 1))
    assert all(r["title"] for r in first)
    scores = [r["score"] for r in first]
    assert scores == sorted(scores, reverse=True)


def test_dataset_user_is_ranked_by_the_fitted_slim_model(client):
    teacher, student, rows = client.predict("ml-100k", "196", api_name="/recommend")
    assert "SmolLM2-135M-Instruct + SLIM LoRA assets/student-v4/adapter.gguf" in student and "tok/s" in student
    # user 196's teacher rationale ships in assets/rationales/ml-100k/teacher.jsonl (a run's own
    # runs/ml-100k/rationales/teacher.jsonl is read first)
    assert re.search(r"cached teacher rationale from `(assets|runs)/(rationales/)?ml-100k/(rationales/)?teacher(-grounded)?\.jsonl`",
                     teacher), teacher[:300]
    assert "#### Step 1" in teacher
    _check_table(rows)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    m = SLIM_FITTED.fullmatch(variants[0])
    assert m, f"primary list is {variants[0]!r}, not a fitted SLIM checkpoint (see test-artifacts/app_api.log)"
    assert variants[1:] == [f"{m.group(1)} (plain backbone)"]


def test_scientific_user_is_ranked_by_a_fitted_slim_model(client):
    """assets/amazon-industrial-scientific/checkpoints: the 600-user sample's user 2 gets a fitted list."""
    teacher, student, rows = client.predict("amazon-industrial-scientific", "2", api_name="/recommend")
    assert "SmolLM2-135M-Instruct + SLIM LoRA assets/student-v4/adapter.gguf" in student and "#### Step 1" in student
    _check_table(rows)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    m = SLIM_FITTED.fullmatch(variants[0])
    assert m, f"primary list is {variants[0]!r}, not a fitted SLIM checkpoint (see test-artifacts/app_api.log)"
    assert variants[1:] == [f"{m.group(1)} (plain backbone)"]


def test_custom_title_list_is_ranked_by_fitted_text_matching(client):
    titles = ["Toy Story", "GoldenEye", "the usual suspects (1995)", "Star Wars", "Fargo", "Not A Real Film 123"]
    teacher, student, rows = client.predict("ml-100k", titles, api_name="/recommend")
    _check_table(rows)
    assert {r["variant"] for r in rows} == {MATCH_LABEL}  # the fitted g_t, not "(untrained: cosine)"
    recommended = {r["title"] for r in rows}
    # history filtered; the table shows titles article first
    assert not recommended & {"Toy Story", "GoldenEye", "The Usual Suspects", "Star Wars", "Fargo"}
    assert not any(re.search(r", (The|A|An)( \(\d{4}\))?$", t) for t in recommended), sorted(recommended)
    # this app process runs without a live teacher (running_app): the column says how to enable one
    assert "**Teacher (not configured)**" in teacher
    assert (TEACHER_DISABLED if local_teacher_installed() else TEACHER_HELP) in teacher


@pytest.mark.skipif(not local_teacher_installed(), reason="the local teacher GGUF is not installed "
                    "(python -m slim_train models --teacher)")
def test_custom_history_gets_a_live_teacher_rationale():
    from gradio_client import Client

    with running_app(ROOT / "test-artifacts" / "app_api_teacher.log", teacher=True) as url:
        teacher, student, rows = Client(url, verbose=False).predict(
            "ml-100k", ["Toy Story", "Fargo", "Star Wars", "Babe"], api_name="/recommend")
    assert "**Qwen2.5-Coder-1.5B-Instruct (local teacher)**" in teacher and "tok/s" in teacher
    assert "#### Step 1" in teacher and "cached" not in teacher
    _check_table(rows)


@pytest.mark.parametrize("bad, message", [
    (["zzz nothing", "qqq"], "at least 3"),
    ("no-such-user-42", "not in ml-100k"),
    ("[not json", "not a JSON list"),
])
def test_malformed_input_is_an_error_message_not_a_crash(client, bad, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict("ml-100k", bad, api_name="/recommend")


def test_unknown_dataset_and_server_survives(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Unknown dataset"):
        client.predict("no-such-dataset", "196", api_name="/recommend")
    _, _, rows = client.predict("ml-100k", "186", api_name="/recommend")  # still serving
    _check_table(rows)


def test_api_lists_only_recommend(client):
    info = client.view_api(print_info=False, return_format="dict")
    assert list(info["named_endpoints"]) == ["/recommend"]


def test_live_local_teacher_grounds_step3_in_the_catalogue():
    """The small SmolLM2 GGUF in the teacher's place (same in-process llama.cpp path as the Qwen teacher):
    Step 3 lists only catalogue titles the history does not hold, chosen under a grammar."""
    from gradio_client import Client

    from slim.data.dataset import load_dataset
    from slim.lm.titles import display_title

    history = ["Toy Story", "Fargo", "Star Wars", "Babe", "GoldenEye"]
    with running_app(ROOT / "test-artifacts" / "app_api_grounded.log", max_tokens=32, teacher="smollm2") as url:
        teacher, student, rows = Client(url, verbose=False).predict("ml-100k", history, api_name="/recommend")
    assert "SmolLM2-135M-Instruct.Q4_1 (local teacher)" in teacher and "cached" not in teacher
    assert "#### Step 3" in teacher, teacher
    items = [re.sub(r"^\d+\.\s*", "", line).strip() for line in teacher.split("#### Step 3", 1)[1].strip().splitlines()]
    ds = load_dataset("ml-100k")
    catalogue = {display_title(t) for t in ds.items["title"]}
    seen = {display_title(t) for t in ds.items["title"] if re.sub(r" \(\d{4}\)$", "", t) in history}
    assert len(seen) >= len(history)
    assert len(items) == 3 and len(set(items)) == 3, items
    assert all(i in catalogue for i in items), items
    assert not set(items) & seen, items
    _check_table(rows)
