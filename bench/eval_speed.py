"""How much does `slim.eval.metrics.evaluate` cost on top of scoring?

Scores all 50,546 users of amazon-video-games against all 16,859 items with a random-embedding
dot-product scorer (dim 64), then reports the time of ``evaluate(..., protocol="full")`` as a
ratio to the bare work any evaluation must do: the score matmul + a top-k over the same users
and batches, measured in the same run (goal: <= 3x). A ratio, not seconds, because the box is
shared and absolute times drift.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/eval_speed.py [--repeats 3] [--threads 1]

``--synthetic-users N --synthetic-items M`` replaces the dataset by N random sequences over M items
(length ``--seq-len``): the scale a cluster run reaches (100k-1M users x 50k items), scored in
batches of ``--batch-size`` users, so memory stays bounded by one [batch, M] score matrix. It prints
the seconds per 100k users under full ranking.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from slim.data.dataset import load_dataset
from slim.eval.metrics import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="amazon-video-games")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="best of N for each side")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--synthetic-users", type=int, default=0, help="N random users instead of --dataset")
    ap.add_argument("--synthetic-items", type=int, default=50_000)
    ap.add_argument("--seq-len", type=int, default=20, help="items per synthetic user")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = synthetic(args.synthetic_users, args.synthetic_items, args.seq_len) if args.synthetic_users \
        else load_dataset(args.dataset)
    g = torch.Generator().manual_seed(0)
    user_emb = torch.randn(ds.n_users, args.dim, generator=g)
    item_emb = torch.randn(ds.n_items + 1, args.dim, generator=g)
    users = np.arange(ds.n_users)

    def score(u: torch.Tensor, split: str) -> torch.Tensor:
        return user_emb[u] @ item_emb.T

    def bare() -> None:
        with torch.no_grad():
            for lo in range(0, ds.n_users, args.batch_size):
                u = torch.as_tensor(users[lo : lo + args.batch_size])
                score(u, "test").topk(20, dim=1)

    def full() -> dict:
        return evaluate(score, ds, "test", "full", batch_size=args.batch_size)

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    bare()  # warm-up (allocator, kernels)
    t_bare, t_full = best(bare), best(full)
    metrics = full()
    print(f"dataset {ds.name}: {ds.n_users:,} users x {ds.n_items:,} items, dim {args.dim}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} thread(s), best of {args.repeats}")
    print(f"bare matmul + topk(20):   {t_bare:7.2f} s")
    print(f"evaluate(full):           {t_full:7.2f} s   (HR@10 {metrics['HR@10']:.4f}, random scorer)")
    ratio = t_full / t_bare
    print(f"ratio evaluate/bare:      {ratio:7.2f}x   goal <= 3x: {'PASS' if ratio <= 3 else 'FAIL'}")
    print(f"evaluate(full) per 100k users: {t_full * 100_000 / ds.n_users:7.2f} s")


def synthetic(n_users: int, n_items: int, seq_len: int):
    """N users x ``seq_len`` uniform items over ``n_items``: only the shapes matter for the timing."""
    import pandas as pd

    from slim.data.dataset import SequentialDataset

    rng = np.random.default_rng(0)
    values = rng.integers(1, n_items + 1, size=n_users * seq_len).astype(np.int64)
    offsets = np.arange(0, n_users * seq_len + 1, seq_len, dtype=np.int64)
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1).astype(str),
                          "title": [f"item {i}" for i in range(1, n_items + 1)]},
                         index=pd.RangeIndex(1, n_items + 1, name="item_idx"))
    items["text"] = items["title"]
    return SequentialDataset("synthetic", items, np.arange(n_users).astype(str), values, offsets)


if __name__ == "__main__":
    main()
