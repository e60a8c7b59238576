"""distill under ``accelerate launch`` with 2 CPU processes (gloo): both ranks train, their weights stay
identical (checked every step), the result matches one process with the same global batch, rank 0 alone
writes the log and the checkpoint, and the same command resumes after ``kill -9`` of the whole job.

Tiny settings (6 train users, global batch 2 = 1 per process, 256 tokens, 3 steps) so it runs in CI.
Dropout 0 for the 1-process comparison: with dropout on, two processes draw their masks from two RNG
streams and one process from one, so no run with another process count can repeat them.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_distill import teacher_rows, write_jsonl

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--dataset", "ml-100k", "--batch-size", "1", "--max-len", "256", "--max-history", "5", "--epochs", "2",
          "--lora-dropout", "0", "--val-fraction", "0.25", "--save-every", "1", "--no-gguf", "--warmup-steps", "1",
          "--max-steps", "3", "--no-initial-eval"]
# 2 processes vs 1 after 3 steps differ only by float summation order and padding shapes. Measured on
# this CPU: max |delta| 7.1e-6 (a lora_A entry of 0.04: Adam's first steps turn tiny gradient noise
# into lr-sized moves on near-zero gradients), lora_B relative Frobenius difference 2.1e-5, losses
# equal to 5 decimals. Tolerances: elementwise rtol 1e-3 + atol 2e-5; lora_B relative 1e-3.
RTOL, ATOL, REL_B = 1e-3, 2e-5, 1e-3


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    e.update(OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT),
             TOKENIZERS_PARALLELISM="false")
    return e


def accelerate_cmd(out: Path, teacher: Path, *extra: str) -> list[str]:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    return [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            "-m", "slim_train", "distill", *COMMON, "--out", str(out), "--teacher-file", str(teacher),
            "--precision", "no", "--check-sync", *extra]


def kill_9_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it (torchrun's workers leave its process group)."""
    import psutil

    root = psutil.Process(proc.pid)
    family = [root, *root.children(recursive=True)]
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)
    proc.wait()


def read_log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "distill" / "log.jsonl").read_text().splitlines()]


def tensors(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "distill" / "adapter" / "adapter_model.safetensors"))


