"""Ranking metrics for leave-one-out sequential recommendation: HR@K, NDCG@K, MRR, EPC/EFD.

Two protocols, because they answer different questions:

``full``
    Rank the target against *every* item. The items of ``history(u, split)`` are removed from
    the candidates (a user is never recommended what they already consumed, and such items
    would otherwise crowd the top of the list); the padding column 0 is never a candidate.
    This is the protocol recent work (and RecBole) uses; the paper does not report it.
``sampled``
    Rank the target against 100 uniform negatives the user never interacted with (anywhere in
    their sequence), as in SASRec (Kang & McAuley 2018) and SLIM's tables. The negatives are
    drawn with a per-user seed (``np.random.default_rng([seed, user])``) and cached on disk, so
    every model and every run sees exactly the same 101 candidates. Chance level: HR@10 =
    10/101 = 0.0990, HR@20 = 0.1980, NDCG@10 = 0.0450.

Tie rule (both protocols): the target is ranked *after* every candidate whose score equals it
(pessimistic). A model that gives every item the same score therefore gets the worst rank, not
the best, and a NaN score for the target also gets the worst rank. The ranks are computed by
counting (``rank = #candidates whose score is not strictly below the target's``), never by
sorting, so one batch costs a single comparison pass over the score matrix.

All metrics are fractions in [0, 1]; multiply by 100 to compare with the paper.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
import torch

from slim.data.dataset import REPO_ROOT, SequentialDataset
from slim.data.split import Split, history_end

Protocol = Literal["full", "sampled"]
ScoreFn = Callable[[torch.Tensor, str], torch.Tensor]
PROTOCOLS = ("full", "sampled")
DEFAULT_KS = (10, 20)


# ---------------------------------------------------------------------------------------
# ranks -> metrics
# ---------------------------------------------------------------------------------------

def user_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-user HR@K / NDCG@K / MRR from 1-based ranks (one relevant item, so IDCG = 1 and
    NDCG@K = 1/log2(rank+1) when rank <= K, else 0); :func:`rank_metrics` is its mean."""
    r = np.asarray(ranks, dtype=np.float64)
    if metric == "MRR":
        return 1.0 / r
    kind, k = metric.split("@")
    hit = r <= int(k)
    return hit.astype(np.float64) if kind == "HR" else np.where(hit, 1.0 / np.log2(r + 1.0), 0.0)


