"""Seconds per rationale, teacher vs student, on the same users in one run (ratio goal >= 10x).

    OMP_WAIT_POLICY=PASSIVE python bench/reason_speed.py --users 8 [--adapter assets/student/adapter.gguf]
        [--merged runs/merged/student-q8_0.gguf]   # from `python -m slim_train merge --quant q8_0`

Both run in-process on llama.cpp with the same thread count, greedy, on the validation histories
(train prefixes) of the first N users of ML-100K. ``--merged`` adds the student with its LoRA merged
into the weights and re-quantised (one GGUF, no adapter matmuls), timed on the same prompts.
The aggregate throughput of ``python -m slim_train reason --workers 2`` (one single-threaded
llama.cpp per core) is measured by running that command; see the README.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slim.data import load_dataset  # noqa: E402
from slim.prompts import student_messages, teacher_messages  # noqa: E402
from slim.reasoners import GenerationParams, LlamaCppReasoner  # noqa: E402
from slim.weights import student_gguf_path, teacher_gguf_path  # noqa: E402


def time_reasoner(reasoner, prompts, params) -> tuple[float, float]:
    reasoner.generate(prompts[:1], GenerationParams(max_tokens=4))  # warm-up: weights paged in
    t0 = time.perf_counter()
    gens = reasoner.generate(prompts, params)
    dt = time.perf_counter() - t0
    return dt / len(prompts), sum(g.completion_tokens for g in gens) / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="1 was faster than 2 on the 2-vCPU box")
    ap.add_argument("--adapter", default=None, help="student LoRA as GGUF")
    ap.add_argument("--merged", default=None, help="student GGUF with the LoRA merged in (slim_train merge)")
    ap.add_argument("--teacher-max-tokens", type=int, default=256)
    ap.add_argument("--student-max-tokens", type=int, default=200)
    args = ap.parse_args()

    ds = load_dataset("ml-100k")
    users = range(args.users)
    histories = [ds.titles(ds.history(u, "valid")) for u in users]
    student = LlamaCppReasoner(student_gguf_path(), args.adapter, n_threads=args.threads)
    s_per_student, tps_student = time_reasoner(student, [student_messages(h) for h in histories],
                                               GenerationParams(max_tokens=args.student_max_tokens))
    del student
    if args.merged:
        merged = LlamaCppReasoner(args.merged, n_threads=args.threads)
        s_per_merged, tps_merged = time_reasoner(merged, [student_messages(h) for h in histories],
                                                 GenerationParams(max_tokens=args.student_max_tokens))
        del merged
    teacher = LlamaCppReasoner(teacher_gguf_path(), n_threads=args.threads)
    s_per_teacher, tps_teacher = time_reasoner(teacher, [teacher_messages(h) for h in histories],
                                               GenerationParams(max_tokens=args.teacher_max_tokens))
    del teacher
    print(f"ML-100K, {args.users} users (valid histories), llama.cpp {args.threads} threads, greedy")
    print(f"teacher Qwen2.5-Coder-1.5B Q4_K_M : {s_per_teacher:6.2f} s/rationale  ({tps_teacher:5.1f} tok/s)")
    print(f"student SmolLM2-135M Q4_1{'+LoRA' if args.adapter else '      '}   : {s_per_student:6.2f} s/rationale  ({tps_student:5.1f} tok/s)")
    print(f"ratio teacher/student             : {s_per_teacher / s_per_student:6.1f}x   (goal >= 10x)")
    if args.merged:
        print(f"student merged {Path(args.merged).name:18s}: {s_per_merged:6.2f} s/rationale  ({tps_merged:5.1f} tok/s)")
        print(f"ratio teacher/merged student      : {s_per_teacher / s_per_merged:6.1f}x   (goal >= 10x)")


if __name__ == "__main__":
    mp.freeze_support()
    main()
