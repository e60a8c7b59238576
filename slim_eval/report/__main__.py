"""``python -m slim_eval.report RUN_DIR [RUN_DIR ...]``: regenerate report.md + plots, print the tables."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from slim.artifacts.layout import RunLayout
from slim.artifacts.provenance import read_json

from .markdown import regenerate
from .tables import combined_table1, results_table


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m slim_eval.report RUN_DIR [RUN_DIR ...]``: regenerate report.md + plots, print the tables."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m slim_eval.report", description=main.__doc__)
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--markdown", action="store_true", help="print markdown instead of aligned text")
    args = p.parse_args(argv)
    reports = []
    for d in args.run_dirs:
        regenerate(d, args.split)
        rep = read_json(RunLayout(d).report(args.split, "json"))
        reports.append(rep)
        print(results_table(rep, markdown=args.markdown), end="\n\n")
    if len(reports) > 1:
        for proto in ("full", "sampled"):
            t = combined_table1(reports, proto, markdown=args.markdown)
            if t:
                print(t, end="\n\n")


if __name__ == "__main__":
    main()
