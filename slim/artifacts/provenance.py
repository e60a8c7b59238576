"""Provenance and atomic writes: the one mechanism that decides when an artefact is reused.

A record is a JSON dict whose ``key`` part says what the artefact was computed from (inputs' hashes, model ids, params); the rest (code version, time,
metrics) is informational. An artefact is reused only when its stored key equals the key the
caller would compute now (:func:`matches`). Checkpoints use exactly this through
``slim.recommenders.checkpoint.checkpoint_key`` (its ``config.json`` holds ``{"complete", "key", ...}``);
the per-user evaluation files and anything else use :func:`make_record`. ``code_version`` is
recorded, never matched: a refactor must not invalidate hours of training, and the record still
says which commit produced the numbers.

Writes are atomic (temp file + rename): a killed writer never leaves half a record.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]


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

    ``slim.lm.encoders.TextVectors`` carry that (``.provenance``), and then the key never depends on
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


def sha256_json(obj: Any, chars: int = 16) -> str:
    """Hash of ``obj``'s canonical JSON (sorted keys), first ``chars`` hex digits. Checkpoint
    directories use 10 (``<name>-<key hash>``), records 16."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:chars]


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
