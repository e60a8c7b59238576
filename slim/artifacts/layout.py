"""Where every artefact of a run lives, and which artefacts the repository ships.

One run directory per dataset (default ``runs/<dataset>``)::

    rationales/teacher.jsonl, rationales/student.jsonl   slim_train teach / reason
    checkpoints/<backbone>-<variant>[-<tag>]-seed<k>-<key hash>/   slim.recommenders.train.fit
    eval/<split>/<backbone>-<variant>[-<tag>]-seed<k>-<protocol>.npz   per-user ranks (slim_eval)
    eval/<split>/_dataset.npz                             item popularity of the evaluated users
    negatives/                                            sampled-protocol negatives (slim.eval.metrics)
    text-cache/                                           encoder vectors (slim.lm.encoders)
    report.json, report.md, plots/                        slim_eval (test split)
    report-valid.json, report-valid.md                    slim_eval --split valid

Why one module: slim_train writes and slim_eval reads the same files, and the two never import
each other; a path computed in two places drifts. Only paths and records live here; the formats
(JSONL rows, safetensors) belong to the modules that write them.

Provenance records, hashes and atomic writes are in :mod:`slim.artifacts.provenance`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RATIONALE_FILES = {"teacher": "teacher.jsonl", "student": "student.jsonl"}

# The shipped student (LoRA for SmolLM2-135M, relative to the repository root) for each dataset.
# One table because three places must agree on it: the command a report prints to make missing
# rationales (``reason`` without ``--adapter`` runs the *undistilled* base model), the rationales the
# reported numbers came from, and the student the demo runs live for that dataset.
STUDENT_ADAPTERS = {  # v4: v3 continued on grounded ML-100K + Games rows; it wrote Scientific's rows with no Scientific data
    "ml-100k": "assets/student-v4/adapter.gguf",
    "amazon-industrial-scientific": "assets/student-v4/adapter.gguf",
}
OTHER_DOMAIN_ADAPTER = "assets/student-games/adapter.gguf"  # v3: v2 continued on 300 Games teacher rationales
# Every student the repository ships (folders): held-out comparisons leave out the users any of them
# was distilled on, so no rationale file is measured on its student's training data.
SHIPPED_STUDENTS = ("assets/student", "assets/student-games", "assets/student-v4")


def student_adapter(dataset: str) -> str:
    """The adapter that wrote (or would write) ``dataset``'s student rationales; Games' shipped rows are v3's."""
    return STUDENT_ADAPTERS.get(dataset, OTHER_DOMAIN_ADAPTER)


# The student the Space runs live, for every dataset: the newest one (v4, distilled on ML-100K and
# Games with the domain-aware prompt and a grounded Step 3). It is not ``student_adapter``: that one
# names the student whose shipped rows the reported fits were trained on, which a report describes.
LIVE_STUDENT_ADAPTER = "assets/student-v4/adapter.gguf"


def live_student_adapter(dataset: str) -> str:
    """The adapter the Space reasons with for ``dataset``: the newest student when it ships, else the
    dataset's own (``student_adapter``)."""
    return LIVE_STUDENT_ADAPTER if (REPO_ROOT / LIVE_STUDENT_ADAPTER).exists() else student_adapter(dataset)


def adapter_prompt(adapter: str | Path) -> str:
    """The student prompt an adapter was distilled on: "plain" (history only) or "grounded" (the
    dataset's domain and a candidate shortlist; its Step 3 is then chosen under a grammar).

    Read from the ``metrics.json`` that ``distill`` writes beside the adapter, so a student is always
    prompted the way it was trained; adapters without one (or older ones) are "plain".
    """
    import json

    folder = Path(adapter)
    folder = folder if folder.is_dir() else folder.parent
    path = folder / "metrics.json"
    if not path.exists():
        return "plain"
    return str(json.loads(path.read_text()).get("config", {}).get("prompt", "plain"))


