"""Student latency in the demo: time to first token and to the full answer, 20-item custom history.

    python bench/app_latency.py [--repeats 5] [--max-tokens 200] [--threads 2]

Goal (issue 5): <= 1.5 s to the first token and <= 6 s to the full answer on the 2-core box.
Measured through the same objects the app uses (``slim.demo.DemoService.student()`` and
``slim.prompts.student_messages``), in process, so HTTP and Gradio's queue are excluded (the load
test, bench/app_load.py, measures those). Each repeat uses a different 20-item history (sliding
windows of one ML-100K user's sequence) so nothing is memoised; model loading is timed separately.
Prints one JSON line per repeat and a summary with medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=200, help="the app's default (SLIM_STUDENT_MAX_TOKENS)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--threads-batch", type=int, default=None, help="prompt threads (default: the app's, every core or $SLIM_THREADS_BATCH)")
    p.add_argument("--history", type=int, default=20)
    args = p.parse_args()

    from slim.demo import DemoService
    from slim.prompts import student_messages
    from slim.reasoners import GenerationParams

    svc = DemoService(student_max_tokens=args.max_tokens, n_threads=args.threads, n_threads_batch=args.threads_batch)
    ds = svc.dataset("ml-100k")
    t0 = time.perf_counter()
    student = svc.student()
    load_s = time.perf_counter() - t0
    seq = ds.history(0, "test")
    params = GenerationParams(max_tokens=args.max_tokens)
    list(student.stream(student_messages(ds.titles(seq[:args.history])), GenerationParams(max_tokens=4)))  # warm caches

    rows = []
    for r in range(args.repeats):
        titles = ds.titles(seq[(r + 1) * 3:(r + 1) * 3 + args.history])
        assert len(titles) == args.history
        t0 = time.perf_counter()
        first = None
        n = 0
        for _ in student.stream(student_messages(titles), params):
            if first is None:
                first = time.perf_counter() - t0
            n += 1
        total = time.perf_counter() - t0
        row = {"repeat": r, "first_token_s": round(first or total, 3), "full_s": round(total, 3), "tokens": n,
               "tok_per_s": round((n - 1) / (total - first), 1) if first and n > 1 else None}
        rows.append(row)
        print(json.dumps(row), flush=True)
    ft = statistics.median(r["first_token_s"] for r in rows)
    full = statistics.median(r["full_s"] for r in rows)
    print(json.dumps({
        "model": student.model_name, "history_items": args.history, "max_tokens": args.max_tokens,
        "threads": args.threads, "threads_batch": svc.n_threads_batch, "load_s": round(load_s, 2),
        "median_first_token_s": ft, "median_full_s": full,
        "median_tokens": statistics.median(r["tokens"] for r in rows),
        "goal_first_token_s": 1.5, "goal_full_s": 6.0,
        "first_token_ok": ft <= 1.5, "full_ok": full <= 6.0,
        "load_average": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()