def rank_metrics(ranks: np.ndarray | torch.Tensor | Sequence[int], ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean HR@K, NDCG@K (for each K) and MRR from 1-based ranks of the single relevant item."""
    r = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no ranks to average (empty user set)")
    if (r < 1).any():
        raise ValueError("ranks are 1-based; got a rank < 1")
    names = [f"{kind}@{k}" for k in ks for kind in ("HR", "NDCG")] + ["MRR"]
    out = {name: float(user_metric(r, name).mean()) for name in names}
    return dict(sorted(out.items(), key=_metric_order))


def _metric_order(kv: tuple[str, float]) -> tuple[int, int]:
    name = kv[0]
    if name == "MRR":
        return (2, 0)
    kind, k = name.split("@")
    return (0 if kind == "HR" else 1, int(k))


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1) over seeds; std is 0.0 for a single value.

    ddof=1 because the 5 seeds of a report are a sample of possible runs, not the population.
    """
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_std of an empty sequence")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


# ---------------------------------------------------------------------------------------
# sampled-protocol negatives
# ---------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$SLIM_CACHE_DIR/negatives`` or ``<repo>/.cache/negatives`` (git-ignored)."""
    base = os.environ.get("SLIM_CACHE_DIR")
    return (Path(base) if base else REPO_ROOT / ".cache") / "negatives"


def dataset_fingerprint(dataset: SequentialDataset) -> str:
    """Hash of the sequences and catalogue size: a cached negatives file is valid only for them."""
    h = hashlib.sha256()
    h.update(np.int64(dataset.n_items).tobytes())
    h.update(np.ascontiguousarray(dataset.offsets, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(dataset.values, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _user_negatives(rng: np.random.Generator, seen: np.ndarray, n_items: int, n: int) -> np.ndarray:
    """``n`` distinct items from 1..n_items, none in ``seen``, in the order they were drawn.

    Rejection sampling in plain Python: for ~100 items per user a set beats numpy's per-call
    overhead (np.isin + np.unique cost ~4x more here).
    """
    taken = set(seen.tolist())
    out: list[int] = []
    accept = max((n_items - len(taken)) / n_items, 0.01)
    while len(out) < n:
        for x in rng.integers(1, n_items + 1, size=int(n / accept) + 16).tolist():
            if x not in taken:
                taken.add(x)
                out.append(x)
                if len(out) == n:
                    break
    return np.asarray(out, dtype=np.int64)


def sampled_negatives(
    dataset: SequentialDataset,
    n: int = 100,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """``[n_users, n]`` int64 negatives: uniform, distinct, never an item of the user's sequence.

    User ``u`` draws from ``np.random.default_rng([seed, u])``, so a user's negatives do not depend
    on which other users exist or on the order they are processed. The table is saved as
    ``<cache_dir>/<name>-<fingerprint>-n<n>-seed<seed>.npy`` and reloaded when the dataset's
    fingerprint matches (default dir: :func:`default_cache_dir`).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset.name)[:60]
    path = cache / f"{safe_name}-{dataset_fingerprint(dataset)}-n{n}-seed{seed}.npy"
    if path.exists():
        neg = np.load(path, allow_pickle=False)
        if neg.shape == (dataset.n_users, n):
            return neg
    too_long = np.flatnonzero(dataset.n_items - dataset.lengths < n)
    if len(too_long):
        raise ValueError(
            f"user {int(too_long[0])} has interacted with {int(dataset.lengths[too_long[0]])} of "
            f"{dataset.n_items} items: fewer than {n} unseen items remain to sample negatives from"
        )
    neg = np.empty((dataset.n_users, n), dtype=np.int64)
    for u in range(dataset.n_users):
        rng = np.random.default_rng([seed, u])
        neg[u] = _user_negatives(rng, dataset.sequence(u), dataset.n_items, n)
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".npy.tmp")  # atomic: readers never see half a file
    with os.fdopen(fd, "wb") as f:
        np.save(f, neg, allow_pickle=False)
    os.replace(tmp, path)
    return neg


# ---------------------------------------------------------------------------------------
# scoring users -> ranks
# ---------------------------------------------------------------------------------------

def _history_index(dataset: SequentialDataset, users: np.ndarray, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Flat (row-in-batch, item_idx) pairs of every history item of ``users`` (no Python loop)."""
    start = dataset.offsets[users]
    end = history_end(dataset.offsets, users, split)
    lengths = end - start
    rows = np.repeat(np.arange(len(users)), lengths)
    pos = np.repeat(start - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
    return rows, dataset.values[pos]


def _check_args(dataset: SequentialDataset, split: str, protocol: str, users) -> np.ndarray:
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    users = np.arange(dataset.n_users) if users is None else np.asarray(users, dtype=np.int64)
    if users.ndim != 1 or (len(users) and (users.min() < 0 or users.max() >= dataset.n_users)):
        raise ValueError(f"users must be a 1-D array of user indices in [0, {dataset.n_users})")
    return users


def _scores(score_fn: ScoreFn, dataset: SequentialDataset, users: np.ndarray, split: Split) -> torch.Tensor:
    with torch.no_grad():
        scores = score_fn(torch.as_tensor(users, dtype=torch.long), split)
    if scores.shape != (len(users), dataset.n_items + 1):
        raise ValueError(
            f"score_fn returned shape {tuple(scores.shape)}; expected [{len(users)}, {dataset.n_items + 1}]"
            " (one column per item plus the padding column 0)"
        )
    return scores


def compute_ranks(
    score_fn: ScoreFn,
    dataset: SequentialDataset,
    split: Split,
    protocol: Protocol,
    users: np.ndarray | None = None,
    negatives: np.ndarray | None = None,
    batch_size: int = 512,
) -> np.ndarray:
    """1-based pessimistic rank of each user's ``split`` target (see the module docstring).

    ``score_fn`` is called once per batch and its output is never modified in place (a model may
    return a cached tensor). ``negatives`` is the full ``[n_users, n]`` table of
    :func:`sampled_negatives`; when omitted under ``sampled`` it is built with the defaults.
    """
    users = _check_args(dataset, split, protocol, users)
    if protocol == "sampled":
        if negatives is None:
            negatives = sampled_negatives(dataset)
        if negatives.ndim != 2 or negatives.shape[0] != dataset.n_users:
            raise ValueError(f"negatives must have shape [n_users={dataset.n_users}, n]; got {negatives.shape}")
    all_targets = dataset.targets(split)
    ranks = np.empty(len(users), dtype=np.int64)
    for lo in range(0, len(users), batch_size):
        batch = users[lo : lo + batch_size]
        scores = _scores(score_fn, dataset, batch, split)
        target = torch.as_tensor(all_targets[batch], device=scores.device)
        t = scores.gather(1, target[:, None])  # [B, 1]
        if protocol == "sampled":
            neg = torch.as_tensor(negatives[batch], device=scores.device)
            # a negative counts against the target unless strictly below it (NaN counts too)
            ahead = (~(scores.gather(1, neg) < t)).sum(1)
            ranks[lo : lo + len(batch)] = (ahead + 1).cpu().numpy()
            continue
        # full: candidates = items 1..n minus history. rank = |candidates| - #(candidates < t).
        below_all = (scores[:, 1:] < t).sum(1).cpu().numpy()
        rows, items = _history_index(dataset, batch, split)
        keep = items != all_targets[batch][rows]  # the target is always a candidate
        rows, items = rows[keep], items[keep]
        rows_t = torch.as_tensor(rows, device=scores.device)
        hist_scores = scores[rows_t, torch.as_tensor(items, device=scores.device)]
        hist_below = np.bincount(rows[(hist_scores < t[rows_t, 0]).cpu().numpy()], minlength=len(batch))
        n_hist = np.bincount(rows, minlength=len(batch))
        ranks[lo : lo + len(batch)] = (dataset.n_items - n_hist) - (below_all - hist_below)
    return ranks


def evaluate(
    score_fn: ScoreFn,
    dataset: SequentialDataset,
    split: Split,
    protocol: Protocol,
    ks: Iterable[int] = DEFAULT_KS,
    users: np.ndarray | None = None,
    negatives: np.ndarray | None = None,
    batch_size: int = 512,
) -> dict[str, float]:
    """HR@K, NDCG@K and MRR (fractions) of ``score_fn`` on the ``split`` targets of ``users``.

    score_fn(user_idx LongTensor[B], split) -> FloatTensor[B, n_items + 1]; column 0 (padding)
    is ignored. Under ``full`` the user's history items are excluded from the candidates; under
    ``sampled`` the candidates are the target + ``negatives[u]``. Ties rank the target last.
    """
    ranks = compute_ranks(score_fn, dataset, split, protocol, users, negatives, batch_size)
    return rank_metrics(ranks, ks)


def top_k(
    score_fn: ScoreFn,
    dataset: SequentialDataset,
    split: Split,
    k: int = 10,
    users: np.ndarray | None = None,
    batch_size: int = 512,
) -> np.ndarray:
    """``[len(users), k]`` item indices of each user's top-k list (history and padding excluded).

    This is the recommendation list the popularity metrics (EPC/EFD) and the demo look at.
    """
    users = _check_args(dataset, split, "full", users)
    out = np.empty((len(users), k), dtype=np.int64)
    for lo in range(0, len(users), batch_size):
        batch = users[lo : lo + batch_size]
        scores = _scores(score_fn, dataset, batch, split).clone()  # clone: we mask in place
        rows, items = _history_index(dataset, batch, split)
        scores[:, 0] = -torch.inf
        scores[torch.as_tensor(rows, device=scores.device), torch.as_tensor(items, device=scores.device)] = -torch.inf
        out[lo : lo + len(batch)] = scores.topk(k, dim=1).indices.cpu().numpy()
    return out


# ---------------------------------------------------------------------------------------
# popularity bias: EPC / EFD (paper Table 8)
# ---------------------------------------------------------------------------------------

def item_popularity(dataset: SequentialDataset) -> np.ndarray:
    """``[n_items + 1]`` number of users whose *training prefix* (seq[:-2]) contains each item.

    Training-set popularity is what the paper's Fig. 6/7 and the Elliot metrics are built on.
    """
    rows, items = _history_index(dataset, np.arange(dataset.n_users), "valid")
    return np.bincount(items, minlength=dataset.n_items + 1).astype(np.int64)


def novelty_metrics(
    topk_items: np.ndarray,
    item_popularity: np.ndarray,
    n_users: int,
    targets: np.ndarray | None = None,
) -> dict[str, float]:
    """EPC@K and EFD@K of top-K lists, as implemented in Elliot (Anelli et al., SIGIR 2021).

    Definitions from Vargas & Castells, "Rank and relevance in novelty and diversity metrics
    for recommender systems", RecSys 2011 (doi:10.1145/2043932.2043955), with Elliot's choices
    (``elliot/evaluation/metrics/novelty/{EPC/epc.py,EFD/efd.py}``), which the SLIM paper cites:

    * per user: ``sum_r disc(r) * rel(u, i_r) * nov(i_r) / sum_r disc(r)``,
      ``disc(r) = 1 / log2(r + 2)`` for 0-based position r; then the mean over users;
    * EPC novelty ``nov(i) = 1 - pop(i) / n_users`` (expected popularity complement; an item
      never seen in training gets 1);
    * EFD novelty ``nov(i) = -log2(pop(i) / sum_j pop(j))`` (expected free discovery, the ICF
      of the item; an item never seen in training gets the maximum, that of the rarest seen item).

    ``rel`` is relevance: with ``targets`` (leave-one-out, Elliot's default and the paper's
    Table 8, where SASRec's EPC@10 on Games is ~0.05) only the held-out item counts. Without
    ``targets`` every recommended item counts as relevant, which measures the novelty of the
    lists alone (the relevance-free variant of Vargas & Castells).

    ``topk_items``: ``[U, K]`` item indices; ``item_popularity``: ``[n_items + 1]`` training
    counts (see :func:`item_popularity`); ``n_users``: number of training users.
    """
    topk = np.asarray(topk_items, dtype=np.int64)
    pop = np.asarray(item_popularity, dtype=np.float64)
    k = topk.shape[1]
    disc = 1.0 / np.log2(np.arange(k) + 2.0)
    rel = np.ones(topk.shape) if targets is None else (topk == np.asarray(targets)[:, None]).astype(np.float64)
    seen = pop > 0
    if not seen[1:].any():
        raise ValueError("item_popularity is all zero: no training interactions")
    epc_nov = np.where(seen, 1.0 - pop / n_users, 1.0)
    total = pop[1:].sum()
    icf = np.full_like(pop, -np.log2(pop[seen].min() / total))
    icf[seen] = -np.log2(pop[seen] / total)
    norm = disc.sum()
    return {
        f"EPC@{k}": float(((rel * disc * epc_nov[topk]).sum(1) / norm).mean()),
        f"EFD@{k}": float(((rel * disc * icf[topk]).sum(1) / norm).mean()),
    }
