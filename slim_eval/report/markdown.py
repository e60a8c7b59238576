"""report.md, and the record of the run that produced it, so the page can be rebuilt without refitting.

The command line and the notes (skipped variants, rationale coverage, wall time) are known only to
the producing run. It writes them to ``report.run.json`` beside report.json (``write_run_record``),
and :func:`regenerate` reads them from there: report.md is an output, never read back. report.json
stays the numbers alone, so two runs that measured the same thing write the same report.json.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from slim.artifacts.layout import RATIONALE_FILES, RunLayout
from slim.artifacts.provenance import read_json, write_json

from .compute import compute_table
from .intervals import chosen_fusion_interval_table, improvement_table, slim_vs_teacher_interval_table
from .per_user import gain_by_rationale_table, popularity_table
from .plots import longtail_plot, sparsity_plot
from .tables import summary_blocks


def run_record_path(layout: RunLayout, split: str) -> Path:
    """``report.run.json`` (``report-valid.run.json`` for the valid split): the producing run's command and notes."""
    return layout.report(split, "run.json")


def write_run_record(layout: RunLayout, split: str, command: str | None, notes: Sequence[str]) -> None:
    """What only the producing run knows, kept for :func:`regenerate` (atomic, like report.json)."""
    write_json(run_record_path(layout, split), {"command": command, "notes": list(notes)})


def markdown(layout: RunLayout, report: dict, command: str | None = None, notes: Sequence[str] = ()) -> str:
    """report.md: the main table, the command, then every table and plot whose variants exist."""
    parts = [f"# SLIM-Rec report: {report['dataset']} ({report['split']})"]
    if command:
        parts.append(f"Produced by:\n\n```\n{command}\n```")
    parts += summary_blocks(report)
    for t in (improvement_table(layout, report), slim_vs_teacher_interval_table(layout, report),
              chosen_fusion_interval_table(layout, report)):
        if t:
            parts.append(t)
    by_state = gain_by_rationale_table(layout, report)
    if by_state:
        parts.append(by_state)
    pop = popularity_table(layout, report)
    if pop:
        parts.append(pop)
    plot = sparsity_plot(layout, report) if any(r["backbone"] == "sasrec" for r in report["results"]) else None
    if plot:
        parts.append(f"User-sparsity groups: ![sparsity]({plot.relative_to(layout.root).as_posix()})")
    tail = longtail_plot(layout, report) if any(r["backbone"] == "sasrec" for r in report["results"]) else None
    if tail:
        parts.append(f"Recommendation frequency vs item popularity: ![longtail]({tail.relative_to(layout.root).as_posix()})")
    compute = compute_table(layout, report)
    if compute:
        parts.append(compute)
    if notes:
        parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in notes))
    return "\n\n".join(parts) + "\n"


def regenerate(run_dir: str | Path, split: str = "test") -> str:
    """Rewrite report.md (+ plots) from report.json, the run record and the stored per-user files; no refitting."""
    layout = RunLayout(Path(run_dir))
    report = read_json(layout.report(split, "json"))
    if report is None:
        raise FileNotFoundError(f"{layout.report(split, 'json')}: no report; run python -m slim_eval first")
    layout = RunLayout(layout.root, report.get("rationales_from"), report.get("dataset"),
                       report.get("student_file") or RATIONALE_FILES["student"])
    record = read_json(run_record_path(layout, split))
    if record is None:
        print(f"{run_record_path(layout, split)} is missing, so report.md is rebuilt without the producing "
              "command and its notes; rerunning python -m slim_eval with that run's flags records them "
              "(every fit and measurement is reused)", file=sys.stderr)
        record = {}
    md = markdown(layout, report, record.get("command"), record.get("notes") or ())
    layout.report(split, "md").write_text(md, encoding="utf-8")
    return md
