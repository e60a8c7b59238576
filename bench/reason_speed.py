"""Seconds per rationale, teacher vs student, on the same users in one run (ratio goal >= 10x).

    OMP_WAIT_POLICY=PASSIVE python bench/reason_speed.py --users 8 --step3 grammar \
        --adapter assets/student/adapter.gguf [--merged runs/merged/student-q8_0.gguf]
        # --merged: from `python -m slim_train merge --adapter <folder> --quant q8_0`

Both run in-process on llama.cpp with the same thread count, greedy, on the validation histories
(train prefixes) of the first N users of the dataset. ``--step3 grammar`` times what
``teach``/``reason --step3 grammar --domain dataset`` run: the domain-aware prompt with the
candidate shortlist, Step 1 free, Step 2 as the dataset's GroundingConfig says (ML-100K: two
grammar-bound genres), then K grammar-bound catalogue picks (slim.lm.grounding);
``--step3 free`` the plain prompts with a free Step 3. ``--merged`` adds the student with its LoRA
merged into the weights and re-quantised (one GGUF, no adapter matmuls), on the same prompts.
Prompt and answer lengths are printed, since the prompt is a large share of the time.
``--grammar-sampler`` also times the merged student choosing its Step-2/3 items through llama.cpp's
grammar sampler instead of ``LlamaCppReasoner.choose`` (the same greedy choice by masked logits, which
the rows and the Space use), on the same prompts in the same run.
The aggregate throughput of ``python -m slim_train reason --workers 2`` (one single-threaded
llama.cpp per core) is measured by running that command.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from slim.data.dataset import load_dataset
from slim.lm.prompts import domain_for, student_messages, teacher_messages
from slim.lm.llama_reasoner import LlamaCppReasoner
from slim.lm.reasoners import GenerationParams
from slim.lm.weights import student_gguf_path, teacher_gguf_path


def time_reasoner(reasoner, prompts, params, grounded=None) -> dict:
    """Mean seconds, tokens per second and mean prompt / completion tokens over ``prompts``.

    ``grounded``: (candidate titles per prompt, GroundingConfig, (Step-2 categories, lead) per prompt)
    to time the grammar-bound Steps 2-3 (slim.lm.grounding.grounded_generation)."""
    from slim.lm.grounding import grounded_generation

    reasoner.generate(prompts[:1], GenerationParams(max_tokens=4))  # warm-up: weights paged in
    if hasattr(reasoner, "choose"):  # and choose's one-off view of the vocabulary built
        reasoner.choose(prompts[0], "", ["a"], GenerationParams(max_tokens=1))
    t0 = time.perf_counter()
    if grounded is None:
        gens = reasoner.generate(prompts, params)
    else:
        shortlists, cfg, step2 = grounded
        gens = [grounded_generation(reasoner, m, titles, params, cfg, categories=cats, step2_lead=lead)[0]
                for m, titles, (cats, lead) in zip(prompts, shortlists, step2)]
    dt = time.perf_counter() - t0
    n = len(prompts)
    return {"s": dt / n, "tps": sum(g.completion_tokens for g in gens) / dt,
            "prompt": sum(g.prompt_tokens for g in gens) / n, "completion": sum(g.completion_tokens for g in gens) / n}


class GrammarSampler:
    """A LlamaCppReasoner seen without its ``choose``: slim.lm.grounding then binds every choice with a GBNF grammar."""

    def __init__(self, reasoner):
        self.reasoner, self.model_name = reasoner, reasoner.model_name

    def generate(self, *args, **kwargs):
        return self.reasoner.generate(*args, **kwargs)

    def complete(self, *args, **kwargs):
        return self.reasoner.complete(*args, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1,
                    help="generation threads (1 was faster than 2 on the 2-vCPU box)")
    ap.add_argument("--threads-batch", type=int, default=None,
                    help="prompt threads (one batched, compute-bound pass; default --threads); the Space uses "
                    "every core")
    ap.add_argument("--candidates", type=int, default=None,
                    help="shortlist size (default: the dataset's GroundingConfig)")
    ap.add_argument("--adapter", default=None, help="student LoRA as GGUF")
    ap.add_argument("--merged", default=None, help="student GGUF with the LoRA merged in (slim_train merge)")
    ap.add_argument("--step3", choices=("grammar", "free"), default="grammar")
    ap.add_argument("--max-history", type=int, default=20, help="history titles the prompts show")
    ap.add_argument("--no-teacher", action="store_true", help="time the student(s) only")
    ap.add_argument("--grammar-sampler", action="store_true",
                    help="with --merged --step3 grammar: also time the choices through llama.cpp's grammar sampler")
    ap.add_argument("--teacher-max-tokens", type=int, default=160)
    ap.add_argument("--student-max-tokens", type=int, default=200)
    args = ap.parse_args()

    ds = load_dataset(args.dataset)
    users = range(args.users)
    histories = [ds.history(u, "valid") for u in users]
    titles = [ds.titles(h) for h in histories]
    domain = domain_for(ds.name)
    grounded = None
    if args.step3 == "grammar":
        from slim.lm.encoders import TextEncoder, item_text_matrix
        from slim.lm.grounded_step2 import step2_choices
        from slim.lm.grounding import CandidateIndex, GroundingConfig

        cfg = GroundingConfig.for_dataset(ds.name, n_candidates=args.candidates)
        index = CandidateIndex.for_config(ds, item_text_matrix(ds, TextEncoder()), cfg)
        shortlists = [[index.display[i] for i in index.candidates(h, cfg.n_candidates, cfg.recent, cfg.exclude_editions)] for h in histories]
        grounded = (shortlists, cfg, [step2_choices(ds, h[-args.max_history:], cfg) for h in histories])
        student_prompts = [student_messages(t, args.max_history, domain, s, cfg.k) for t, s in zip(titles, shortlists)]
        teacher_prompts = [teacher_messages(t, args.max_history, domain, s, cfg.k) for t, s in zip(titles, shortlists)]
    else:
        student_prompts = [student_messages(t, args.max_history) for t in titles]
        teacher_prompts = [teacher_messages(t, args.max_history, domain) for t in titles]

    results = {}
    student = LlamaCppReasoner(student_gguf_path(), args.adapter, n_threads=args.threads,
                               n_threads_batch=args.threads_batch)
    results["student"] = time_reasoner(student, student_prompts, GenerationParams(max_tokens=args.student_max_tokens),
                                       grounded)
    del student
    if args.merged:
        merged = LlamaCppReasoner(args.merged, n_threads=args.threads, n_threads_batch=args.threads_batch)
        results["merged"] = time_reasoner(merged, student_prompts, GenerationParams(max_tokens=args.student_max_tokens),
                                          grounded)
        if args.grammar_sampler and grounded:
            results["merged-grammar"] = time_reasoner(GrammarSampler(merged), student_prompts,
                                                      GenerationParams(max_tokens=args.student_max_tokens), grounded)
        del merged
    if not args.no_teacher:
        teacher = LlamaCppReasoner(teacher_gguf_path(), n_threads=args.threads, n_ctx=4096,
                                   n_threads_batch=args.threads_batch)
        results["teacher"] = time_reasoner(teacher, teacher_prompts,
                                           GenerationParams(max_tokens=args.teacher_max_tokens), grounded)
        del teacher

    print(f"{ds.name}, {args.users} users (valid histories, {args.max_history} titles shown), Step 3 {args.step3}, "
          f"llama.cpp {args.threads} thread(s), {args.threads_batch or args.threads} for the prompt, "
          f"{cfg.n_candidates if grounded else 0} candidates, greedy")
    names = {"teacher": "teacher Qwen2.5-Coder-1.5B Q4_K_M",
             "student": f"student SmolLM2-135M Q4_1{' + LoRA' if args.adapter else ''}",
             "merged": f"student merged {Path(args.merged).name if args.merged else ''}",
             "merged-grammar": "  the same, llama.cpp grammar sampler"}
    for key, r in results.items():
        print(f"{names[key]:42s}: {r['s']:6.2f} s/rationale ({r['tps']:5.1f} tok/s; prompt {r['prompt']:.0f} tok, "
              f"answer {r['completion']:.0f} tok)")
    if "merged-grammar" in results:
        print(f"speed-up of the masked choice over the grammar sampler: "
              f"{results['merged-grammar']['s'] / results['merged']['s']:.2f}x")
    if "teacher" in results:
        for key in ("student", "merged"):
            if key in results:
                print(f"ratio teacher/{key:28s}: {results['teacher']['s'] / results[key]['s']:6.1f}x   (goal >= 10x)")


if __name__ == "__main__":
    mp.freeze_support()
    main()
