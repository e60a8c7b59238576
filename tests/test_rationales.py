"""The rationale store: append-only, resumable, no duplicates even after kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from slim.lm.rationale_file import RationaleStore

ROW = {"split": "valid", "status": "ok", "rationale": "Step 1: a\nStep 2: b\nStep 3: c"}


def test_append_and_reload(tmp_path):
    store = RationaleStore(tmp_path / "r.jsonl")
    store.append({**ROW, "user_id": "1"})
    store.append({**ROW, "user_id": "1"})  # duplicate key ignored
    store.append({**ROW, "user_id": "2", "split": "test"})
    again = RationaleStore(tmp_path / "r.jsonl")
    assert len(again) == 2 and ("2", "test") in again
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def test_torn_last_line_is_dropped_and_overwritten(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({**ROW, "user_id": "1"}) + "\n" + '{"user_id": "2", "spl')
    store = RationaleStore(path)
    assert len(store) == 1
    store.append({**ROW, "user_id": "3"})
    lines = path.read_text().splitlines()
    assert [json.loads(l)["user_id"] for l in lines] == ["1", "3"]


SCRIPT = textwrap.dedent("""
    import sys
    from slim.data.dataset import load_dataset
    from slim.lm.prompts import student_messages
    from slim.lm.rationale_file import RationaleStore
    from slim.lm.rationales import write_rationales
    from slim.lm.llama_reasoner import LlamaCppReasoner
    from slim.lm.reasoners import GenerationParams
    from slim.lm.weights import student_gguf_path
    ds = load_dataset("ml-100k")
    store = RationaleStore(sys.argv[1])
    r = LlamaCppReasoner(student_gguf_path(), n_threads=1, n_ctx=1024)
    for row in write_rationales(r, ds, range(int(sys.argv[2])), ["valid"], store, student_messages,
                                GenerationParams(max_tokens=16), role="student"):
        print(row["user_id"], flush=True)
""")


def test_kill_9_then_resume_never_duplicates(tmp_path, ml100k):
    pytest.importorskip("llama_cpp")
    from slim.lm.weights import student_gguf_path
    try:
        student_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    path = tmp_path / "student.jsonl"
    script = tmp_path / "gen.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, str(script), str(path), "12"], stdout=subprocess.PIPE, env=env, text=True)
    seen = 0
    deadline = time.time() + 240
    while seen < 3 and time.time() < deadline:  # wait until a few rows are on disk
        if proc.stdout.readline():
            seen += 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(RationaleStore(path))
    assert 3 <= done_before < 12
    subprocess.run([sys.executable, str(script), str(path), "12"], check=True, env=env, capture_output=True)
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    keys = [(r["user_id"], r["split"]) for r in rows]
    assert len(keys) == len(set(keys)) == 12
    assert {r["user_id"] for r in rows} == {str(ml100k.user_ids[u]) for u in range(12)}


def test_dead_endpoint_stops_after_a_few_errors(tmp_path, ml100k):
    from slim.lm.prompts import student_messages
    from slim.lm.rationales import EndpointDown, write_rationales
    from slim.lm.reasoners import GenerationParams, OpenAIChatReasoner

    store = RationaleStore(tmp_path / "t.jsonl")
    dead = OpenAIChatReasoner("http://127.0.0.1:9/v1", "nobody", max_retries=0, timeout=2)
    with pytest.raises(EndpointDown, match="3 failed calls in a row"):
        list(write_rationales(dead, ml100k, range(50), ["valid"], store, student_messages,
                              GenerationParams(max_tokens=8), role="teacher"))
    assert len(store) == 3  # not 50 error rows
