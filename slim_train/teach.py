"""``teach``: teacher rationales (3-step CoT) for a seeded sample of users -> append-only JSONL.

By default the teacher is Qwen2.5-Coder-1.5B-Instruct (GGUF, from PyPI part packages) behind a local
llama.cpp OpenAI-compatible server; ``--base-url``/``--model`` point the same code at vLLM, Ollama or
OpenAI (key from OPENAI_API_KEY). Users are visited in the order of a seeded permutation, so a run
stopped early is still a uniform sample and ``--users`` can grow later without redoing work.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from slim.data import load_dataset
from slim.prompts import teacher_messages
from slim.rationales import RationaleStore, write_rationales
from slim.reasoners import GenerationParams, LlamaCppServer, OpenAIChatReasoner
from slim.weights import TEACHER_NAME, teacher_gguf_path

from .common import add_common, run_dir


def add_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--splits", default="valid", help="valid (train prefix; what distillation uses) and/or test")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint; default: local llama.cpp teacher")
    p.add_argument("--model", default=None, help="model name at the endpoint, or a GGUF path for the local server")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=320)
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads for the local teacher")
    p.add_argument("--name", default="teacher", help="output file rationales/<name>.jsonl")


def user_order(n_users: int, n: int | None, seed: int) -> np.ndarray:
    """First ``n`` users of a seeded permutation: growing ``n`` extends, never reshuffles."""
    perm = np.random.default_rng(seed).permutation(n_users)
    return perm if n is None else perm[:n]


def main(args: argparse.Namespace) -> None:
    # SIGTERM unwinds like Ctrl-C, so the local llama.cpp server is stopped instead of orphaned
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ds = load_dataset(args.dataset, args.data_dir)
    out = run_dir(args)
    store = RationaleStore(out / "rationales" / f"{args.name}.jsonl")
    users = user_order(ds.n_users, args.users, args.seed)
    splits = [s.strip() for s in args.splits.split(",")]
    params = GenerationParams(max_tokens=args.max_tokens)
    with contextlib.ExitStack() as stack:
        if args.base_url:
            base_url, model = args.base_url, args.model or "gpt-3.5-turbo"
        else:
            gguf = Path(args.model) if args.model else teacher_gguf_path(install=True)
            server = stack.enter_context(LlamaCppServer(gguf, n_threads=args.threads, n_ctx=4096,
                                                        model_alias=TEACHER_NAME if not args.model else None,
                                                        log_path=out / "teacher-server.log"))
            base_url, model = server.base_url, server.model_alias
        reasoner = OpenAIChatReasoner(base_url, model, concurrency=args.concurrency)
        total = len(users) * len(splits)
        bar = tqdm(total=total, initial=sum((str(ds.user_ids[u]), s) in store for u in users for s in splits),
                   desc=f"teach {ds.name}", unit="rationale")
        t0, n_ok, n = time.time(), 0, 0
        for row in write_rationales(reasoner, ds, users, splits, store, teacher_messages, params, role="teacher",
                                    batch_size=max(1, args.concurrency)):
            n += 1
            n_ok += row["status"] == "ok"
            bar.update(1)
            bar.set_postfix(ok=f"{n_ok}/{n}", s_per=f"{(time.time() - t0) / n:.1f}")
        bar.close()
    print(f"{len(store.ok_rows())} ok rows of {len(store)} in {store.path}")
