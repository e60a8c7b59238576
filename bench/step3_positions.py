"""Where in its shortlist each grounded Step-3 pick sits, and how concentrated picks are against slots.

A grounded Step 3 chooses K items from a shortlist shown in the prompt (slim.lm.grounding). When the
three most named items take far more of the picks than of the shortlist slots, the question is why:
the model reading the list top-down (position bias, which a reordered list would fix) or the model
favouring titles it knows (which only a student distilled on more diverse targets fixes). This reads
a rationale file, rebuilds each row's shortlist from the grounding config the row records, and prints
the share of picks at each list position and the top-3 share of picks beside that of list slots.

    OMP_NUM_THREADS=1 python bench/step3_positions.py --dataset ml-100k \
        --rationales assets/rationales/ml-100k/student.jsonl
"""
from __future__ import annotations

import argparse
from collections import Counter

from slim.data.dataset import load_dataset
from slim.lm.encoders import TextEncoder, item_text_matrix
from slim.lm.grounding import CandidateIndex, GroundingConfig
from slim.lm.rationale_file import read_rationales


def top3_share(counts: Counter) -> float:
    """The share of all counted entries the three most frequent take."""
    return sum(v for _, v in counts.most_common(3)) / max(sum(counts.values()), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--rationales", required=True, help="a rationale file whose rows have step3_items and grounding")
    p.add_argument("--limit", type=int, default=None, help="read only the first N grounded rows")
    args = p.parse_args()
    ds = load_dataset(args.dataset)
    rows = [r for r in read_rationales(args.rationales) if r.get("grounding") and r.get("step3_items")]
    rows = rows[: args.limit]
    if not rows:
        raise SystemExit(f"{args.rationales}: no grounded rows (step3_items + grounding) to measure")
    vectors = item_text_matrix(ds, TextEncoder())
    indexes: dict[str, tuple[GroundingConfig, CandidateIndex]] = {}
    user_index = {str(u): i for i, u in enumerate(ds.user_ids)}
    at: Counter = Counter()          # (pick number, list position) -> picks
    picks: Counter = Counter()       # item -> times named in Step 3
    slots: Counter = Counter()       # item -> times offered in a shortlist
    outside = 0
    for row in rows:
        record = {k: v for k, v in row["grounding"].items() if k != "candidates"}
        key = repr(sorted(record.items()))
        if key not in indexes:
            cfg = GroundingConfig(**record)
            indexes[key] = cfg, CandidateIndex.for_config(ds, vectors, cfg)
        cfg, index = indexes[key]
        shortlist = index.candidates(ds.history(user_index[row["user_id"]], row["split"]), cfg.n_candidates,
                                     cfg.recent, cfg.exclude_editions)
        slots.update(shortlist)
        picks.update(row["step3_items"])
        for k, item in enumerate(row["step3_items"]):
            if item in shortlist:
                at[(k, shortlist.index(item))] += 1
            else:
                outside += 1
    n = max(cfg.n_candidates for cfg, _ in indexes.values())
    print(f"{args.rationales}: {len(rows)} grounded rows; picks outside the rebuilt shortlist: {outside}")
    print("share of picks at each shortlist position (%), position 1 first:")
    for k in range(max(len(r["step3_items"]) for r in rows)):
        total = sum(v for (kk, _), v in at.items() if kk == k) or 1
        print(f"  pick {k + 1}: " + " ".join(f"{100 * at[(k, j)] / total:.0f}" for j in range(n)))
    total = sum(at.values()) or 1
    print("  all:    " + " ".join(f"{100 * sum(at[(k, j)] for k in range(10)) / total:.0f}" for j in range(n)))
    print(f"top-3 share: of Step-3 picks {100 * top3_share(picks):.1f}%, of shortlist slots "
          f"{100 * top3_share(slots):.1f}%")
    for item, count in picks.most_common(3):
        print(f"  {ds.items['title'].get(item, item)}: named {count} times, offered {slots[item]} times")


if __name__ == "__main__":
    main()
