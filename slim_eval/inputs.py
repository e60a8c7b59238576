"""Text inputs of the fitted models: item-text vectors and per-split rationale vectors.

Rationale rows come from ``rationales/<teacher|student>.jsonl`` (``slim.lm.rationales`` format, one row
per (user_id, split)). The valid row was written from seq[:-2] and the test row from seq[:-1], so
``user_text["valid"]`` trains and selects a model and ``user_text["test"]`` scores the test target:
neither ever saw its own target.

Users without an ``ok`` row get a zero vector (the fusion layer then sees only the sequence, the
matcher scores nothing), and the coverage is reported: slim_eval refuses a variant whose coverage
is below ``--min-coverage``, because a "SLIM" row computed mostly from zero vectors would be a lie.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slim.data.dataset import SequentialDataset
from slim.lm.encoders import TextVectors
from slim.lm.rationales import rationale_text  # noqa: F401  (re-exported: the one definition)

SPLITS = ("valid", "test")


@dataclass
class UserText:
    vectors: dict[str, np.ndarray]  # split -> [n_users, D]
    coverage: dict[str, float]  # split -> fraction of users with a vector
    source: str


def load_rationale_rows(path: Path) -> dict[tuple[str, str], dict]:
    """(user_id, split) -> row; via RationaleStore, the one reader of rationale files."""
    from slim.lm.rationale_file import RationaleStore

    return RationaleStore(path).rows


_cleaned_cache: tuple[SequentialDataset, tuple, dict] | None = None


def _cleaned_steps(dataset: SequentialDataset, path: Path, rows: dict) -> dict[tuple[str, str], list[str] | None]:
    """(user_id, split) -> steps with Step 3 post-filtered (slim.lm.step3_filter), once per file and dataset.

    Why cached: the fuzzy catalogue matching is the slow part (~11 s for ML-100K's 1,886 rows), and
    both the coverage check and the encoding of every ``*-clean`` variant need the same result. One
    slot is enough: a run cleans only the student file. The key includes the file's mtime and size,
    so a file that grew is cleaned again.
    """
    global _cleaned_cache
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    if _cleaned_cache is not None and _cleaned_cache[0] is dataset and _cleaned_cache[1] == key:
        return _cleaned_cache[2]
    cleaned = _clean_rows(dataset, rows)
    _cleaned_cache = (dataset, key, cleaned)
    return cleaned


def _clean_rows(dataset: SequentialDataset, rows: dict) -> dict[tuple[str, str], list[str] | None]:
    from slim.lm.titles import TitleMatcher
    from slim.lm.step3_filter import clean_steps

    matcher = TitleMatcher.for_dataset(dataset, "rationale")
    index = dataset.user_index
    return {k: clean_steps(row, index[k[0]], dataset, matcher) for k, row in rows.items() if k[0] in index}


def _texts_for(dataset: SequentialDataset, rows: dict, split: str, step: int | None,
               clean_step3: bool = False, cleaned: dict | None = None) -> list[tuple[int, str]]:
    """(user index, text) for every user with a usable rationale on ``split``.

    ``clean_step3``: Step 3 is post-filtered first (catalogue items not in the history the rationale
    was written from); a user whose filtered text is empty has no vector. ``cleaned``: those filtered
    steps already computed (:func:`_cleaned_steps`), else they are computed here.
    """
    if clean_step3 and cleaned is None:
        cleaned = _clean_rows(dataset, rows)
    out = []
    for u, uid in enumerate(dataset.user_ids):
        row = rows.get((str(uid), split))
        if not row:
            continue
        if clean_step3:
            steps = cleaned.get((str(uid), split))
            if steps is None:  # not parsed into 3 steps: nothing to filter, and raw text would bypass it
                continue
            row = {**row, "steps": steps}
        t = rationale_text(row, step)
        if t:
            out.append((u, t))
    return out


def user_text(dataset: SequentialDataset, path: Path, encoder, step: int | None = None,
              clean_step3: bool = False) -> UserText:
    """Encode each user's rationale per split (``encoder``: slim.lm.encoders.TextEncoder)."""
    rows = load_rationale_rows(path)
    cleaned = _cleaned_steps(dataset, path, rows) if clean_step3 else None
    vectors, coverage = {}, {}
    for split in SPLITS:
        pairs = _texts_for(dataset, rows, split, step, clean_step3, cleaned)
        where = [u for u, _ in pairs]
        texts = [t for _, t in pairs]
        dim = None
        if texts:
            vecs = encoder.encode(texts)
            dim = vecs.shape[1]
        else:
            vecs = np.zeros((0, 0), dtype=np.float32)
        out = np.zeros((dataset.n_users, dim or 384), dtype=np.float32)
        if where:
            out[np.asarray(where)] = vecs
        # named by the texts (user id + rationale), not the float bits: see slim.lm.encoders.TextVectors
        per_user: list[str | None] = [None] * dataset.n_users
        for u, t in pairs:
            per_user[u] = f"{dataset.user_ids[u]}\t{t}"
        vectors[split] = TextVectors(out, encoder.model_id, per_user)
        coverage[split] = len(where) / max(dataset.n_users, 1)
    return UserText(vectors, coverage, str(path))


def rationale_coverage(dataset: SequentialDataset, path: Path, step: int | None = None,
                       clean_step3: bool = False) -> dict[str, float]:
    """Per-split fraction of users with a usable rationale, without encoding anything."""
    if not Path(path).exists():
        return {s: 0.0 for s in SPLITS}
    rows = load_rationale_rows(path)
    cleaned = _cleaned_steps(dataset, path, rows) if clean_step3 else None
    return {s: len(_texts_for(dataset, rows, s, step, clean_step3, cleaned)) / max(dataset.n_users, 1) for s in SPLITS}


def item_text(dataset: SequentialDataset, encoder) -> np.ndarray:
    """``[n_items + 1, D]`` item-text vectors (row 0 zeros), cached by the encoder."""
    from slim.lm.encoders import item_text_matrix

    return item_text_matrix(dataset, encoder)
