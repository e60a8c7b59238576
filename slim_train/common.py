"""Flags every slim_train verb shares (names are a contract: other tools call them)."""
from __future__ import annotations

import argparse
from pathlib import Path

from slim.artifacts.layout import default_run_dir


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="ml-100k", help="ml-100k | amazon-video-games | "
                   "amazon-industrial-scientific | custom:<interactions>,<items>")
    p.add_argument("--data-dir", default=None, help="default: $SLIM_DATA_DIR, else ../shared/data")
    p.add_argument("--users", type=int, default=None, help="seeded sample of N users (all when omitted)")
    p.add_argument("--seed", type=int, default=0, help="seed of the user sample")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/<dataset>)")


def run_dir(args: argparse.Namespace) -> Path:
    """The run directory (created): ``--out``, else the layout slim_eval reads (``runs/<dataset>``)."""
    out = args.out or default_run_dir(args.dataset)
    out.mkdir(parents=True, exist_ok=True)
    return out
