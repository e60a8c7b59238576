"""Where every artefact of a run lives, and the provenance records that decide when one is reused.

One run directory per dataset (default ``runs/<dataset>``)::

    rationales/teacher.jsonl, rationales/student.jsonl   slim_train teach / reason
    checkpoints/<backbone>-<variant>[-<tag>]-seed<k>-<key hash>/   slim.recommenders.train.fit
    eval/<split>/<backbone>-<variant>[-<tag>]-seed<k>-<protocol>.npz   per-user ranks (slim_eval)
    eval/<split>/_dataset.npz                             item popularity of the evaluated users
    negatives/                                            sampled-protocol negatives (slim.metrics)
    text-cache/                                           encoder vectors (slim.encoders)
    report.json, report.md, plots/                        slim_eval (test split)
    report-valid.json, report-valid.md                    slim_eval --split valid

Why one module: slim_train writes and slim_eval reads the same files, and the two never import
each other; a path computed in two places drifts. Only paths and records live here; the formats
(JSONL rows, safetensors) belong to the modules that write them.

Provenance: there is ONE mechanism. A record is a JSON dict whose ``key`` part says what the
artefact was computed from (inputs' hashes, model ids, params); the rest (code version, time,
metrics) is informational. An artefact is reused only when its stored key equals the key the
caller would compute now (:func:`matches`). Checkpoints use exactly this through
``slim.recommenders.train.checkpoint_key`` (its ``config.json`` holds ``{"complete", "key", ...}``);
the per-user evaluation files and anything else use :func:`make_record`. ``code_version`` is
recorded, never matched: a refactor must not invalidate hours of training, and the record still
says which commit produced the numbers.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
RATIONALE_FILES = {"teacher": "teacher.jsonl", "student": "student.jsonl"}

# The shipped student (LoRA for SmolLM2-135M, relative to the repository root) for each dataset.
# One table because three places must agree on it: the command a report prints to make missing
# rationales (``reason`` without ``--adapter`` runs the *undistilled* base model), the rationales the
# reported numbers came from, and the student the demo runs live for that dataset.
STUDENT_ADAPTERS = {"ml-100k": "assets/student-v4/adapter.gguf"}  # v4: v3 continued on grounded ML-100K + Games rows
OTHER_DOMAIN_ADAPTER = "assets/student-games/adapter.gguf"  # v3: v2 continued on 300 Games teacher rationales
# Every student the repository ships (folders): held-out comparisons leave out the users any of them
# was distilled on, so no rationale file is measured on its student's training data.
SHIPPED_STUDENTS = ("assets/student", "assets/student-games", "assets/student-v4")


# The seeded user samples (n, seed) the reported Amazon runs evaluate and their shipped checkpoints were
# fitted on (``slim_eval --users N --user-seed S``): a checkpoint is bound to its users' data
# fingerprint, so the Space serves these users of these datasets. ML-100K: every user.
REPORTED_USER_SAMPLES = {"amazon-video-games": (3000, 0), "amazon-industrial-scientific": (600, 0)}


def student_adapter(dataset: str) -> str:
    """The adapter that wrote (or would write) ``dataset``'s student rationales; Amazon sets share v3."""
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

    def checkpoint_candidates(self, run_name: str) -> list[Path]:
        """Existing checkpoint dirs of ``<backbone>-<variant>[-<tag>]-seed<k>`` (any key hash)."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoints_dir.glob(f"{run_name}-*") if p.name.rsplit("-", 1)[0] == run_name)

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


# ---------------------------------------------------------------------------------------
# hashes
# ---------------------------------------------------------------------------------------

def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_array(a: np.ndarray | None) -> str | None:
    """Content hash of an array (shape + float32 bytes); 16 hex chars, like train.array_sha."""
    if a is None:
        return None
    a = np.ascontiguousarray(a, dtype=np.float32)
    h = hashlib.sha256(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def text_inputs_key(vectors: np.ndarray | None) -> dict | str | None:
    """What a checkpoint records of one text input: the texts and encoder it came from.

    ``slim.encoders.TextVectors`` carry that (``.provenance``), and then the key never depends on
    the float bits (which differ across machines). Plain arrays (synthetic tests, hand-made
    vectors) have no texts to name: their key is the hash of the values rounded to 4 decimals,
    which a 1e-6 wobble rarely flips and a real change always does.
    """
    if vectors is None:
        return None
    prov = getattr(vectors, "provenance", None)
    if prov:
        return dict(prov)
    a = np.round(np.ascontiguousarray(vectors, dtype=np.float64), 4) + 0.0  # + 0.0: no -0.0
    return "rounded:" + sha256_array(a.astype(np.float32))


PROBE_ROWS, PROBE_DIMS, PROBE_ATOL = 8, 16, 1e-3


def vector_probe(vectors: np.ndarray | None) -> dict | None:
    """A few rows of the vectors, rounded: stored beside a key, checked with a tolerance on load.

    Why: the key says the texts match; the probe says the encoder still turns them into (nearly)
    the same numbers, so a different encoder build that moved the vectors is caught, and a 1e-6
    difference is not. Rows are the first non-zero ones spread over the matrix.
    """
    if vectors is None:
        return None
    a = np.asarray(vectors, dtype=np.float32)
    nonzero = np.flatnonzero(np.abs(a).sum(axis=1) > 0) if a.ndim == 2 else np.array([], dtype=np.int64)
    rows = nonzero[np.linspace(0, len(nonzero) - 1, min(PROBE_ROWS, len(nonzero))).astype(int)] if len(nonzero) else []
    return {"rows": [int(r) for r in rows],
            "values": [[round(float(x), 5) for x in a[r, :PROBE_DIMS]] for r in rows]}


def probe_mismatch(probe: dict | None, vectors: np.ndarray | None) -> str | None:
    """None when ``vectors`` agree with a stored probe within ``PROBE_ATOL``; else what differs."""
    if not probe or vectors is None:
        return None
    a = np.asarray(vectors, dtype=np.float32)
    for r, stored in zip(probe["rows"], probe["values"]):
        if r >= len(a):
            return f"row {r} is missing (the matrix has {len(a)} rows)"
        diff = float(np.max(np.abs(a[r, :len(stored)] - np.asarray(stored, dtype=np.float32))))
        if diff > PROBE_ATOL:
            return f"row {r} differs by {diff:.2g} (tolerance {PROBE_ATOL:g}): another encoder or encoder build"
    return None


def changed_rows(stored: list[str] | None, vectors: np.ndarray | None, limit: int = 5) -> list[int]:
    """Rows whose text digest differs between a checkpoint's record and ``vectors`` (TextVectors)."""
    now = getattr(vectors, "row_digests", None)
    if not stored or now is None:
        return []
    rows = [i for i, (a, b) in enumerate(zip(stored, now)) if a != b]
    rows += list(range(min(len(stored), len(now)), max(len(stored), len(now))))
    return rows[:limit]


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_version() -> str:
    """``git rev-parse HEAD`` (+ "-dirty" when slim/ has uncommitted changes); "unknown" outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "slim"], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------

def make_record(key: Mapping[str, Any], **info: Any) -> dict:
    """``{"key": key, "key_hash", "code_version", "created", **info}``; only ``key`` is matched."""
    return {
        "key": dict(key),
        "key_hash": sha256_json(key),
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **info,
    }


def matches(record: Mapping[str, Any] | None, key: Mapping[str, Any]) -> bool:
    """True when a stored record was computed from exactly ``key`` (JSON round-trip compared)."""
    if not record or "key" not in record:
        return False
    return json.loads(json.dumps(record["key"], default=str)) == json.loads(json.dumps(dict(key), default=str))


def mismatch(record: Mapping[str, Any] | None, key: Mapping[str, Any]) -> list[str]:
    """Top-level key fields that differ (for an error message that says what changed)."""
    stored = (record or {}).get("key", {})
    now = json.loads(json.dumps(dict(key), default=str))
    return sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic JSON write (temp file + rename): a killed writer never leaves half a record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any | None:
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def save_npz(path: str | Path, record: Mapping[str, Any], **arrays: np.ndarray) -> None:
    """Arrays + their provenance record (as a JSON string in ``_record``), atomically, no pickle."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, _record=np.array(json.dumps(record, default=str)), **arrays)
    os.replace(tmp, path)


def load_npz(path: str | Path) -> tuple[dict, dict[str, np.ndarray]] | None:
    """``(record, arrays)`` or None when the file is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None
    record = json.loads(str(arrays.pop("_record"))) if "_record" in arrays else {}
    return record, arrays