def test_two_cpu_processes_train_in_sync_match_one_process_and_resume_after_kill_9(ml100k, tmp_path):
    teacher = tmp_path / "teacher.jsonl"
    write_jsonl(teacher, teacher_rows(ml100k, 8))

    # one process, global batch 2
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "slim_train", "distill", *COMMON, "--batch-size", "2", "--out", str(one),
                    "--teacher-file", str(teacher), "--precision", "no"], check=True, env=env(), cwd=ROOT,
                   timeout=900)

    # two processes x 1, killed with SIGKILL (the launcher and both ranks) once a checkpoint exists
    two = tmp_path / "two"
    proc = subprocess.Popen(accelerate_cmd(two, teacher), env=env(), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = two / "distill" / "checkpoint" / "state.json"
    deadline = time.time() + 900
    try:
        while not state.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert state.exists(), proc.stdout.read().decode()[-3000:] if proc.poll() is not None else "no checkpoint"
    finally:
        kill_9_tree(proc)
    killed_at = json.loads(state.read_text())["step"]
    assert killed_at >= 1

    # the same command resumes
    done = subprocess.run(accelerate_cmd(two, teacher), env=env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = read_log(two)
    assert log[0]["event"] == "start" and log[0]["world"] == 2
    assert [r["step"] for r in log if r.get("event") == "resume"] == [killed_at]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]  # rank 0 alone logs; no step twice after the resume
    for r in steps:
        assert len(r["rank_tokens"]) == 2 and min(r["rank_tokens"]) > 0  # both ranks trained on real tokens
        assert len(r["rank_weights"]) == 2 and r["rank_weights"][0] == r["rank_weights"][1]  # in sync
    # one checkpoint, written by rank 0, with both ranks' RNG states
    names = sorted(p.name for p in (two / "distill").iterdir())
    assert names == ["adapter", "checkpoint", "log.jsonl"], names
    ck = json.loads((two / "distill" / "checkpoint" / "state.json").read_text())
    assert ck["step"] == 3 and ck["world"] == 2
    rng = json.loads((two / "distill" / "checkpoint" / "rng.json").read_text())
    assert len(rng) == 2 and rng[0]["torch"] != rng[1]["torch"]  # each rank its own dropout stream

    # the same global batch in one process: same losses and weights up to float summation order
    one_steps = [r for r in read_log(one) if "loss" in r]
    assert [r["loss"] for r in steps] == pytest.approx([r["loss"] for r in one_steps], rel=1e-4)
    ta, tb = tensors(one), tensors(two)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], rtol=RTOL, atol=ATOL)
    # lora_B starts at zero, so it holds exactly what the 3 updates wrote: the two runs' difference,
    # relative to that (Frobenius norms over all lora_B), is float noise (measured 2.1e-5)
    b_keys = [k for k in ta if "lora_B" in k]
    moved = sum(float((ta[k] ** 2).sum()) for k in b_keys) ** 0.5
    diff = sum(float(((tb[k] - ta[k]) ** 2).sum()) for k in b_keys) ** 0.5
    print(f"2 processes vs 1: |delta lora_B| / |lora_B| = {diff / moved:.3g} (Frobenius), "
          f"max |delta| over all tensors {max(float((tb[k] - ta[k]).abs().max()) for k in ta):.3g}")
    assert moved > 1e-3 and diff <= REL_B * moved, (diff, moved)

    # a different process count cannot resume this checkpoint
    again = subprocess.run([sys.executable, "-m", "slim_train", "distill", *COMMON, "--max-steps", "4",
                            "--out", str(two), "--teacher-file", str(teacher), "--precision", "no"],
                           env=env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode != 0 and "trained by 2 process(es)" in again.stderr


# ---------------------------------------------------------------------------------------
# sharded generation over two real llama.cpp servers
# ---------------------------------------------------------------------------------------
VOLATILE = ("seconds", "created")  # wall-clock fields: everything else must be equal row for row


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from slim.lm.llama_reasoner import LlamaCppServer
    from slim.lm.weights import student_gguf_path

    gguf = student_gguf_path()
    logs = tmp_path_factory.mktemp("servers")
    with LlamaCppServer(gguf, n_threads=1, n_ctx=2048, model_alias="smol", log_path=logs / "a.log") as a, \
            LlamaCppServer(gguf, n_threads=1, n_ctx=2048, model_alias="smol", log_path=logs / "b.log") as b:
        yield a.base_url, b.base_url


TEACH = ["teach", "--dataset", "ml-100k", "--users", "3", "--splits", "valid,test", "--max-tokens", "40",
         "--model", "smol", "--step3", "free", "--repeat-penalty", "1.1"]


def test_sharded_teach_over_two_endpoints_merges_to_the_single_run_and_survives_kill_9(two_servers, tmp_path):
    from slim_train.__main__ import main

    url_a, url_b = two_servers
    out = tmp_path / "run"
    rdir = out / "rationales"
    main([*TEACH, "--out", str(out), "--base-url", url_a, "--name", "single"])
    single = jsonl(rdir / "single.jsonl")
    assert len(single) == 6

    both = f"{url_a},{url_b}"
    main([*TEACH, "--out", str(out), "--base-url", both, "--name", "sharded", "--shard", "0/2"])
    # shard 1 in its own process, killed with SIGKILL once it has written a row
    shard1 = rdir / "sharded.shard-1-of-2.jsonl"
    cmd = [sys.executable, "-m", "slim_train", *TEACH, "--out", str(out), "--base-url", both, "--name", "sharded",
           "--shard", "1/2"]
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (shard1.exists() and shard1.read_bytes()):
        time.sleep(0.05)
    kill_9_tree(proc)
    from slim_train.merge_rationales import manifest_path

    owed1 = json.loads(manifest_path(shard1).read_text())["pairs"]
    written = len(shard1.read_text().splitlines()) if shard1.exists() else 0
    assert 1 <= written < len(owed1) == 4  # killed mid-shard (the hash gives shard 1 four of the six pairs)
    with pytest.raises(SystemExit, match=rf"shard 1/2: {4 - written} of 4 pairs missing"):
        main(["merge-rationales", "--out", str(out), "--name", "sharded", "--shards", "2"])
    assert not (rdir / "sharded.jsonl").exists()
    before = jsonl(shard1)
    # the same command completes the shard, redoing nothing it had
    main([*TEACH, "--out", str(out), "--base-url", both, "--name", "sharded", "--shard", "1/2"])
    rows1 = jsonl(shard1)
    assert len(rows1) == len(owed1) and len({(r["user_id"], r["split"]) for r in rows1}) == len(rows1)
    assert rows1[:written] == before  # kept byte for byte (timestamps too): not regenerated
    main(["merge-rationales", "--out", str(out), "--name", "sharded", "--shards", "2"])
    merged = jsonl(rdir / "sharded.jsonl")
    # shards are a partition of the (user, split) pairs and the merge is the single run, row for row
    shard0 = jsonl(rdir / "sharded.shard-0-of-2.jsonl")
    assert shard0 and rows1 and len(shard0) + len(rows1) == 6
    assert stable(merged) == stable(single)


def test_merge_lists_what_is_missing_and_refuses_mixed_jobs(tmp_path):
    from slim_train.merge_rationales import merge, shard_of, shard_path, write_manifest

    keys = [(str(u), s) for u in range(10) for s in ("valid", "test")]
    assert sorted(shard_of(u, s, 3) for u, s in keys) != [0] * 20  # spread over the shards
    job = {"verb": "teach", "users": 10}
    owed = {i: write_manifest(shard_path(tmp_path, "t", i, 2), keys, i, 2, job) for i in range(2)}
    assert sorted(owed[0] + owed[1]) == sorted(keys) and not set(owed[0]) & set(owed[1])
    from slim.lm.rationale_file import RationaleStore

    for i in range(2):
        store = RationaleStore(shard_path(tmp_path, "t", i, 2))
        for u, s in owed[i][: len(owed[i]) - (1 if i else 0)]:  # shard 1 lacks its last pair
            store.append({"user_id": u, "split": s, "status": "ok", "rationale": f"{u}-{s}"})
    last = owed[1][-1]
    with pytest.raises(SystemExit, match=rf"shard 1/2: 1 of {len(owed[1])} pairs missing or failed: {last[0]}/{last[1]}"):
        merge(tmp_path, "t", 2)
    RationaleStore(shard_path(tmp_path, "t", 1, 2)).append({"user_id": last[0], "split": last[1],
                                                            "status": "error: APIConnectionError", "rationale": ""})
    with pytest.raises(SystemExit, match="APIConnectionError"):  # an endpoint error is not a finished row
        merge(tmp_path, "t", 2)
    RationaleStore(shard_path(tmp_path, "t", 1, 2)).replace({"user_id": last[0], "split": last[1], "status": "ok",
                                                             "rationale": "late"})
    path, n = merge(tmp_path, "t", 2)
    assert n == 20 and [(r["user_id"], r["split"]) for r in jsonl(path)] == keys  # the unsharded order
    with pytest.raises(SystemExit, match="shard 2/3: never started"):
        merge(tmp_path, "t", 3)
    with pytest.raises(SystemExit, match="another job"):
        write_manifest(shard_path(tmp_path, "t", 0, 2), keys[:4], 0, 2, {"verb": "teach", "users": 2})


def test_several_endpoints_fail_over_and_name_the_endpoint_that_fails(two_servers):
    from slim.lm.llama_reasoner import free_port
    from slim.lm.reasoners import GenerationParams, MultiEndpointReasoner

    dead = f"http://127.0.0.1:{free_port()}/v1"
    url_a, _ = two_servers
    msgs = [{"role": "user", "content": "Say hi."}]
    p = GenerationParams(max_tokens=4)
    r = MultiEndpointReasoner([dead, url_a], "smol", concurrency=2, max_retries=0, timeout=20)
    gens = r.generate([msgs] * 4, p)
    assert all(g.error is None and g.text for g in gens)  # the dead endpoint's share went to the live one
    only_dead = MultiEndpointReasoner([dead], "smol", max_retries=0, timeout=5).generate([msgs], p)[0]
    assert only_dead.error and only_dead.error.startswith(dead)
    both_dead = MultiEndpointReasoner([dead, dead.replace("/v1", "/w1")], "smol", max_retries=0,
                                      timeout=5).generate([msgs], p)[0]
    assert both_dead.error.startswith("every endpoint failed") and dead in both_dead.error


def test_sharded_reason_against_endpoints_merges_to_the_single_run(two_servers, tmp_path):
    """``reason --base-url`` (the vLLM-style request path: the served model is named by --model)."""
    from slim_train.__main__ import main

    url_a, url_b = two_servers
    out = tmp_path / "run"
    base = ["reason", "--dataset", "ml-100k", "--users", "3", "--splits", "valid,test", "--max-tokens", "40",
            "--model", "smol", "--out", str(out), "--concurrency", "1"]
    main([*base, "--base-url", url_a, "--name", "single"])
    for i in range(2):
        main([*base, "--base-url", f"{url_a},{url_b}", "--name", "sharded", "--shard", f"{i}/2"])
    main(["merge-rationales", "--out", str(out), "--name", "sharded", "--shards", "2"])
    single, merged = jsonl(out / "rationales" / "single.jsonl"), jsonl(out / "rationales" / "sharded.jsonl")
    assert len(single) == 6 and {r["role"] for r in single} == {"student"}
    assert stable(merged) == stable(single)


def test_reason_against_a_server_that_serves_the_lora_as_a_named_model(tmp_path):
    """The vLLM deployment (base model + the student's LoRA as a named model), played by llama.cpp's server:
    the endpoint path writes the in-process llama.cpp engine's text (greedy, penalty 1.0)."""
    pytest.importorskip("llama_cpp")
    from slim.artifacts.layout import REPO_ROOT, adapter_prompt
    from slim.lm.llama_reasoner import LlamaCppServer
    from slim.lm.weights import student_gguf_path
    from slim_train.__main__ import main

    # a student distilled on the plain prompt (v2): a grounded one decodes Step 3 under a grammar
    # in process and from a numbered list behind an endpoint, so their texts differ by design
    adapter = REPO_ROOT / "assets" / "student" / "adapter.gguf"
    assert adapter_prompt(adapter) == "plain"
    base = ["reason", "--dataset", "ml-100k", "--users", "2", "--splits", "valid", "--max-tokens", "60",
            "--out", str(tmp_path)]
    main([*base, "--engine", "llama.cpp", "--workers", "1", "--adapter", str(adapter), "--name", "local"])
    with LlamaCppServer(student_gguf_path(), n_threads=1, model_alias="student", lora_path=adapter,
                        log_path=tmp_path / "server.log") as server:
        main([*base, "--base-url", server.base_url, "--model", "student", "--repeat-penalty", "1.0",
              "--name", "served"])
    local, served = jsonl(tmp_path / "rationales" / "local.jsonl"), jsonl(tmp_path / "rationales" / "served.jsonl")
    assert len(local) == 2 and {r["model"] for r in served} == {"student"}
    key = lambda r: (r["user_id"], r["split"])  # noqa: E731
    assert {key(r): r["rationale"] for r in served} == {key(r): r["rationale"] for r in local}
    assert {key(r): r["prompt_hash"] for r in served} == {key(r): r["prompt_hash"] for r in local}


def test_sharded_reason_with_the_local_llama_cpp_pool_merges_to_the_single_run(tmp_path):
    pytest.importorskip("llama_cpp")
    from slim_train.__main__ import main

    base = ["reason", "--dataset", "ml-100k", "--users", "2", "--splits", "valid,test", "--max-tokens", "16",
            "--engine", "llama.cpp", "--workers", "1", "--out", str(tmp_path)]
    main([*base, "--name", "single"])
    for i in range(2):
        main([*base, "--name", "sharded", "--shard", f"{i}/2"])
    main(["merge-rationales", "--out", str(tmp_path), "--name", "sharded", "--shards", "2"])
    single, merged = jsonl(tmp_path / "rationales" / "single.jsonl"), jsonl(tmp_path / "rationales" / "sharded.jsonl")
    assert len(single) == 4 and stable(merged) == stable(single)
