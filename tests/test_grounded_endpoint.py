"""Grounded Step 3 through an endpoint that takes no grammar: the numbered shortlist, snapped answers.

The snapping rules run on hand-written answers; the whole path runs against a real
``llama_cpp.server`` process on 127.0.0.1 (SmolLM2-135M, the small fixture model) driven through the
openai client by ``teach --server`` and ``reason --base-url``, on real ML-100K users.
"""
from __future__ import annotations

import json

import pytest

from slim.lm.grounding import GroundingConfig, split_step3
from slim.lm.numbered_list import number_the_candidates, snap_to_candidates
from slim.lm.titles import display_title
from slim.lm.prompts import format_candidates, teacher_messages
from slim.lm.reasoners import Generation, GenerationParams

TITLES = ["The Usual Suspects (1995)", "Heat (1995)", "Fargo (1996)", "12 Monkeys (1995)", "Sabrina (1954)",
          "Sabrina (1995)", "Star Trek: First Contact (1996)", "The Lion King (1994)"]


@pytest.mark.parametrize("answer, picks", [
    ("#3\n#1\n#2", [2, 0, 1]),  # by number
    ("1. 3\n2. 1", [2, 0]),  # bare numbers after the answer's own list numbering
    ("3, 7, 2", [2, 6, 1]),  # one line, comma-separated
    ("1. The Usul Suspects\n2. Fargo (1969)\n3. Hat (1995)", [0, 2, 1]),  # typos, a wrong year
    ("Lion King, The\nUsual Suspects, The (1995)", [7, 0]),  # the stored article order of the history
    ("1. Heat\n2. #3 Fargo\n3. Heat (1995)\n4. Fargo", [1, 2]),  # duplicates count once
    ("1. 12 Monkeys (1995)\n2. Sabrina (1995)", [3, 5]),  # a title that starts with a number; the year decides
    ("#99\n#0\n1. Star Wars (1977)\n2. The Godfather", []),  # out of range, and titles not in the list
    ('1. **"Fargo (1996)"** - a dark comedy like Heat\n2. "#2 Heat (1995)"', [2, 1]),  # markdown, explanations
    ("Here are three movies:\n- Star Trek: First Contact\n- Heat", [6, 1]),  # a lead-in line is no pick
    ("#5 Heat (1995)", [1]),  # the title wins over a number that disagrees with it
    ("#5 Jaws", [4]),  # a marked number whose title matches nothing
    ("Heat\nFargo\n12 Monkeys\nSabrina (1954)", [1, 2, 3]),  # at most k
    ('The 3 titles are "Heat" (crime), "Jaws", and "Lion King, The".', [1, 7]),  # quoted titles in prose
    ("Heat, Fargo, and Sabrina (1995)", [1, 2, 5]),  # prose, comma-separated
])
def test_snapping_hand_written_answers(answer, picks):
    assert snap_to_candidates(answer, TITLES, k=3) == picks


def test_the_endpoint_prompt_numbers_the_shortlist_it_is_snapped_to():
    messages = teacher_messages(["Toy Story (1995)"], candidates=TITLES, k=3)
    numbered = number_the_candidates(messages, TITLES, 3)
    user = numbered[-1]["content"]
    assert format_candidates(TITLES) not in user and "\n3. Fargo (1996)\n" in user and '"#<number> <title>"' in user
    assert messages[-1]["content"] != user  # a copy: the grounded prompt itself is unchanged
    with pytest.raises(ValueError, match="no candidates block"):
        number_the_candidates(teacher_messages(["Toy Story (1995)"]), TITLES, 3)


@pytest.fixture(scope="module")
def index(ml100k):
    from slim.lm.encoders import TextEncoder, item_text_matrix
    from slim.lm.grounding import CandidateIndex

    return CandidateIndex.for_dataset(ml100k, item_text_matrix(ml100k, TextEncoder()))


def _row(ml100k, index, text: str, user: int = 3, split: str = "valid", k: int = 3, error: str | None = None):
    from slim.lm.prompts import prompt_builder
    from slim.lm.rationales import grounding_shortlist, numbered_list_prompt, numbered_list_row

    cfg = GroundingConfig(k=k)
    shortlist, titles = grounding_shortlist(ml100k, user, split, cfg, index)
    messages = numbered_list_prompt(ml100k, user, split, prompt_builder("teacher", ml100k.name), cfg, titles)
    gen = Generation(text, 40, 300, 1.0, "hand-written", "stop", error)
    return numbered_list_row(ml100k, user, split, messages, gen, GenerationParams(), "teacher", cfg, shortlist,
                             titles), shortlist, titles


