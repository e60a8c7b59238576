"""``reason --finish-step3``: an answer that ends after Step 2 is continued from "\\nStep 3:".

Real models: SmolLM2-135M in llama.cpp with the shipped Amazon student (assets/student-games), on
real Industrial & Scientific users, where the v3 student stops before Step 3 on a third of its rows.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")

from slim.artifacts.layout import OTHER_DOMAIN_ADAPTER, REPO_ROOT
from slim.lm.rationale_file import RationaleStore
from slim.lm.rationales import STEP3_PREFILL, finish_step3, stopped_before_step3
from slim.lm.reasoners import Generation, GenerationParams

STOPPED = ("Step 1: The user likes to use safety equipment in their work.\n"
           "Step 2: The categories the user may want next include:\n- Safety equipment\n- Work gloves")


def test_only_answers_that_ended_after_step2_are_continued():
    assert stopped_before_step3(STOPPED, "stop")
    assert not stopped_before_step3(STOPPED, "length")  # out of budget: nothing left to continue with
    assert not stopped_before_step3(STOPPED + "\nStep 3: Nitrile gloves", "stop")
    assert not stopped_before_step3("Step 1: likes tools.", "stop")  # missing Step 2: not this failure
    gen = Generation(STOPPED, 150, 100, 1.0, "m")
    same, forced = finish_step3(None, [], gen, GenerationParams(max_tokens=155))  # < 8 tokens left
    assert same is gen and not forced


def test_reason_finishes_new_rows_and_repairs_stored_ones(scientific, data_dir, tmp_path):
    from slim_train.__main__ import main

    adapter = REPO_ROOT / OTHER_DOMAIN_ADAPTER  # v3: the student that stops after Step 2
    users = [str(scientific.user_ids[u]) for u in (3, 4)]
    store = RationaleStore(tmp_path / "rationales" / "student.jsonl")
    old = {"user_id": users[0], "user_idx": 3, "split": "valid", "rationale": STOPPED, "status": "rejected: missing Step 3",
           "completion_tokens": 40, "prompt_tokens": 200, "seconds": 1.5, "model": "v3", "finish_reason": "stop"}
    store.append(old)
    argv = ["reason", "--dataset", scientific.name, "--data-dir", str(data_dir), "--out", str(tmp_path),
            "--splits", "valid", "--user-ids", ",".join(users), "--workers", "1", "--max-tokens", "160",
            "--adapter", str(adapter), "--finish-step3"]
    main(argv)
    lines = (tmp_path / "rationales" / "student.jsonl").read_text().splitlines()
    assert len(lines) == 3  # the stored row, its repair (appended: the last row of a key wins), the new user
    repaired = RationaleStore(store.path).rows[(users[0], "valid")]
    assert repaired["forced_step3"] and repaired["rationale"].startswith(STOPPED.rstrip() + STEP3_PREFILL)
    assert repaired["completion_tokens"] > 40 and repaired["status"] != "rejected: missing Step 3"
    assert repaired["steps"] and repaired["steps"][:2] == [
        "The user likes to use safety equipment in their work.",
        "The categories the user may want next include:\n- Safety equipment\n- Work gloves"]
    new = RationaleStore(store.path).rows[(users[1], "valid")]
    assert not stopped_before_step3(new["rationale"], new["finish_reason"])
    main(argv)  # rerun: forced rows are final, nothing is written twice
    assert (tmp_path / "rationales" / "student.jsonl").read_text().splitlines() == lines
    assert json.loads(lines[1])["user_id"] == users[0]
