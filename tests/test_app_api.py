"""gradio_client against the real app on 127.0.0.1: the ``/recommend`` endpoint.

One app process for the module (models load once, as in production). The student is the real
SmolLM2 GGUF in llama.cpp, limited to 64 new tokens to keep the suite fast.
"""
from __future__ import annotations


import pytest

from app_server import ROOT, missing_requirements, running_app

why = missing_requirements()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")


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


def test_dataset_user(client):
    teacher, student, rows = client.predict("ml-100k", "196", api_name="/recommend")
    assert "SmolLM2" in student and "tok/s" in student
    assert teacher.strip()  # cached rationale, live teacher, or how to enable one
    _check_table(rows)
    assert rows[0]["variant"].startswith("SLIM")


def test_custom_title_list(client):
    titles = ["Toy Story", "GoldenEye", "the usual suspects (1995)", "Star Wars", "Fargo", "Not A Real Film 123"]
    teacher, student, rows = client.predict("ml-100k", titles, api_name="/recommend")
    _check_table(rows)
    assert "text matching" in rows[0]["variant"]
    recommended = {r["title"] for r in rows}
    assert not recommended & {"Toy Story", "GoldenEye", "Usual Suspects, The", "Star Wars", "Fargo"}  # history filtered
    assert "not configured" in teacher or "Teacher" in teacher


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
