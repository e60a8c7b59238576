"""Shared pytest setup: offline, quiet threads, session-scoped datasets.

Environment first (before anything imports ``datasets`` or ``torch``): the suite must run with no
network and on a box shared with long jobs.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # else `datasets` tries one outside lookup
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads collapse a shared box

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

from slim.data.dataset import SequentialDataset, load_dataset, resolve_data_dir  # noqa: E402


# ---- data ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared raw data (``$SLIM_DATA_DIR`` or ``../shared/data``); tests needing it skip without it."""
    d = resolve_data_dir()
    if not d.is_dir():
        pytest.skip(f"dataset directory {d} not found (set SLIM_DATA_DIR)")
    return d


def _load(name: str, data_dir: Path) -> SequentialDataset:
    if not (data_dir / name / "raw").is_dir():
        pytest.skip(f"{data_dir / name / 'raw'} not found")
    return load_dataset(name, data_dir)


@pytest.fixture(scope="session")
def ml100k(data_dir: Path) -> SequentialDataset:
    return _load("ml-100k", data_dir)


@pytest.fixture(scope="session")
def games(data_dir: Path) -> SequentialDataset:
    return _load("amazon-video-games", data_dir)


@pytest.fixture(scope="session")
def scientific(data_dir: Path) -> SequentialDataset:
    return _load("amazon-industrial-scientific", data_dir)


@pytest.fixture(scope="session")
def make_dataset():
    """Factory: ``make_dataset(seqs, n_items)`` -> an in-memory SequentialDataset (no files).

    For unit tests of code that only needs sequences (metrics, backbones); titles are "item <i>".
    """
    import numpy as np
    import pandas as pd

    def build(seqs: list[list[int]], n_items: int, name: str = "synthetic") -> SequentialDataset:
        items = pd.DataFrame(
            {"item_id": [str(i) for i in range(1, n_items + 1)],
             "title": [f"item {i}" for i in range(1, n_items + 1)]},
            index=pd.RangeIndex(1, n_items + 1, name="item_idx"),
        )
        items["text"] = items["title"]
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(s) for s in seqs])
        values = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if seqs else np.zeros(0, np.int64)
        user_ids = np.array([str(u) for u in range(len(seqs))])
        return SequentialDataset(name, items, user_ids, values, offsets)

    return build


# ---- CI: no silent skips ------------------------------------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``CI=true`` a skip is a failure: .ci/run installs everything (chromium, llama.cpp, the
    weights), so a skipped browser or live-server test would mean CI passed without running it.
    ``SLIM_ALLOW_SKIPS=1`` turns this off (e.g. CI on a box without root for apt-get)."""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get("CI") == "true" and os.environ.get("SLIM_ALLOW_SKIPS") != "1"
            and not hasattr(report, "wasxfail")):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (every test must run in CI; SLIM_ALLOW_SKIPS=1 allows it): {reason}"
