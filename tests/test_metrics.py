"""slim.eval.metrics: hand-computed ranks (ties included), torchmetrics cross-check, chance level."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slim.eval.metrics import (
    compute_ranks,
    evaluate,
    item_popularity,
    mean_std,
    novelty_metrics,
    rank_metrics,
    sampled_negatives,
    top_k,
)


def fixed_scorer(table: dict[int, list[float]]):
    """score_fn that returns a fixed row per user (a plain function, not a mock)."""
    def score(users: torch.Tensor, split: str) -> torch.Tensor:
        return torch.tensor([table[int(u)] for u in users], dtype=torch.float32)
    return score


# ---- rank_metrics / mean_std -------------------------------------------------------------

def test_rank_metrics_hand_computed():
    m = rank_metrics([1, 2, 11, 21], ks=(10, 20))
    assert m["HR@10"] == pytest.approx(0.5)
    assert m["HR@20"] == pytest.approx(0.75)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert m["NDCG@20"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(12)) / 4)
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 11 + 1 / 21) / 4)
    assert list(m) == ["HR@10", "HR@20", "NDCG@10", "NDCG@20", "MRR"]


def test_rank_metrics_rejects_bad_ranks():
    with pytest.raises(ValueError):
        rank_metrics([0, 1])
    with pytest.raises(ValueError):
        rank_metrics([])


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0}
    assert mean_std([0.3]) == {"mean": 0.3, "std": 0.0}


# ---- full protocol -------------------------------------------------------------------------

def test_full_filters_history_and_padding(make_dataset):
    ds = make_dataset([[1, 2, 3, 4]], n_items=5)
    #          pad    1      2    3     4    5
    row = [999.0, 100.0, 0.0, 50.0, 5.0, 7.0]
    fn = fixed_scorer({0: row})
    # test: history [1,2,3] removed -> candidates {4, 5}; target 4 (5.0) is behind item 5 (7.0)
    assert compute_ranks(fn, ds, "test", "full").tolist() == [2]
    m = evaluate(fn, ds, "test", "full", ks=(1, 2))
    assert m == pytest.approx({"HR@1": 0.0, "HR@2": 1.0, "NDCG@1": 0.0, "NDCG@2": 1 / math.log2(3), "MRR": 0.5})
    # valid: history [1,2] -> candidates {3,4,5}; target 3 (50.0) beats all (item 1's 100 is filtered)
    assert compute_ranks(fn, ds, "valid", "full").tolist() == [1]


def test_full_ties_rank_target_last(make_dataset):
    ds = make_dataset([[1, 2, 3, 4]], n_items=6)
    fn = fixed_scorer({0: [0.0, 9.0, 9.0, 9.0, 7.0, 7.0, 7.0]})
    # candidates {4,5,6} all 7.0: the target 4 goes after both ties
    assert compute_ranks(fn, ds, "test", "full").tolist() == [3]
    constant = fixed_scorer({0: [1.0] * 7})
    assert compute_ranks(constant, ds, "test", "full").tolist() == [3]
    assert evaluate(constant, ds, "test", "full", ks=(1,))["HR@1"] == 0.0


def test_nan_target_gets_worst_rank(make_dataset):
    ds = make_dataset([[1, 2, 3, 4]], n_items=6)
    fn = fixed_scorer({0: [0.0, 1.0, 1.0, 1.0, float("nan"), 2.0, 0.0]})
    assert compute_ranks(fn, ds, "test", "full").tolist() == [3]
    negs = np.array([[5, 6]])
    assert compute_ranks(fn, ds, "test", "sampled", negatives=negs).tolist() == [3]


def test_score_fn_output_not_modified_and_batching_invariant(make_dataset):
    rng = np.random.default_rng(0)
    seqs = [list(rng.choice(np.arange(1, 31), size=rng.integers(3, 9), replace=False)) for _ in range(37)]
    ds = make_dataset(seqs, n_items=30)
    cached = torch.rand(ds.n_users, 31, generator=torch.Generator().manual_seed(0))
    before = cached.clone()
    fn = lambda users, split: cached[users]  # noqa: E731
    ranks_1 = compute_ranks(fn, ds, "test", "full", batch_size=1)
    ranks_big = compute_ranks(fn, ds, "test", "full", batch_size=512)
    ranks_odd = compute_ranks(fn, ds, "test", "full", batch_size=7)
    assert (ranks_1 == ranks_big).all() and (ranks_1 == ranks_odd).all()
    same_tensor = lambda users, split: cached if len(users) == ds.n_users else cached[users]  # noqa: E731
    compute_ranks(same_tensor, ds, "valid", "full")
    assert torch.equal(cached, before)


def test_users_subset(make_dataset):
    ds = make_dataset([[1, 2, 3], [2, 3, 4], [3, 4, 5]], n_items=6)
    seen = []

    def fn(users, split):
        seen.append(users.tolist())
        return torch.zeros(len(users), 7)
    compute_ranks(fn, ds, "test", "full", users=np.array([2, 0]))
    assert seen == [[2, 0]]


def test_bad_arguments(make_dataset):
    ds = make_dataset([[1, 2, 3]], n_items=4)
    fn = fixed_scorer({0: [0.0] * 5})
    with pytest.raises(ValueError, match="protocol"):
        evaluate(fn, ds, "test", "fancy")
    with pytest.raises(ValueError, match="split"):
        evaluate(fn, ds, "train", "full")
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda u, s: torch.zeros(len(u), 4), ds, "test", "full")
    with pytest.raises(ValueError, match="negatives"):
        evaluate(fn, ds, "test", "sampled", negatives=np.array([[4]] * 3))


# ---- sampled protocol ----------------------------------------------------------------------

def test_sampled_hand_computed(make_dataset):
    ds = make_dataset([[1, 2, 3]], n_items=6)
    negs = np.array([[4, 5, 6]])
    #                      pad  1     2    3    4    5    6
    fn = fixed_scorer({0: [9.0, 9.0, 9.0, 1.0, 2.0, 1.0, 0.0]})
    # item 4 above, item 5 tied (target goes after it), item 6 below -> rank 3
    assert compute_ranks(fn, ds, "test", "sampled", negatives=negs).tolist() == [3]
    # valid target is item 2 (9.0): history items are not candidates under sampled either
    assert compute_ranks(fn, ds, "valid", "sampled", negatives=negs).tolist() == [1]


def test_negatives_deterministic_disjoint_and_cached(make_dataset, tmp_path):
    rng = np.random.default_rng(1)
    seqs = [list(rng.choice(np.arange(1, 301), size=rng.integers(3, 120), replace=False)) for _ in range(200)]
    ds = make_dataset(seqs, n_items=300)
    a = sampled_negatives(ds, n=100, seed=3, cache_dir=tmp_path / "a")
    b = sampled_negatives(ds, n=100, seed=3, cache_dir=tmp_path / "b")  # recomputed, not read
    assert a.shape == (200, 100) and a.dtype == np.int64
    assert np.array_equal(a, b)
    files = list((tmp_path / "a").glob("*.npy"))
    assert len(files) == 1 and np.array_equal(np.load(files[0]), a)
    for u in range(ds.n_users):
        assert len(set(a[u])) == 100
        assert not set(a[u]) & set(ds.sequence(u).tolist())
        assert a[u].min() >= 1 and a[u].max() <= 300
    # a user's negatives depend on (seed, user index, own sequence) only, not on the other users
    first10 = make_dataset(seqs[:10], n_items=300)
    assert np.array_equal(sampled_negatives(first10, n=100, seed=3, cache_dir=tmp_path / "c"), a[:10])
    assert not np.array_equal(a, sampled_negatives(ds, n=100, seed=4, cache_dir=tmp_path / "a"))
    # the cached table is what a second call returns (file edited -> edit visible)
    edited = a.copy()
    edited[0, 0] = edited[0, 1]
    np.save(files[0], edited)
    assert np.array_equal(sampled_negatives(ds, n=100, seed=3, cache_dir=tmp_path / "a"), edited)


def test_negatives_cache_keyed_by_data(make_dataset, tmp_path):
    ds1 = make_dataset([[1, 2, 3]] * 5, n_items=200)
    ds2 = make_dataset([[4, 5, 6]] * 5, n_items=200)
    n1 = sampled_negatives(ds1, cache_dir=tmp_path)
    n2 = sampled_negatives(ds2, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert not set(n2[0]) & {4, 5, 6} and not set(n1[0]) & {1, 2, 3}


def test_negatives_need_enough_unseen_items(make_dataset, tmp_path):
    ds = make_dataset([list(range(1, 11))], n_items=50)
    with pytest.raises(ValueError, match="fewer than 100"):
        sampled_negatives(ds, cache_dir=tmp_path)


def test_sampled_default_negatives_use_cache_dir(make_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("SLIM_CACHE_DIR", str(tmp_path))
    ds = make_dataset([[1, 2, 3], [4, 5, 6]], n_items=150)
    scores = torch.rand(2, 151, generator=torch.Generator().manual_seed(0))
    m1 = evaluate(lambda u, s: scores[u], ds, "test", "sampled")
    m2 = evaluate(lambda u, s: scores[u], ds, "test", "sampled", negatives=sampled_negatives(ds))
    assert m1 == m2
    assert len(list((tmp_path / "negatives").glob("*.npy"))) == 1


def test_random_scorer_sampled_is_at_chance(make_dataset, tmp_path):
    """20k users, uniform random scores: the paper's chance levels (PAPER.md section 7)."""
    n_users, n_items = 20_000, 1_000
    rng = np.random.default_rng(0)
    seqs = [rng.choice(n_items, size=5, replace=False) + 1 for _ in range(n_users)]
    ds = make_dataset(seqs, n_items=n_items)
    gen = torch.Generator().manual_seed(0)
    m = evaluate(lambda u, s: torch.rand(len(u), n_items + 1, generator=gen), ds, "test", "sampled",
                 negatives=sampled_negatives(ds, cache_dir=tmp_path), batch_size=4096)
    gains = 1 / np.log2(np.arange(1, 102) + 1)
    for name, per_rank in {
        "HR@10": (np.arange(1, 102) <= 10).astype(float),
        "HR@20": (np.arange(1, 102) <= 20).astype(float),
        "NDCG@10": np.where(np.arange(1, 102) <= 10, gains, 0.0),
        "MRR": 1 / np.arange(1, 102),
    }.items():
        mean = per_rank.mean()  # the target's rank is uniform on 1..101
        sd = math.sqrt(per_rank.var() / n_users)
        assert abs(m[name] - mean) < 4 * sd, (name, m[name], mean, sd)
    # the expected values are the paper's chance levels
    assert round(100 * (np.arange(1, 102) <= 10).mean(), 2) == 9.90
    assert round(100 * (np.arange(1, 102) <= 20).mean(), 2) == 19.80
    assert round(100 * np.where(np.arange(1, 102) <= 10, gains, 0).mean(), 2) == 4.50


