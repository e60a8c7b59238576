"""How often the grounded Step 3's shortlist holds the user's validation target, by candidate scorer.

The shortlist is what the teacher and student may name in Step 3 (slim.lm.grounding); a shortlist that
never holds what the user did next caps what a grounded rationale can say. Validation targets only,
so the chosen weights are model selection, not test tuning.

    OMP_NUM_THREADS=1 python bench/candidate_recall.py --dataset ml-100k --users 400 --n 20,50,200
    OMP_NUM_THREADS=1 python bench/candidate_recall.py --dataset ml-100k --n 20,3 --recent 5 --hubness 0,0.5,1

Beside recall it prints how concentrated the shortlists are across users (distinct items over all
shortlist slots, and the share of the slots the three most frequent items take): a popularity prior
raises recall and concentrates what every user is offered, which is what Step 3 can name.
"""
from __future__ import annotations

import argparse

import numpy as np


from slim.data.dataset import load_dataset
from slim.lm.encoders import TextEncoder, item_text_matrix
from slim.lm.grounding import CandidateIndex, train_popularity


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--n", default="20", help="shortlist size(s), comma-separated")
    p.add_argument("--weights", default="0,0.05,0.1,0.2", help="popularity weights to compare")
    p.add_argument("--recent", default="5,20")
    p.add_argument("--hubness", default="0", help="hubness weights to compare (slim.lm.grounding.hubness)")
    args = p.parse_args()
    ds = load_dataset(args.dataset)
    vectors = item_text_matrix(ds, TextEncoder())
    pop = train_popularity(ds)
    users = np.random.default_rng(0).choice(ds.n_users, min(args.users, ds.n_users), replace=False)
    sizes = [int(n) for n in args.n.split(",")]
    print(f"{ds.name}: {len(users)} users; share whose valid target is in the shortlist; distinct items / slots; "
          "share of slots the 3 most offered items take")
    for n in sizes:
        for recent in (int(r) for r in args.recent.split(",")):
            for w, h in ((float(x), float(y)) for y in args.hubness.split(",") for x in args.weights.split(",")):
                index = CandidateIndex.for_dataset(ds, vectors, popularity_weight=w, hubness_weight=h, recent=recent)
                lists = [index.candidates(ds.history(u, "valid"), n, recent) for u in users]
                hits = sum(ds.target(u, "valid") in c for u, c in zip(users, lists))
                counts = np.bincount(np.concatenate(lists), minlength=ds.n_items + 1)
                slots = counts.sum()
                top3 = np.sort(counts)[-3:].sum() / slots
                print(f"N {n:>3}  recent {recent:>2}  popularity weight {w:<5}  hubness {h:<4}  recall {100 * hits / len(users):5.1f}%  "
                      f"distinct {int((counts > 0).sum()):>5} / {int(slots)}  top-3 {100 * top3:4.1f}%")
    args.n = sizes[0]
    s = np.where(np.arange(len(pop)) > 0, pop, -np.inf)
    hits = 0
    for u in users:
        t = s.copy()
        t[ds.history(u, "valid")] = -np.inf
        hits += ds.target(u, "valid") in np.argpartition(-t, args.n)[:args.n]
    print(f"popularity alone: {100 * hits / len(users):5.1f}%")


if __name__ == "__main__":
    main()
