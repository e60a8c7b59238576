"""Compute accounting: what each stage of a run cost, added up from the artefacts themselves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from slim.artifacts.layout import REPO_ROOT, RunLayout
from slim.artifacts.provenance import read_json

from .per_user import eval_arrays
from .tables import render


def _checkpoint_seconds(layout: RunLayout, checkpoint: str) -> float | None:
    """Training + per-epoch validation seconds of one fitted checkpoint (its config.json history)."""
    roots = [layout.checkpoints_dir, layout.shipped_checkpoints_dir, layout.hub_fits_dir]
    rec = next((r for d in roots if d is not None and (r := read_json(d / checkpoint / "config.json"))), None)
    if not rec or not rec.get("history"):
        return None
    return float(sum(h.get("train_seconds", 0.0) + h.get("eval_seconds", 0.0) for h in rec["history"]))


def read_rationale_files(layout: RunLayout, report: dict) -> list[Path]:
    """The rationale files this report's variants read (``report["rationale_files"]``), found where the
    run found them or, on another machine, where this layout finds that role's file; a report
    written before that record counts every file the run sees. Other files in the same folder (a
    growing file for a later report, say) are not this run's cost."""
    named = report.get("rationale_files")
    if not named:
        return layout.rationale_files()
    paths = []
    for role, shown in named.items():
        path = Path(shown) if Path(shown).is_absolute() else REPO_ROOT / shown
        path = path if path.exists() else layout.rationales(role)
        if path.exists() and path not in paths:
            paths.append(path)
    return paths


def compute_rows(layout: RunLayout, report: dict) -> list[dict]:
    """What each stage of this run cost, read back from the artefacts themselves.

    Why from artefacts rather than a stopwatch around the command: a rerun reuses most fits and
    rationales, so the wall time of the last command says little; the rows' own ``seconds`` and
    the checkpoints' epoch timings add up what was really spent, whichever run spent it.
    """
    from ..inputs import load_rationale_rows

    rows: list[dict] = []
    seen: set[tuple] = set()  # a row copied into two files (teacher.jsonl -> teacher-distill-700.jsonl) was paid once
    for path in read_rationale_files(layout, report):
        file_rows = list(load_rationale_rows(path).values())  # torn last line handled by RationaleStore
        secs, paid = [], 0.0
        for r in file_rows:
            if not isinstance(r.get("seconds"), (int, float)):
                continue
            secs.append(float(r["seconds"]))
            ident = (r.get("user_id"), r.get("split"), r.get("model"), r.get("prompt_hash"), r.get("created"))
            if ident not in seen:
                seen.add(ident)
                paid += float(r["seconds"])
        models = sorted({str(r.get("model")) for r in file_rows})
        rows.append({"stage": f"rationales/{path.name}", "units": len(file_rows), "seconds": float(sum(secs)),
                     "paid": paid, "per_unit": float(np.median(secs)) if secs else None, "what": ", ".join(models)})
    distill = read_json(layout.distill_metrics)
    if distill:
        secs, steps = distill.get("train_seconds"), distill.get("steps")
        if secs is not None:
            rows.append({"stage": "distill (LoRA SFT)", "units": steps, "seconds": float(secs),
                         "per_unit": float(secs) / steps if steps else None, "what": "optimizer steps"})
    protocol = report["protocols"][0] if report.get("protocols") else "full"
    for r in report["results"]:
        if r["protocol"] != protocol:
            continue
        fit, n = 0.0, 0
        for rec, _ in eval_arrays(layout, report, r["backbone"], r["variant"], protocol):
            s = _checkpoint_seconds(layout, rec.get("key", {}).get("checkpoint", ""))
            if s is not None:
                fit, n = fit + s, n + 1
        if n:
            name = r["variant"] if r["backbone"] == "none" else f"{r['backbone']} {r['variant']}"
            rows.append({"stage": f"fit {name}", "units": n, "seconds": fit, "per_unit": fit / n,
                         "what": "seeds (train + validation epochs)"})
    return rows


def compute_table(layout: RunLayout, report: dict, markdown: bool = True) -> str | None:
    rows = compute_rows(layout, report)
    if not rows:
        return None
    cell = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
    body = [[r["stage"], cell(r["units"], "{}"), cell(r["seconds"] / 3600, "{:.2f}"),
             cell(r["per_unit"], "{:.1f}"), r["what"]] for r in rows]
    total = sum(r.get("paid", r["seconds"]) for r in rows)
    body.append(["total", "", f"{total / 3600:.2f}", "", "sum of the rows above, a rationale copied into two files counted once"])
    return ("Compute per stage (from the artefacts: rationale rows' `seconds`, checkpoint epoch timings;"
            " single-threaded unless the producing command said otherwise)\n\n"
            + render(["stage", "units", "hours", "s per unit (median for rationales)", "units are"], body, markdown))


