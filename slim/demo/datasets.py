"""The datasets the Space offers, loaded once: status, catalogue, user ids, run directories."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slim.artifacts.layout import live_student_adapter
from slim.artifacts.reported_runs import reported_user_samples
from slim.data.dataset import SequentialDataset, load_dataset, sample_users
from slim.demo.config import DEFAULT_DATASET, OPTIONAL_DATASETS, RAW_FILES
from slim.demo.uploads.history import Catalogue
from slim.demo.uploads.limits import UploadError, shown


@dataclass
class DatasetStatus:
    name: str
    offered: bool
    reason: str  # why it is not offered (or a remark when it is)
    student: str  # the shipped adapter's path relative to the root, "" when absent
    rationales: list[str]
    checkpoints: int
    slim_checkpoints: int


class DatasetsMixin:
    """Datasets of a DemoService."""

    def dataset_status(self, name: str) -> "DatasetStatus":
        """Whether ``name`` is offered in the picker, what ships for it and, if it is not, why."""
        raw = self.data_dir / name / "raw"
        missing = [f for f in RAW_FILES.get(name, ()) if not (raw / f).exists()]
        adapter = self.adapter_path(name)
        rat_dirs = [d / "rationales" for d in self.run_dirs(name)] + [self.root / "assets" / "rationales" / name]
        rationales = [str(p.relative_to(self.root)) for d in rat_dirs if d.is_dir() for p in sorted(d.glob("*.jsonl"))]
        cks = self.checkpoints(name)
        st = DatasetStatus(name, True, "", str(adapter.relative_to(self.root)) if adapter.exists() else "",
                           rationales, len(cks), sum(c.variant == "slim" for c in cks))
        if name == DEFAULT_DATASET:
            if missing:
                st.reason = f"downloaded from GroupLens on first use into `{raw}`"
            return st
        if missing:
            st.offered = False
            st.reason = (f"raw files not found in `{raw}` ({', '.join(missing)}); there is no downloader for "
                         "the Amazon data: place the files there (or point `SLIM_DATA_DIR` at them) and restart")
        elif not st.student or not (st.rationales or st.checkpoints):
            st.offered = False
            st.reason = ("its artefacts do not ship in this checkout: "
                         + ", ".join(w for w, ok in ((f"student adapter `{live_student_adapter(name)}`", st.student),
                                                     (f"rationales `assets/rationales/{name}/`", st.rationales or st.checkpoints))
                                     if not ok))
        return st

    def available_datasets(self) -> list[str]:
        """ML-100K always (downloaded from GroupLens when absent); the Amazon sets when their raw files
        and shipped artefacts (student adapter + rationales or checkpoints) are there."""
        return [DEFAULT_DATASET] + [n for n in OPTIONAL_DATASETS if self.dataset_status(n).offered]

    def datasets_markdown(self) -> str:
        """The About tab's table: every known dataset, what ships for it, and why one is not offered."""
        lines = ["| dataset | in the picker | student adapter | rationales | fitted checkpoints |",
                 "|---|---|---|---|---|"]
        notes = []
        for name in (DEFAULT_DATASET, *OPTIONAL_DATASETS):
            st = self.dataset_status(name)
            lines.append(f"| {name} | {'yes' if st.offered else 'no'} | {f'`{st.student}`' if st.student else '-'} | "
                         f"{len(st.rationales)} file(s) | {st.checkpoints} ({st.slim_checkpoints} SLIM) |")
            if st.reason:
                notes.append(f"- **{name}**{'' if st.offered else ' is not in the picker'}: {st.reason}.")
        return "\n".join(lines + ([""] + notes if notes else []))

    def check_dataset(self, name: Any) -> str:
        if name is None or name == "":
            return DEFAULT_DATASET
        if not isinstance(name, str):
            raise UploadError(f"The dataset must be a name (text), not {type(name).__name__}. "
                              f"Fix: one of {', '.join(self.available_datasets())}.")
        name = name.strip()
        if name not in self.available_datasets():
            raise UploadError(f"Unknown dataset {shown(name, 40)}. Fix: choose one of "
                              f"{', '.join(self.available_datasets())}.")
        return name

    def dataset(self, name: str) -> SequentialDataset:
        name = self.check_dataset(name)
        with self._lock:
            if name not in self._datasets:
                ds = load_dataset(name, self.data_dir)
                samples = reported_user_samples()
                if name in samples:  # the users the shipped checkpoints and rationales cover
                    n, seed = samples[name]
                    ds = ds.subset_users(sample_users(ds, n, seed))
                self._datasets[name] = ds
            return self._datasets[name]

    def catalogue(self, name: str) -> Catalogue:
        ds = self.dataset(name)
        with self._lock:
            if name not in self._catalogues:
                self._catalogues[name] = Catalogue.from_dataset(ds)
            return self._catalogues[name]

    def user_ids(self, name: str) -> list[str]:
        return [str(u) for u in self.dataset(name).user_ids]

    def random_user(self, name: str, rng: np.random.Generator | None = None) -> str:
        ids = self.user_ids(name)
        return ids[int((rng or np.random.default_rng()).integers(len(ids)))]

    def run_dirs(self, name: str) -> list[Path]:
        """Where a dataset's artefacts may live: the run directory, then the shipped assets."""
        return [self.root / "runs" / name, self.root / "assets" / name]
