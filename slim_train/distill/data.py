"""Which teacher rows train the student, how they split into train/validation, and in which order.

The order is a pure function of (seed, epoch) and every process takes its slice of each global
batch, so a resumed or a multi-process run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from slim.lm.rationale_file import read_rows


def read_teacher_rows(files: Sequence[Path], dataset: str) -> list[dict]:
    """Every row of ``files`` in file order (the order the teacher wrote them), through the one JSONL reader."""
    rows: list[dict] = []
    for teacher_file in files:
        if not teacher_file.exists():
            raise SystemExit(f"{teacher_file} does not exist. Fix: python -m slim_train teach --dataset {dataset}")
        rows += read_rows(teacher_file)[0]
    return rows


def row_digest(row: dict) -> str:
    """A short hash of a row's rationale: the checkpoint records it to notice an edited teacher file."""
    return hashlib.sha256(row["rationale"].encode()).hexdigest()[:16]


def select_rows(rows: list[dict], n: int | None, state: dict | None, primary: str = "") -> list[dict]:
    """ok ``valid`` rows in teacher-file order, first ``n``; on resume the exact rows of the checkpoint,
    so a teacher file that grew meanwhile does not change the run.

    File order is the teacher's seeded user order for ``teach --first-users`` (up to the order two pool
    workers finish in); rows of ``teach --eval-users`` follow. Only ``valid`` rows (written from the
    train prefix) are distillation data: the same file also holds the ``test`` rows of the `teacher`
    variant, and one user must map to one row here.
    """
    ok = [r for r in rows if r.get("status") == "ok" and r.get("split", "valid") == "valid"]
    if state is None:
        return ok[:n] if n else ok
    from slim.student.sft import example_key

    by_user = {example_key(r, primary): r for r in ok}
    chosen = []
    for uid, digest in state["data"]["teacher_rows"]:
        r = by_user.get(uid)
        if r is None or row_digest(r) != digest:
            raise SystemExit(f"checkpoint was trained on teacher row {uid} which is missing or changed; "
                             "rerun with --restart")
        chosen.append(r)
    return chosen


def split_examples(examples, fraction: float):
    """(train, validation) by a stable hash of the user id; at least one validation user when asked for."""
    from slim.student.sft import is_validation_user

    val = [e for e in examples if is_validation_user(e.user_id, fraction)]
    if fraction > 0 and not val and len(examples) >= 2:
        val = [min(examples, key=lambda e: hashlib.sha256(e.user_id.encode()).hexdigest())]
    val_ids = {e.user_id for e in val}
    return [e for e in examples if e.user_id not in val_ids], val


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a permutation drawn from (seed, epoch) alone."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def order_digest(order: list[int]) -> str:
    """A short hash of an epoch order; a resume checks it so a changed numpy generator cannot go unseen."""
    return hashlib.sha256(json.dumps(order).encode()).hexdigest()[:16]


def global_batches(order: list[int], per_process: int, world: int) -> list[list[int]]:
    """Global micro-batches of ``per_process * world`` indices; a short last one is filled from the
    start of the order when world > 1 (every process needs a batch, or DDP hangs)."""
    size = per_process * world
    out = [order[i : i + size] for i in range(0, len(order), size)]
    if world > 1 and out and len(out[-1]) < size:
        out[-1] = out[-1] + order[: size - len(out[-1])]
    return out
