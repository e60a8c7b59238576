"""``teach``: teacher rationales (3-step CoT) for a seeded sample of users -> append-only JSONL.

By default the teacher is Qwen2.5-Coder-1.5B-Instruct (GGUF, from PyPI part packages) run by
``--workers`` single-threaded llama.cpp processes (1.23x the throughput of one 2-thread server on 2
cores: see slim_train/pool.py); ``--server`` runs it behind a local OpenAI-compatible llama.cpp server
instead, and ``--base-url``/``--model`` point the same code at vLLM, Ollama or OpenAI (key from
OPENAI_API_KEY). The local paths decode greedily with the same chat template and repeat penalty, so
they write the same text up to near-ties (11 of 12 identical in bench/teacher_engines.py). Step 3
(``--step3 grammar``, the default) names catalogue items: the worker pool binds it with a llama.cpp
grammar; an endpoint takes no grammar, so it is shown the same shortlist numbered and its free answer
is snapped to it (slim.lm.rationales.numbered_list_row; rows say which path they took).

Users are visited in the order of a seeded permutation, so a run stopped early is still a uniform
sample and ``--first-users`` can grow later without redoing work; ``--eval-users N`` instead writes the
sample ``slim_eval --users N`` evaluates (a `teacher` variant needs exactly those users).
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from slim.data.dataset import load_dataset, sample_users
from slim.lm.rationale_file import RationaleStore
from slim.lm.rationales import write_rationales
from slim.lm.llama_reasoner import LlamaCppServer
from slim.lm.reasoners import LLAMA_SERVER_REPEAT_PENALTY, GenerationParams, endpoint_reasoner
from slim.lm.weights import TEACHER_NAME, teacher_gguf_path

from .common import add_common, add_first_users, add_shortlist, refuse_mixed_grounding, run_dir
from .merge_rationales import add_shard_arg, output_for, split_groups
from .pool import pool_rows
from slim.lm.prompts import prompt_builder as prompt_fn


def add_args(p: argparse.ArgumentParser) -> None:
    add_common(p, sample=False)
    add_first_users(p, "the first N users of a seeded permutation (--seed): growing N later extends the sample "
                    "without redoing work (all users when omitted)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation (and of --eval-users' sample)")
    p.add_argument("--eval-users", type=int, default=None,
                   help="the seeded sample of `slim_eval --users N --user-seed S` (with --seed S), instead of "
                   "--first-users' permutation prefix: what a `teacher` variant on a user sample needs")
    p.add_argument("--splits", default="valid", help="valid (train prefix; what distillation uses) and/or test")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint, or a comma-separated list of "
                   "endpoints serving the same model (round-robin, --concurrency each, failover); default: local "
                   "llama.cpp teacher")
    p.add_argument("--model", default=None, help="model name at the endpoint, or a GGUF path for the local teacher")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight per endpoint")
    p.add_argument("--max-tokens", type=int, default=320)
    p.add_argument("--workers", type=int, default=2, help="local teacher: llama.cpp processes (1 thread each)")
    p.add_argument("--server", action="store_true", help="local teacher behind one llama.cpp server (--threads)")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads of the --server teacher")
    p.add_argument("--repeat-penalty", type=float, default=None,
                   help=f"default: {LLAMA_SERVER_REPEAT_PENALTY} (the llama.cpp server's implicit one, which every earlier local teacher row got) for the local teacher, the endpoint's own with --base-url")
    p.add_argument("--name", default="teacher", help="output file rationales/<name>.jsonl")
    p.add_argument("--step3", choices=("grammar", "free"), default="grammar",
                   help="grammar: Step 3 names --k catalogue items chosen under a llama.cpp grammar over the "
                   "--candidates items nearest to the history (local teacher); through --server/--base-url, which "
                   "take no grammar, the shortlist is shown numbered and the answer snapped to it; free: the model "
                   "writes Step 3 itself")
    add_shortlist(p)
    add_shard_arg(p)


def user_order(n_users: int, n: int | None, seed: int) -> np.ndarray:
    """First ``n`` users of a seeded permutation: growing ``n`` extends, never reshuffles."""
    perm = np.random.default_rng(seed).permutation(n_users)
    return perm if n is None else perm[:n]


def main(args: argparse.Namespace) -> None:
    # SIGTERM unwinds like Ctrl-C, so the local llama.cpp server is stopped instead of orphaned
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.eval_users is not None and args.users is not None:
        raise SystemExit("teach: give --first-users (a permutation prefix) or --eval-users (slim_eval's sample), "
                         "not both")
    ds = load_dataset(args.dataset, args.data_dir)
    out = run_dir(args)
    users = (sample_users(ds, args.eval_users, args.seed) if args.eval_users is not None
             else user_order(ds.n_users, args.users, args.seed))
    splits = [s.strip() for s in args.splits.split(",")]
    keys = [(str(ds.user_ids[u]), s) for u in users for s in splits]
    job = {"verb": "teach", "dataset": args.dataset, "users": args.users, "eval_users": args.eval_users,
           "seed": args.seed, "splits": splits, "model": args.model, "step3": args.step3,
           "max_tokens": args.max_tokens}
    path, mine = output_for(args, out / "rationales", keys, job)
    store = RationaleStore(path)
    penalty = args.repeat_penalty if args.repeat_penalty is not None or args.base_url else LLAMA_SERVER_REPEAT_PENALTY
    params = GenerationParams(max_tokens=args.max_tokens, repeat_penalty=penalty)
    owed = keys if mine is None else [k for k in keys if k in mine]
    total = len(owed)
    done = sum(store.done(k) for k in owed)
    bar = tqdm(total=total, initial=done, desc=f"teach {ds.name}", unit="rationale")
    t0, n_ok, n = time.time(), 0, 0
    for row in _rows(args, ds, out, users, splits, store, params, mine):
        n += 1
        n_ok += row["status"] == "ok"
        bar.update(1)
        bar.set_postfix(ok=f"{n_ok}/{n}", s_per=f"{(time.time() - t0) / n:.1f}")
    bar.close()
    print(f"{len(store.ok_rows())} ok rows of {len(store)} in {store.path}")


def _rows(args: argparse.Namespace, ds, out: Path, users: np.ndarray, splits: list[str], store: RationaleStore,
          params: GenerationParams, mine: set[tuple[str, str]] | None = None) -> Iterator[dict]:
    """Missing rows from the chosen engine, each stored as soon as it exists."""
    if not args.base_url and not args.server:
        gguf = str(Path(args.model) if args.model else teacher_gguf_path(install=True))
        # missing rows, and rows an endpoint failed on earlier (retried: the new row wins)
        jobs = [(int(u), s, None) for u in users for s in splits if not store.done((str(ds.user_ids[u]), s))
                and (mine is None or (str(ds.user_ids[u]), s) in mine)]
        grounding = None
        if args.step3 == "grammar":
            from dataclasses import asdict

            from slim.lm.grounding import GroundingConfig

            grounding = asdict(GroundingConfig.for_dataset(ds.name, k=args.k, n_candidates=args.candidates,
                                                           popularity_weight=args.popularity_weight,
                                                           hubness_weight=args.hubness_weight,
                                                           step2=args.step2, step2_k=args.step2_k,
                                                           step2_candidates=args.step2_candidates,
                                                           exclude_editions=args.exclude_editions))
            refuse_mixed_grounding(store, grounding, ds.name, "teach")
        for row in pool_rows(jobs, model=gguf, adapter=None, dataset=args.dataset, data_dir=args.data_dir,
                             prompt="teacher", role="teacher", params=params, workers=args.workers,
                             model_name=None if args.model else TEACHER_NAME, n_ctx=4096, grounding=grounding):
            store.replace(row)
            yield row
        return
    grounding = endpoint_grounding(args, ds)
    if grounding:
        refuse_mixed_grounding(store, grounding["grounding"], ds.name, "teach")
    free = sum(r["status"] == "ok" and "step3_path" not in r for r in store.rows.values())
    if grounding and free:
        print(f"teach: {free} ok rows already in {store.path} have a free Step 3; they are kept, not redone "
              "(--name another file for an all-grounded set)")
    with contextlib.ExitStack() as stack:
        if args.base_url:
            base_url, model = args.base_url, args.model or "gpt-3.5-turbo"
        else:
            gguf = Path(args.model) if args.model else teacher_gguf_path(install=True)
            server = stack.enter_context(LlamaCppServer(gguf, n_threads=args.threads, n_ctx=4096,
                                                        model_alias=TEACHER_NAME if not args.model else None,
                                                        log_path=out / "teacher-server.log"))
            base_url, model = server.base_url, server.model_alias
        reasoner = endpoint_reasoner(base_url, model, concurrency=args.concurrency)
        n_endpoints = len(getattr(reasoner, "endpoints", [reasoner]))
        for group_users, group_splits in split_groups(ds, users, splits, mine):
            yield from write_rationales(reasoner, ds, group_users, group_splits, store, prompt_fn("teacher", ds.name),
                                        params, role="teacher", batch_size=max(1, args.concurrency) * n_endpoints,
                                        **grounding)


def endpoint_grounding(args: argparse.Namespace, ds, verb: str = "teach") -> dict:
    """``write_rationales`` keywords for ``--step3 grammar`` through an endpoint, which takes no grammar:
    the same shortlist, shown numbered, the free answer snapped to it (rows say step3_path numbered-list)."""
    if args.step3 != "grammar":
        return {}
    from slim.lm.encoders import TextEncoder, item_text_matrix
    from slim.lm.grounding import CandidateIndex, GroundingConfig

    if args.step2 == "categories":
        raise SystemExit(f"{verb}: --step2 categories needs a grammar, which an endpoint does not take; use the "
                         "in-process llama.cpp model (teach without --server/--base-url, reason --engine "
                         "llama.cpp) or --step2 free")
    cfg = GroundingConfig.for_dataset(ds.name, k=args.k, n_candidates=args.candidates,
                                     popularity_weight=args.popularity_weight,
                                     hubness_weight=args.hubness_weight, step2="free",
                                     exclude_editions=args.exclude_editions)
    print(f"{verb}: the endpoint takes no grammar; Step 3 is its answer snapped to a numbered shortlist of "
          f"{cfg.n_candidates} catalogue items (step3_path numbered-list)")
    index = CandidateIndex.for_config(ds, item_text_matrix(ds, TextEncoder()), cfg)
    return {"grounding": cfg, "candidates": index}
