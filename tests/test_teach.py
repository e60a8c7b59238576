"""``teach``: the worker pool (default) and the llama.cpp server (``--server``) write the same rows.

Real model: SmolLM2-135M GGUF stands in for the 1.5B teacher (``--model``), on real ML-100K users;
the server is a real ``llama_cpp.server`` process on 127.0.0.1 driven through the openai client.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")

from slim.lm.reasoners import GenerationParams
from slim.lm.weights import student_gguf_path


@pytest.fixture(scope="module")
def small_gguf():
    try:
        return str(student_gguf_path())
    except FileNotFoundError as e:
        pytest.skip(str(e))


def teach(out, gguf, *extra, users: str | None = "2") -> list[dict]:
    from slim_train.__main__ import main

    main(["teach", "--dataset", "ml-100k", "--out", str(out), *(["--users", users] if users else []),
          "--splits", "valid,test", "--max-tokens", "48", "--model", gguf, *extra])
    return [json.loads(line) for line in (out / "rationales" / "teacher.jsonl").read_text().splitlines()]


def test_repeat_penalty_is_recorded_only_when_set():
    # rows written before the field existed have no such key: an unset penalty must not add one
    assert "repeat_penalty" not in GenerationParams().as_dict()
    assert GenerationParams(repeat_penalty=1.1).as_dict()["repeat_penalty"] == 1.1


def test_worker_pool_and_server_write_the_same_teacher_rows(small_gguf, tmp_path):
    # 1.3, not the server's implicit 1.1: equal texts prove the penalty reaches the server
    pool = teach(tmp_path / "pool", small_gguf, "--workers", "2", "--repeat-penalty", "1.3", "--step3", "free")
    server = teach(tmp_path / "server", small_gguf, "--server", "--threads", "1", "--repeat-penalty", "1.3",
                   "--step3", "free")
    key = lambda r: (r["user_id"], r["split"])  # noqa: E731
    assert sorted(map(key, pool)) == sorted(map(key, server)) and len(pool) == 4
    by_key = {key(r): r for r in server}
    for row in pool:
        assert row["role"] == "teacher" and row["params"]["repeat_penalty"] == 1.3
        assert row["rationale"] == by_key[key(row)]["rationale"]
        assert row["prompt_hash"] == by_key[key(row)]["prompt_hash"]
    assert teach(tmp_path / "pool", small_gguf, "--workers", "2", "--repeat-penalty", "1.3",
                 "--step3", "free") == pool  # resumed: nothing redone


def test_local_teacher_grounds_step3_in_the_catalogue_by_default(small_gguf, tmp_path, ml100k):
    rows = teach(tmp_path, small_gguf, "--workers", "1", "--users", "2", "--splits", "valid,test", "--k", "2")
    index = ml100k.user_index
    for row in rows:
        u = index[row["user_id"]]
        assert row["step3_path"] == "grammar" and len(row["step3_items"]) == 2
        assert not set(row["step3_items"]) & set(int(i) for i in ml100k.history(u, row["split"]))


def test_local_teacher_defaults_to_the_servers_implicit_penalty(small_gguf, tmp_path):
    rows = teach(tmp_path, small_gguf, "--workers", "1", "--users", "1", "--splits", "valid")
    assert [r["params"]["repeat_penalty"] for r in rows] == [1.1]


def test_eval_users_is_the_sample_slim_eval_evaluates(small_gguf, tmp_path, ml100k):
    from slim.data.dataset import sample_users

    rows = teach(tmp_path, small_gguf, "--workers", "1", "--eval-users", "2", "--splits", "valid",
                 "--max-tokens", "8", users=None)
    assert {r["user_id"] for r in rows} == {str(ml100k.user_ids[u]) for u in sample_users(ml100k, 2, seed=0)}


def test_rows_an_endpoint_failed_on_are_retried(small_gguf, tmp_path, ml100k):
    from slim.lm.rationale_file import RationaleStore
    from slim_train.teach import user_order

    user = int(user_order(ml100k.n_users, 1, 0)[0])  # what `teach --first-users 1` visits
    store = RationaleStore(tmp_path / "rationales" / "teacher.jsonl")
    store.append({"user_id": str(ml100k.user_ids[user]), "user_idx": user, "split": "valid", "status": "error: timeout",
                  "rationale": "", "steps": None})
    rows = teach(tmp_path, small_gguf, "--workers", "1", "--splits", "valid", "--max-tokens", "8", users="1")
    assert len(rows) == 2 and rows[-1]["status"] != "error: timeout"  # appended; on load the last row wins
    assert RationaleStore(store.path).rows[(str(ml100k.user_ids[user]), "valid")]["rationale"]


def test_a_worker_that_cannot_load_its_model_fails_the_run_instead_of_hanging(tmp_path):
    from slim_train.pool import pool_rows

    params = GenerationParams(max_tokens=4)
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        next(pool_rows([(0, "valid", None)], model="gpt-4o-mini", adapter=None, dataset="ml-100k", data_dir=None,
                       prompt="teacher", role="teacher", params=params, workers=1))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    with pytest.raises(RuntimeError, match="llama.cpp worker could not start"):
        list(pool_rows([(0, "valid", None)], model=str(broken), adapter=None, dataset="ml-100k", data_dir=None,
                       prompt="teacher", role="teacher", params=params, workers=1))


def test_distillation_reads_only_train_prefix_rows():
    """A teacher file with both splits (the `teacher` variant's) must give one valid row per user."""
    from slim_train.distill.data import select_rows

    rows = [{"user_id": u, "split": s, "status": "ok"} for u in ("1", "2") for s in ("valid", "test")]
    assert [(r["user_id"], r["split"]) for r in select_rows(rows, None, None)] == [("1", "valid"), ("2", "valid")]
    assert len(select_rows(rows, 1, None)) == 1


def test_user_flags_say_what_they_select_and_old_spellings_still_parse(capsys):
    """--users/--seed mean a seeded sample and its seed; teach and distill select otherwise, so their flags
    are --first-users and --lora-seed, and the old spellings parse the same with a message on stderr."""
    import argparse

    import slim_train.distill as distill
    import slim_train.teach as teach_verb

    def parse(mod, argv):
        p = argparse.ArgumentParser(prog=mod.__name__)
        mod.add_args(p)
        return vars(p.parse_args(argv))

    assert parse(teach_verb, ["--first-users", "5", "--seed", "3"]) == parse(teach_verb, ["--users", "5", "--seed", "3"])
    assert "--users is deprecated here; use --first-users" in capsys.readouterr().err
    new = parse(distill, ["--first-users", "5", "--lora-seed", "3"])
    assert new == parse(distill, ["--users", "5", "--seed", "3"]) and (new["users"], new["seed"]) == (5, 3)
    err = capsys.readouterr().err
    assert "--users is deprecated here; use --first-users" in err and "--seed is deprecated here; use --lora-seed" in err
    assert parse(distill, [])["seed"] == 0 and not capsys.readouterr().err
