"""Teacher throughput, three local engines on the same prompts in one run, and whether they agree.

    OMP_WAIT_POLICY=PASSIVE python bench/teacher_engines.py --users 4

- ``server``: one llama.cpp OpenAI-compatible server with ``--threads`` threads (what ``teach
  --server`` runs; what wrote the teacher rows before the worker pool existed);
- ``pool``: ``--workers`` single-threaded llama.cpp processes (``teach``'s default);
- ``one-process``: one in-process Llama with ``--threads`` threads (the pool's per-row cost reference).

Prints aggregate seconds per rationale for each and the pool's speed-up over the server, and
checks the three write identical text (greedy, same chat template, same repeat penalty).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from slim.data.dataset import load_dataset
from slim.lm.prompts import teacher_messages
from slim.lm.rationales import prompt_for
from slim.lm.llama_reasoner import LlamaCppReasoner, LlamaCppServer
from slim.lm.reasoners import LLAMA_SERVER_REPEAT_PENALTY, GenerationParams, OpenAIChatReasoner
from slim.lm.weights import TEACHER_NAME, teacher_gguf_path
from slim_train.pool import pool_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()
    ds = load_dataset(args.dataset)
    gguf = str(teacher_gguf_path())
    params = GenerationParams(max_tokens=args.max_tokens, repeat_penalty=LLAMA_SERVER_REPEAT_PENALTY)
    users = list(range(args.users))
    prompts = [prompt_for(ds, u, "valid", teacher_messages) for u in users]
    texts, secs = {}, {}

    with LlamaCppServer(gguf, n_threads=args.threads, n_ctx=4096, model_alias=TEACHER_NAME,
                        log_path=Path("/tmp/bench-teacher-server.log")) as srv:
        reasoner = OpenAIChatReasoner(srv.base_url, srv.model_alias)
        reasoner.generate(prompts[:1], GenerationParams(max_tokens=4))  # warm-up: weights paged in
        t0 = time.perf_counter()
        texts["server"] = [g.text for g in reasoner.generate(prompts, params)]
        secs["server"] = (time.perf_counter() - t0) / len(prompts)

    t0 = time.perf_counter()
    rows = {r["user_idx"]: r for r in pool_rows([(u, "valid", None) for u in users], model=gguf, adapter=None,
                                                dataset=args.dataset, data_dir=None, prompt="teacher",
                                                role="teacher", params=params, workers=args.workers,
                                                model_name=TEACHER_NAME, n_ctx=4096)}
    secs["pool"] = (time.perf_counter() - t0) / len(prompts)  # includes loading the model in each worker
    texts["pool"] = [rows[u]["rationale"] for u in users]

    one = LlamaCppReasoner(gguf, n_threads=args.threads, n_ctx=4096, model_name=TEACHER_NAME)
    one.generate(prompts[:1], GenerationParams(max_tokens=4))
    t0 = time.perf_counter()
    texts["one-process"] = [g.text for g in one.generate(prompts, params)]
    secs["one-process"] = (time.perf_counter() - t0) / len(prompts)

    print(f"{args.users} users of {ds.name}, valid prompts, max_tokens {args.max_tokens}, greedy, "
          f"repeat_penalty {LLAMA_SERVER_REPEAT_PENALTY}")
    for name in secs:
        same = sum(a == b for a, b in zip(texts[name], texts["server"]))
        print(f"  {name:12s} {secs[name]:6.2f} s/rationale (aggregate)   same text as server: {same}/{len(users)}")
    print(f"pool ({args.workers} x 1 thread) over server ({args.threads} threads): "
          f"{secs['server'] / secs['pool']:.2f}x throughput")


if __name__ == "__main__":
    main()
