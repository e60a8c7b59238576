"""Load test on loopback: N concurrent gradio_client sessions call /recommend; all must be answered.

    python bench/app_load.py [--sessions 20] [--url http://127.0.0.1:7860/] [--hostile]

Without ``--url`` it starts ``python app.py`` on a free loopback port (the student limited by
``--max-tokens``, default the app's 200) and stops it afterwards. Each session is its own
``gradio_client.Client`` (own session hash, own queue position) and asks for a different ML-100K
user, so the per-prompt memo never answers and every request really generates. Prints each
request's latency, then p50/p95/max, the throughput and how many failed.

``--hostile``: a quarter of the sessions send the largest accepted paste instead (slim.demo.uploads.limits.MAX_ROWS
unknown titles, just under the byte bound: the most fuzzy matching one request can buy, refused after
matching because nothing matches); p50/p95 are then those of the normal requests, which must all be
answered, and a hostile request counts as handled when it gets its message back.

What it shows: the queue (concurrency limit 2 on a 2-core CPU) serialises the student in llama.cpp,
so latency grows linearly with the queue position while every request is still answered.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(max_tokens: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_WAIT_POLICY": "PASSIVE",
           "SLIM_STUDENT_MAX_TOKENS": str(max_tokens), "SLIM_QUEUE_SIZE": "256"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], cwd=ROOT, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited; see {log}")
        try:
            urllib.request.urlopen(url + "config", timeout=2).read()
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"app.py did not start; see {log}")


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--url", default=None)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--log", default="/tmp/slim_app_load.log")
    p.add_argument("--hostile", action="store_true", help="a quarter of the sessions send the largest accepted paste")
    args = p.parse_args()

    from gradio_client import Client

    proc = None
    url = args.url
    if url is None:
        proc, url = start_app(args.max_tokens, Path(args.log))
    try:
        # users 1..N of the dataset's id list, all distinct (ids are strings in ML-100K's file order)
        from slim.data.dataset import load_dataset

        from slim.demo.uploads.limits import MAX_ROWS, MAX_UPLOAD_BYTES

        users = [str(u) for u in load_dataset("ml-100k").user_ids[1:args.sessions + 1]]
        hostile = set(range(0, args.sessions, 4)) if args.hostile else set()  # every 4th session: a quarter
        paste = "\n".join(f"no such film {k:05d} qzv" for k in range(MAX_ROWS))  # unknown: full fuzzy pass
        assert len(paste.encode()) <= MAX_UPLOAD_BYTES
        clients = [Client(url, verbose=False) for _ in range(args.sessions)]
        results: list[dict] = [{} for _ in range(args.sessions)]
        barrier = threading.Barrier(args.sessions)

        def one(k: int) -> None:
            barrier.wait()
            t0 = time.perf_counter()
            if k in hostile:
                try:
                    clients[k].predict("ml-100k", paste, api_name="/recommend")
                    results[k] = {"user": "hostile paste", "seconds": time.perf_counter() - t0, "ok": False,
                                  "hostile": True, "error": "accepted"}
                except Exception as e:  # noqa: BLE001 - the expected answer: a message
                    results[k] = {"user": "hostile paste", "seconds": time.perf_counter() - t0, "hostile": True,
                                  "ok": "matched the catalogue" in str(e), "message": str(e)[:120]}
                return
            try:
                _, student, rows = clients[k].predict("ml-100k", users[k], api_name="/recommend")
                ok = bool(rows) and len([r for r in rows if r["variant"] == rows[0]["variant"]]) == 10 and bool(student)
                results[k] = {"user": users[k], "seconds": time.perf_counter() - t0, "ok": bool(ok)}
            except Exception as e:  # noqa: BLE001 - counted and reported
                results[k] = {"user": users[k], "seconds": time.perf_counter() - t0, "ok": False,
                              "error": f"{type(e).__name__}: {e}"[:200]}

        t0 = time.perf_counter()
        threads = [threading.Thread(target=one, args=(k,)) for k in range(args.sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        for r in sorted(results, key=lambda r: r["seconds"]):
            print(json.dumps({**r, "seconds": round(r["seconds"], 2)}))
        normal = [r for r in results if not r.get("hostile")]
        bad = [r for r in results if r.get("hostile")]
        lat = [r["seconds"] for r in normal]
        print(json.dumps({
            "sessions": args.sessions, "normal": len(normal), "hostile": len(bad),
            "answered_ok": sum(r["ok"] for r in normal), "failed": sum(not r["ok"] for r in normal),
            "hostile_answered_with_message": sum(r["ok"] for r in bad),
            "hostile_max_s": round(max((r["seconds"] for r in bad), default=0.0), 2),
            "p50_s": round(statistics.median(lat), 2), "p95_s": round(pct(lat, 0.95), 2), "max_s": round(max(lat), 2),
            "wall_s": round(wall, 2), "requests_per_min": round(60 * args.sessions / wall, 1),
            "max_tokens": args.max_tokens, "load_average": os.getloadavg()[0],
        }))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