def default_run_dir(dataset: str) -> Path:
    """``runs/<dataset>`` with ``custom:a,b`` made into a safe folder name."""
    safe = dataset.replace("custom:", "custom-").replace("/", "_").replace(",", "_")
    return Path("runs") / safe


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run directory (nothing is created until a writer asks for it)."""

    root: Path
    # another run's directory whose rationales/ this run reads: a user sample evaluated in its own
    # directory (its own checkpoints, per-user files, report) shares the rationale files
    rationales_from: Path | None = None
    # the dataset name: where the repository's shipped artefacts for it live (assets/rationales/<name>/,
    # assets/<name>/checkpoints/); None (a bare RunLayout(root)) reads only what is under root
    dataset: str | None = None
    # the student rationale file this run reads and ``reason --name`` writes (in rationales/, else the
    # shipped assets/rationales/<dataset>/): a run can measure one student's rows beside another's
    student_file: str = RATIONALE_FILES["student"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.rationales_from is not None:
            object.__setattr__(self, "rationales_from", Path(self.rationales_from))

    @classmethod
    def for_dataset(cls, dataset: str, out: str | Path | None = None,
                    rationales_from: str | Path | None = None, shipped: bool = True,
                    student_file: str | None = None) -> "RunLayout":
        """``shipped=False``: read only the run's own files, never the repository's ``assets/``."""
        return cls(Path(out) if out else default_run_dir(dataset), rationales_from, dataset if shipped else None,
                   student_file or RATIONALE_FILES["student"])

    # ---- shipped with the repository (read only) ----------------------------------------
    @property
    def shipped_rationales_dir(self) -> Path | None:
        """``assets/rationales/<dataset>/``: the rationale files a fresh clone reads (see its README)."""
        return REPO_ROOT / "assets" / "rationales" / default_run_dir(self.dataset).name if self.dataset else None

    @property
    def shipped_checkpoints_dir(self) -> Path | None:
        """``assets/<dataset>/checkpoints/``: fitted models ``fit(reuse_from=...)`` loads instead of training."""
        return REPO_ROOT / "assets" / default_run_dir(self.dataset).name / "checkpoints" if self.dataset else None

    @property
    def hub_fits_dir(self) -> Path:
        """Where ``slim_eval --fits-from-hub`` downloads a published set of checkpoints."""
        return self.root / "hub-fits"

    # ---- producers' outputs ------------------------------------------------------------
    @property
    def producers_root(self) -> Path:
        """Where the rationales and the student that wrote them live (``rationales_from`` or this run)."""
        return self.rationales_from or self.root

    @property
    def rationales_dir(self) -> Path:
        return self.producers_root / "rationales"

    @property
    def distill_metrics(self) -> Path:
        """The distilled student's metrics.json (its training users): next to the rationales it wrote.

        A run that reads the shipped student rationales (no student file of its own) reads the
        shipped student's metrics (``student_adapter(dataset)``'s folder), the student that wrote
        them, so measures that must leave out its training users still can on a fresh clone.
        (``slim_eval --rationales --heldout`` leaves out every shipped student's users instead.)
        """
        own = self.producers_root / "distill" / "adapter" / "metrics.json"
        if own.exists() or self.dataset is None or not self.is_shipped(self.rationales("student")):
            return own
        shipped = REPO_ROOT / Path(student_adapter(self.dataset)).parent / "metrics.json"
        return shipped if shipped.exists() else own

    def own_rationales(self, name: str) -> Path:
        """``<producers root>/rationales/<file>``: where ``slim_train teach``/``reason`` write ``name``."""
        file = self.student_file if name == "student" else RATIONALE_FILES.get(name, f"{name}.jsonl")
        return self.rationales_dir / file

    def rationales(self, name: str) -> Path:
        """The JSONL a reader uses for ``teacher`` / ``student`` (or any other reasoner name).

        The run's own file when it exists; else the repository's shipped copy
        (``assets/rationales/<dataset>/<file>``) when there is one, so a fresh clone measures SLIM
        without hours of teacher and student time; else the own path (missing: the caller names the
        command that makes it). :meth:`is_shipped` tells a report which one it read.
        """
        own = self.own_rationales(name)
        if own.exists() or self.shipped_rationales_dir is None:
            return own
        shipped = self.shipped_rationales_dir / own.name
        return shipped if shipped.exists() else own

    def is_shipped(self, path: str | Path) -> bool:
        """True when ``path`` is one of the repository's shipped artefacts (under ``assets/``)."""
        try:
            Path(path).resolve().relative_to((REPO_ROOT / "assets").resolve())
            return True
        except ValueError:
            return False

    def rationale_files(self) -> list[Path]:
        """Every rationale JSONL a reader sees: the run's own, plus the shipped teacher / student files it
        reads in place of missing own ones (:meth:`rationales`). Other shipped files (a growing
        distillation set, say) are not mixed into a run that did not ask for them."""
        own = sorted(self.rationales_dir.glob("*.jsonl")) if self.rationales_dir.is_dir() else []
        read = [self.rationales(name) for name in RATIONALE_FILES]
        return own + [p for p in read if self.is_shipped(p) and p.exists() and p not in own]

    @property
    def checkpoints_dir(self) -> Path:
        """Pass this as ``run_dir`` to ``slim.recommenders.train.fit``; it adds ``<name>-<key hash>``."""
        return self.root / "checkpoints"

    @property
    def negatives_dir(self) -> Path:
        return self.root / "negatives"

    @property
    def text_cache_dir(self) -> Path:
        return self.root / "text-cache"

    # ---- measurements ------------------------------------------------------------------
    def eval_file(self, split: str, run_name: str, protocol: str) -> Path:
        """Per-user ranks (+ top-10 lists) of one fitted model on one split under one protocol."""
        return self.root / "eval" / split / f"{run_name}-{protocol}.npz"

    def eval_dataset_file(self, split: str) -> Path:
        """What the per-user files are relative to: item training popularity of the evaluated users."""
        return self.root / "eval" / split / "_dataset.npz"

    def report(self, split: str = "test", suffix: str = "json") -> Path:
        """``report.json``/``.md`` for test; ``report-valid.*`` so a validation run never clobbers it."""
        stem = "report" if split == "test" else f"report-{split}"
        return self.root / f"{stem}.{suffix}"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    @property
    def rationale_quality(self) -> Path:
        return self.root / "rationale-quality.json"
