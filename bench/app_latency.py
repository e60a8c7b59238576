"""Latency in the demo: time to first token and to the full answer, 20-item custom history, for the
student and (when installed) the live teacher, alone and side by side as the Space runs them.

    python bench/app_latency.py [--repeats 5] [--max-tokens 200] [--teacher-max-tokens 320] [--threads 1]
                                [--models student,teacher] [--no-together]

Goal for the student: <= 1.5 s to the first token and <= 6 s to the full answer on the 2-core box.
Measured through the same objects the app uses (``slim.demo.service.DemoService.student()`` / ``.teacher()``
and ``slim.lm.prompts.student_messages`` / ``teacher_messages``), in process, so HTTP and Gradio's queue
are excluded (the load test, bench/app_load.py, measures those). Each repeat uses a different 20-item
history (sliding windows of the longest ML-100K user's sequence) so nothing is memoised; model loading is
timed separately. "together" runs both models at once on their own threads, exactly as a custom
history in the Space does (see the slim.demo.service docstring for how they share the cores). Without a
live teacher (no endpoint, local GGUF not installed: ``python -m slim_train models --teacher``) the
teacher rows are skipped and the summary says so. Prints one JSON line per measurement and a summary
with medians.

Measured 2026-12-01, ``--repeats 3``, defaults (1 decode thread each, student prompt on 2 threads),
on the 2-core box shared with background jobs (load average 3.8), medians in seconds:

    model                         first token   full answer   (stream chunks)
    student alone                     2.0           3.6          75
    teacher alone                    11.1          24.0          59
    student beside the teacher        3.9           7.9          78
    teacher beside the student       12.8          25.7          76

Side by side the student still answers in under 8 s while the teacher is 1.1 s slower than alone:
the split keeps the student usable; the teacher's time is its 1-thread prompt pass and decoding.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def timed_stream(reasoner, messages, params) -> dict:
    t0 = time.perf_counter()
    first = None
    n = 0
    for _ in reasoner.stream(messages, params):
        if first is None:
            first = time.perf_counter() - t0
        n += 1
    total = time.perf_counter() - t0
    return {"first_token_s": round(first or total, 3), "full_s": round(total, 3), "tokens": n,
            "tok_per_s": round((n - 1) / (total - first), 1) if first and n > 1 and total > first else None}


def summary(rows: list[dict]) -> dict:
    return {"median_first_token_s": statistics.median(r["first_token_s"] for r in rows),
            "median_full_s": statistics.median(r["full_s"] for r in rows),
            "median_tokens": statistics.median(r["tokens"] for r in rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=200, help="student; the app's default (SLIM_STUDENT_MAX_TOKENS)")
    p.add_argument("--teacher-max-tokens", type=int, default=320, help="the app's default (SLIM_TEACHER_MAX_TOKENS)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--threads-batch", type=int, default=None, help="student prompt threads (default: the app's, every core or $SLIM_THREADS_BATCH)")
    p.add_argument("--history", type=int, default=20)
    p.add_argument("--models", default="student,teacher")
    p.add_argument("--no-together", action="store_true", help="skip the side-by-side run")
    args = p.parse_args()

    from slim.demo.service import DemoService
    from slim.lm.prompts import student_messages, teacher_messages

    svc = DemoService(student_max_tokens=args.max_tokens, teacher_max_tokens=args.teacher_max_tokens,
                      n_threads=args.threads, n_threads_batch=args.threads_batch)
    ds = svc.dataset("ml-100k")
    # the longest history: enough distinct 20-item windows that no prompt repeats (no prefix-cache hit)
    seq = max((ds.history(u, "test") for u in range(ds.n_users)), key=len)
    models = {}
    load_s = {}
    wanted = args.models.split(",")
    if "student" in wanted:
        t0 = time.perf_counter()
        models["student"] = (svc.student(), student_messages, svc.student_params)
        load_s["student"] = round(time.perf_counter() - t0, 2)
    if "teacher" in wanted:
        t0 = time.perf_counter()
        teacher = svc.teacher()
        if teacher is None:
            print(json.dumps({"teacher": "skipped", "why": svc.teacher_help()}), flush=True)
        else:
            models["teacher"] = (teacher, teacher_messages, svc.teacher_params)
            load_s["teacher"] = round(time.perf_counter() - t0, 2)
    for reasoner, prompt, params in models.values():  # warm caches
        list(reasoner.stream(prompt(ds.titles(seq[:args.history])), type(params)(max_tokens=4)))

    def history(r: int) -> list[str]:
        titles = ds.titles(seq[(r + 1) * 3:(r + 1) * 3 + args.history])
        assert len(titles) == args.history
        return titles

    results: dict[str, list[dict]] = {}
    for role, (reasoner, prompt, params) in models.items():
        for r in range(args.repeats):
            row = {"mode": "alone", "model": role, "repeat": r, **timed_stream(reasoner, prompt(history(r)), params)}
            results.setdefault(f"{role} alone", []).append(row)
            print(json.dumps(row), flush=True)
    if len(models) == 2 and not args.no_together:
        for r in range(args.repeats):
            out: dict[str, dict] = {}
            threads = [threading.Thread(target=lambda k=k, m=m: out.__setitem__(k, timed_stream(m[0], m[1](history(args.repeats + r)), m[2])))
                       for k, m in models.items()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for role, res in out.items():
                row = {"mode": "together", "model": role, "repeat": r, **res}
                results.setdefault(f"{role} together", []).append(row)
                print(json.dumps(row), flush=True)
    out = {k: summary(v) for k, v in results.items()}
    names = {k: m[0].model_name for k, m in models.items()}
    st = out.get("student alone")
    print(json.dumps({
        "models": names, "history_items": args.history, "max_tokens": args.max_tokens,
        "teacher_max_tokens": args.teacher_max_tokens, "threads": args.threads, "threads_batch": svc.n_threads_batch,
        "load_s": load_s, "summary": out, "teacher_measured": "teacher" in models,
        "goal_first_token_s": 1.5, "goal_full_s": 6.0,
        "student_first_token_ok": st["median_first_token_s"] <= 1.5 if st else None,
        "student_full_ok": st["median_full_s"] <= 6.0 if st else None,
        "load_average": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()
