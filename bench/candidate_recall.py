"""How often the grounded Step 3's shortlist holds the user's validation target, by candidate scorer.

The shortlist is what the teacher and student may name in Step 3 (slim.grounding); a shortlist that
never holds what the user did next caps what a grounded rationale can say. Validation targets only,
so the chosen weights are model selection, not test tuning.

    OMP_NUM_THREADS=1 python bench/candidate_recall.py --dataset ml-100k --users 400 --n 20
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slim.data import load_dataset  # noqa: E402
from slim.encoders import TextEncoder, item_text_matrix  # noqa: E402
from slim.grounding import CandidateIndex, train_popularity  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--n", type=int, default=20, help="shortlist size")
    p.add_argument("--weights", default="0,0.05,0.1,0.2", help="popularity weights to compare")
    p.add_argument("--recent", default="5,20")
    args = p.parse_args()
    ds = load_dataset(args.dataset)
    vectors = item_text_matrix(ds, TextEncoder())
    pop = train_popularity(ds)
    users = np.random.default_rng(0).choice(ds.n_users, min(args.users, ds.n_users), replace=False)
    print(f"{ds.name}: {len(users)} users, shortlist of {args.n}; share whose valid target is in it")
    for recent in (int(r) for r in args.recent.split(",")):
        for w in (float(x) for x in args.weights.split(",")):
            index = CandidateIndex.for_dataset(ds, vectors, popularity_weight=w)
            hits = sum(ds.target(u, "valid") in index.candidates(ds.history(u, "valid"), args.n, recent) for u in users)
            print(f"recent {recent:>2}  popularity weight {w:<5}  {100 * hits / len(users):5.1f}%")
    s = np.where(np.arange(len(pop)) > 0, pop, -np.inf)
    hits = 0
    for u in users:
        t = s.copy()
        t[ds.history(u, "valid")] = -np.inf
        hits += ds.target(u, "valid") in np.argpartition(-t, args.n)[:args.n]
    print(f"popularity alone: {100 * hits / len(users):5.1f}%")


if __name__ == "__main__":
    main()
