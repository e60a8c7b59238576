"""The results tab: report files written by slim_eval, found and read (never recomputed here)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slim.data.dataset import REPO_ROOT
from slim.demo.config import DEFAULT_DATASET


@dataclass
class Report:
    dataset: str
    markdown: str
    plots: list[Path]
    source: Path


def find_reports(root: Path = REPO_ROOT) -> list[Report]:
    """Every ``<name>/report.md`` (+ its ``plots/*.png``) under ``runs/`` (preferred: a fresh run),
    ``assets/reports/`` (the reports that ship) and ``assets/``; ML-100K first, then by name."""
    found: dict[str, Report] = {}
    for base in (root / "runs", root / "assets" / "reports", root / "assets"):
        if not base.is_dir():
            continue
        for md in sorted(base.glob("*/report.md")):
            name = md.parent.name
            if name in found:
                continue
            plots = sorted((md.parent / "plots").glob("*.png")) if (md.parent / "plots").is_dir() else []
            plots += sorted(p for p in md.parent.glob("*.png"))
            found[name] = Report(name, md.read_text(encoding="utf-8"), plots, md)
    return sorted(found.values(), key=lambda r: (r.dataset != DEFAULT_DATASET, r.dataset))