def test_a_snapped_row_names_the_snapped_titles_and_keeps_the_raw_answer(ml100k, index):
    _, shortlist, titles = _row(ml100k, index, "")
    raw = (f"Step 1: likes thrillers.\nStep 2: crime, noir.\nStep 3:\n1. #2 {titles[1].lower()}\n"
           f"2. The Dark Knight (2008)\n3. #{len(titles) + 5}\n\nEnjoy!")
    row, _, _ = _row(ml100k, index, raw)
    assert row["status"] == "ok" and row["step3_path"] == "numbered-list" and row["raw_rationale"] == raw
    assert row["step3_items"] == [shortlist[1]] and row["step3_snapped"] == 1
    assert row["rationale"] == f"Step 1: likes thrillers.\nStep 2: crime, noir.\nStep 3:\n1. {titles[1]}"
    assert row["steps"][2] == f"1. {titles[1]}" and row["grounding"]["k"] == 3


def test_a_step3_that_names_no_candidate_is_rejected_not_kept_free(ml100k, index):
    row, _, _ = _row(ml100k, index, "Step 1: x\nStep 2: y\nStep 3:\n1. The Dark Knight (2008)\n2. Inception")
    assert row["status"] == "rejected: Step 3 names none of the candidates"
    assert row["step3_items"] == [] and row["rationale"] == row["raw_rationale"]
    failed, _, _ = _row(ml100k, index, "", error="timeout")
    assert failed["status"] == "error: timeout" and failed["step3_items"] == []


# ---- the whole path against a real local server --------------------------------------------

@pytest.fixture(scope="module")
def small_gguf():
    pytest.importorskip("llama_cpp")
    from slim.lm.weights import student_gguf_path

    try:
        return str(student_gguf_path())
    except FileNotFoundError as e:
        pytest.skip(str(e))


def check_rows(rows: list[dict], ds, k: int) -> int:
    """Every row's Step-3 items are distinct new catalogue items named by its Step 3; returns the picks."""
    index = ds.user_index
    picks = 0
    for row in rows:
        assert row["step3_path"] == "numbered-list" and row["grounding"]["k"] == k and "raw_rationale" in row
        items = row["step3_items"]
        history = {int(i) for i in ds.history(index[row["user_id"]], row["split"])}
        assert len(items) == len(set(items)) == row["step3_snapped"] <= k
        assert all(1 <= i <= ds.n_items for i in items) and not set(items) & history
        if items:  # Step 3 is rewritten to exactly the snapped catalogue titles, in order
            step3 = split_step3(row["rationale"])[1].strip().splitlines()
            assert step3 == [f"{n}. {display_title(ds.items.at[i, 'title'])}" for n, i in enumerate(items, 1)]
            picks += len(items)
        elif row["status"] == "ok":
            raise AssertionError(f"an ok row with no snapped item: {row['rationale']!r}")
    return picks


def test_teach_server_grounds_step3_by_the_numbered_list_and_resumes(small_gguf, tmp_path, ml100k):
    from slim_train.__main__ import main

    args = ["teach", "--dataset", "ml-100k", "--out", str(tmp_path), "--users", "1", "--splits", "valid,test",
            "--max-tokens", "64", "--model", small_gguf, "--server", "--threads", "1", "--k", "2"]
    main(args)  # --step3 grammar is the default
    path = tmp_path / "rationales" / "teacher.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 2 and {r["role"] for r in rows} == {"teacher"}
    check_rows(rows, ml100k, k=2)
    before = path.read_bytes()
    main(args)  # resumed: every row is there, nothing is asked again
    assert path.read_bytes() == before


def test_reason_openai_engine_takes_the_numbered_list_path(small_gguf, tmp_path, ml100k):
    """The distilled student served like vLLM serves it (base model + LoRA as a named model)."""
    from slim.artifacts.layout import REPO_ROOT, student_adapter
    from slim.lm.llama_reasoner import LlamaCppServer
    from slim_train.__main__ import main

    adapter = REPO_ROOT / student_adapter("ml-100k")
    with LlamaCppServer(small_gguf, n_threads=1, model_alias="student", lora_path=adapter) as server:
        main(["reason", "--dataset", "ml-100k", "--out", str(tmp_path), "--users", "4", "--splits", "valid",
              "--base-url", server.base_url, "--model", "student", "--max-tokens", "160", "--step3", "grammar",
              "--k", "3", "--concurrency", "2", "--repeat-penalty", "1.0"])
    rows = [json.loads(line) for line in (tmp_path / "rationales" / "student.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["role"] for r in rows} == {"student"}
    assert check_rows(rows, ml100k, k=3) > 0  # greedy: the same rows every run, and some name candidates


def test_the_transformers_engine_still_refuses_a_grammar(tmp_path):
    from slim_train.__main__ import main

    with pytest.raises(SystemExit, match="transformers takes neither"):
        main(["reason", "--dataset", "ml-100k", "--out", str(tmp_path), "--users", "1", "--engine", "transformers",
              "--model", str(tmp_path / "no-model"), "--adapter", "none", "--step3", "grammar"])
