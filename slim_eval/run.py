"""Fit what is missing, evaluate each fitted model once per (split, protocol), keep per-user results.

Model selection happens inside ``slim.recommenders.train.fit`` (early stopping on validation
NDCG@10, full ranking). Here a finished checkpoint is only *scored*: one pass over the requested
split per protocol, stored as per-user ranks in ``eval/<split>/<run>-<protocol>.npz`` together
with the checkpoint it came from. A rerun whose checkpoint is unchanged reads that file instead of
scoring again, so the test split of a fitted model is computed exactly once.

The .npz also holds what the report's per-user analyses need without refitting: history lengths (user
sparsity groups) and, under ``full``, each user's top-10 list with its EPC@10/EFD@10.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slim.artifacts.layout import RunLayout
from slim.artifacts.provenance import load_npz, make_record, matches, save_npz
from slim.data.dataset import SequentialDataset
from slim.data.split import held_out
from slim.eval.metrics import compute_ranks, dataset_fingerprint, item_popularity, novelty_metrics, rank_metrics, top_k

N_NEGATIVES, NEGATIVES_SEED, TOPK = 100, 0, 10


@dataclass
class SeedResult:
    """One fitted model (backbone, variant, seed) measured on one split under one protocol."""

    backbone: str
    variant: str
    seed: int
    protocol: str
    metrics: dict[str, float]
    best_epoch: int
    eval_file: Path
    reused: bool = False
    valid_ndcg10: float | None = None  # the fit's validation NDCG@10 (full ranking): what selects models


def eval_key(fitted, dataset: SequentialDataset, split: str, protocol: str) -> dict:
    """What the per-user ranks depend on: the exact checkpoint, the users, the candidates."""
    key = {
        "checkpoint": fitted.checkpoint_dir.name,
        "checkpoint_created": fitted.record.get("created"),
        "dataset": dataset.name,
        "dataset_fingerprint": dataset_fingerprint(dataset),
        "split": split,
        "protocol": protocol,
    }
    # fp16 weights (shipped by slim_train fits export) rank a few ties differently from the fp32
    # run that made them: their measurements are their own (fp32 keys stay as they were)
    if fitted.record.get("weights_dtype", "float32") != "float32":
        key["weights_dtype"] = fitted.record["weights_dtype"]
    if protocol == "sampled":
        key["negatives"] = {"n": N_NEGATIVES, "seed": NEGATIVES_SEED, "rule": "uniform, not in the user's sequence"}
    return key


def history_lengths(dataset: SequentialDataset, split: str) -> np.ndarray:
    return dataset.lengths - held_out(split)


def evaluate_fitted(
    fitted,
    dataset: SequentialDataset,
    split: str,
    protocol: str,
    layout: RunLayout,
    run_name: str,
    negatives: np.ndarray | None = None,
    popularity: np.ndarray | None = None,
) -> tuple[dict[str, float], Path, bool]:
    """(metrics, eval file, reused?) of one fitted model; scores only when no matching file exists."""
    path = layout.eval_file(split, run_name, protocol)
    key = eval_key(fitted, dataset, split, protocol)
    cached = load_npz(path)
    if cached is not None and matches(cached[0], key):
        return cached[0]["metrics"], path, True
    t0 = time.perf_counter()
    ranks = compute_ranks(fitted.score, dataset, split, protocol, negatives=negatives)
    metrics = rank_metrics(ranks)
    arrays: dict[str, np.ndarray] = {
        "ranks": ranks.astype(np.int64),
        "user_ids": dataset.user_ids.astype(str),
        "history_len": history_lengths(dataset, split).astype(np.int64),
        "targets": dataset.targets(split).astype(np.int64),
    }
    if protocol == "full":
        topk = top_k(fitted.score, dataset, split, k=TOPK)
        pop = popularity if popularity is not None else item_popularity(dataset)
        metrics.update(novelty_metrics(topk, pop, dataset.n_users, targets=dataset.targets(split)))
        arrays["topk"] = topk.astype(np.int64)
    record = make_record(key, metrics=metrics, best_epoch=fitted.best_epoch,
                         eval_seconds=round(time.perf_counter() - t0, 3))
    save_npz(path, record, **arrays)
    return metrics, path, False
