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
import time


from slim.artifacts.layout import RunLayout
from slim.artifacts.provenance import read_json
from slim_eval.__main__ import expand_all, main as slim_eval_main, parse_args
from slim_eval.report.markdown import markdown


def run(dataset: str, extra: list[str]) -> None:
    # the reported run's own flags (sample, variants), so every fit is reused and nothing is overwritten
    runs = expand_all(["--split", "test", "--threads", "1", "--no-progress", *extra, "--dataset", "all"])
    if dataset not in runs:
        raise SystemExit(f"--dataset {dataset}: not a reported run; choose one of {', '.join(runs)}")
    argv = runs[dataset]
    args = parse_args(argv)
    sink = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink):
        report = slim_eval_main(argv)
    whole = time.perf_counter() - t0
    if report is None:
        raise SystemExit(f"{dataset}: nothing was measured; run `python -m slim_eval {' '.join(argv)}` first")
    reused = sink.getvalue().count("(reused)")
    models = len({(r["backbone"], r["variant"], s) for r in report["results"] for s in r["seeds"]})
    layout = RunLayout.for_dataset(args.dataset, args.out, args.rationales_from)
    t0 = time.perf_counter()
    markdown(layout, read_json(layout.report(args.split, "json")))
    render = time.perf_counter() - t0
    print(f"{dataset}: {models} models, {reused} measurements reused")
    print(f"  whole regeneration now (one report.md render): {whole:.1f} s")
    print(f"  one report.md render: {render:.1f} s")
    old = whole + (models - 1) * render
    print(f"  old behaviour (a render after every model) <= {whole:.1f} + {models - 1} x {render:.1f} = {old:.1f} s "
          f"-> at most {old / whole:.1f}x the new time (the old early renders had fewer rows)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k", help="one of the reported runs (slim_eval's --dataset all), e.g. amazon-video-games-u500")
    args, extra = p.parse_known_args()
    run(args.dataset, extra)