# ---- cross-check against torchmetrics --------------------------------------------------------

def _torchmetrics_reference(cands_per_user: list[np.ndarray], targets: np.ndarray, scores: torch.Tensor) -> dict:
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG

    preds, rel, idx = [], [], []
    for u, cands in enumerate(cands_per_user):
        preds.append(scores[u, torch.as_tensor(cands)])
        rel.append(torch.as_tensor(cands == targets[u]))
        idx.append(torch.full((len(cands),), u))
    preds, rel, idx = torch.cat(preds), torch.cat(rel), torch.cat(idx)
    out = {}
    for k in (10, 20):
        out[f"HR@{k}"] = float(RetrievalHitRate(top_k=k)(preds, rel, indexes=idx))
        out[f"NDCG@{k}"] = float(RetrievalNormalizedDCG(top_k=k)(preds, rel, indexes=idx))
    out["MRR"] = float(RetrievalMRR()(preds, rel, indexes=idx))
    return out


@pytest.mark.parametrize("split", ["valid", "test"])
def test_full_matches_torchmetrics(make_dataset, split):
    rng = np.random.default_rng(2)
    n_items = 60
    seqs = [rng.choice(n_items, size=rng.integers(3, 15), replace=False) + 1 for _ in range(300)]
    ds = make_dataset(seqs, n_items=n_items)
    scores = torch.rand(ds.n_users, n_items + 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = evaluate(lambda u, s: scores[u], ds, split, "full")
    cands = [np.setdiff1d(np.arange(1, n_items + 1), ds.history(u, split)) for u in range(ds.n_users)]
    ref = _torchmetrics_reference(cands, ds.targets(split), scores)
    assert ours == pytest.approx(ref, abs=1e-6)


def test_sampled_matches_torchmetrics(make_dataset, tmp_path):
    rng = np.random.default_rng(3)
    n_items = 400
    seqs = [rng.choice(n_items, size=rng.integers(3, 15), replace=False) + 1 for _ in range(300)]
    ds = make_dataset(seqs, n_items=n_items)
    negs = sampled_negatives(ds, cache_dir=tmp_path)
    scores = torch.rand(ds.n_users, n_items + 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = evaluate(lambda u, s: scores[u], ds, "test", "sampled", negatives=negs)
    targets = ds.targets("test")
    cands = [np.concatenate([[targets[u]], negs[u]]) for u in range(ds.n_users)]
    assert ours == pytest.approx(_torchmetrics_reference(cands, targets, scores), abs=1e-6)


# ---- top-k lists and popularity metrics ------------------------------------------------------

def test_top_k_excludes_history_and_padding(make_dataset):
    ds = make_dataset([[1, 2, 3, 4]], n_items=6)
    fn = fixed_scorer({0: [100.0, 90.0, 80.0, 70.0, 1.0, 3.0, 2.0]})
    assert top_k(fn, ds, "test", k=3).tolist() == [[5, 6, 4]]
    assert top_k(fn, ds, "valid", k=2).tolist() == [[3, 5]]


def test_item_popularity_counts_training_prefix(make_dataset):
    ds = make_dataset([[1, 2, 3, 4], [1, 3, 5]], n_items=5)
    # train prefixes: [1, 2] and [1]
    assert item_popularity(ds).tolist() == [0, 2, 1, 0, 0, 0]


def test_novelty_metrics_hand_computed():
    pop = np.array([0, 3, 1, 0])  # item 3 never seen in training
    d1 = 1 / math.log2(3)
    norm = 1 + d1
    # relevance-aware (Elliot): only the target (item 2, at position 1) counts
    m = novelty_metrics(np.array([[1, 2]]), pop, n_users=4, targets=np.array([2]))
    assert m["EPC@2"] == pytest.approx(d1 * (1 - 1 / 4) / norm)
    assert m["EFD@2"] == pytest.approx(d1 * -math.log2(1 / 4) / norm)
    assert novelty_metrics(np.array([[1, 2]]), pop, n_users=4, targets=np.array([3])) == {"EPC@2": 0.0, "EFD@2": 0.0}
    # relevance-free: every listed item counts; an unseen item gets EPC novelty 1 and the max ICF
    m = novelty_metrics(np.array([[3, 1]]), pop, n_users=4)
    assert m["EPC@2"] == pytest.approx((1 * 1 + d1 * (1 - 3 / 4)) / norm)
    assert m["EFD@2"] == pytest.approx((-math.log2(1 / 4) + d1 * -math.log2(3 / 4)) / norm)
