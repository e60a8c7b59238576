"""The reported runs: one TOML file per shipped report in ``configs/reported/<name>.toml``.

Each file holds the ``python -m slim_eval --split test`` flags its report was made with (``[flags]``,
in order) and its position in ``--dataset all`` (``order``). ``slim_eval --dataset all``, the docs
generator (docs/RESULTS.md lists exactly these runs) and the Space's served user samples read them
here, so a reported run is changed in one file.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .layout import REPO_ROOT

RUNS_DIR = REPO_ROOT / "configs" / "reported"


@dataclass(frozen=True)
class ReportedRun:
    """One reported run: its report name (the file's stem), position and flags."""

    name: str
    order: int
    flags: tuple[tuple[str, str], ...]  # ("--flag", "value") pairs, in the file's order

    @property
    def argv(self) -> list[str]:
        return [x for pair in self.flags for x in pair]

    def value(self, flag: str) -> str | None:
        return next((v for f, v in self.flags if f == flag), None)


def _flag_value(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"a flag value must be a string or a number, not {value!r}")
    return str(value)


def read_run(path: Path) -> ReportedRun:
    """One ``configs/reported/<name>.toml``; a file without ``order`` or ``[flags]`` is refused, naming itself."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    if not isinstance(data.get("order"), int) or not isinstance(data.get("flags"), dict) or not data["flags"]:
        raise ValueError(f"{path}: a reported run needs `order = <int>` and a non-empty [flags] table")
    flags = tuple((f"--{k}", _flag_value(v)) for k, v in data["flags"].items())
    return ReportedRun(path.stem, data["order"], flags)


@lru_cache(maxsize=None)
def reported_runs(runs_dir: Path = RUNS_DIR) -> tuple[ReportedRun, ...]:
    """Every reported run, in ``--dataset all`` order; none found is an error, not an empty grid."""
    runs = tuple(sorted((read_run(p) for p in Path(runs_dir).glob("*.toml")), key=lambda r: (r.order, r.name)))
    if not runs:
        raise FileNotFoundError(f"{runs_dir}: no reported-run configs (<name>.toml); `--dataset all` has nothing to run")
    return runs


def reported_user_samples() -> dict[str, tuple[int, int]]:
    """dataset -> (n, seed) of the main reported run that evaluates a seeded user sample.

    A run with its own ``--out`` is a second sample of its dataset, not the one the shipped
    checkpoints of ``assets/<dataset>/`` were fitted on, so it is left out.
    """
    out: dict[str, tuple[int, int]] = {}
    for run in reported_runs():
        users = run.value("--users")
        if users is not None and run.value("--out") is None:
            out[run.value("--dataset") or run.name] = (int(users), int(run.value("--user-seed") or 0))
    return out
