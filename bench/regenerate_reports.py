"""How long a pure regeneration of a report takes (every fit and measurement reused), and what the
per-model report.md rebuild it no longer does would have cost.

    python bench/regenerate_reports.py --dataset ml-100k

`slim_eval` rebuilds report.md after each model that measured something new, so a long grid keeps a
current table. It used to do so after every model, reused or not. This script times one whole
`python -m slim_eval --split test` on the existing run (new behaviour: one render at the end) and one
render of report.md on its own; the old behaviour paid (models - 1) extra renders. Both are measured in
the same process, so the ratio is within one run. Needs a run directory whose fits exist.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slim.artifacts import RunLayout, read_json
from slim_eval.__main__ import main as slim_eval_main
from slim_eval.report import markdown


def run(dataset: str, extra: list[str]) -> None:
    argv = ["--split", "test", "--dataset", dataset, "--threads", "1", "--no-progress", *extra]
    sink = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink):
        report = slim_eval_main(argv)
    whole = time.perf_counter() - t0
    reused = sink.getvalue().count("(reused)")
    models = len({(r["backbone"], r["variant"]) for r in report["results"]}) * len(report["results"][0]["seeds"])
    layout = RunLayout.for_dataset(dataset, None, None)
    t0 = time.perf_counter()
    markdown(layout, read_json(layout.report("test", "json")))
    render = time.perf_counter() - t0
    print(f"{dataset}: {models} models, {reused} measurements reused")
    print(f"  whole regeneration now (one report.md render): {whole:.1f} s")
    print(f"  one report.md render: {render:.1f} s")
    old = whole + (models - 1) * render
    print(f"  old behaviour (a render after every model) = {whole:.1f} + {models - 1} x {render:.1f} = {old:.1f} s "
          f"-> {old / whole:.1f}x the new time")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    args, extra = p.parse_known_args()
    run(args.dataset, extra)
