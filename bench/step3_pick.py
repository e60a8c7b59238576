"""Which way of choosing the grounded Step 3's items measures best, on validation targets only.

The student writes Step 1 freely, Step 2 freely or grounded (slim.lm.grounded_step2); its K Step-3
items come from the same 20-item shortlist (slim.lm.grounding) by one of three picks
(GroundingConfig.pick): greedy decoding under a grammar, the K titles of highest likelihood, or
likelihood minus the likelihood after an empty history (PMI). Users are a seeded sample of those no
shipped student was distilled on; only their validation split is generated and measured, so choosing
the default here is model selection.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python bench/step3_pick.py --dataset ml-100k --users 80 \
        --runs likelihood/legacy,pmi/legacy,grammar/validated,pmi/validated

A run is ``<pick>/<shortlist>[/<step2>][/n<N>]``: ``legacy`` is the shortlist of the older rows (the
dataset's POPULARITY_WEIGHT, no hubness correction), ``validated`` the dataset's SHORTLIST,
``p0.1h1.0`` explicit weights (popularity 0.1, hubness 1.0); ``/categories`` grounds Step 2 too
(slim.lm.grounded_step2), ``/categories3`` from the history's 3 most frequent categories, default
``free``; ``/n10`` a shortlist of 10 items (prompt and grammar), default the dataset's GroundingConfig;
``/editions`` leaves other editions of the history's items out of the shortlist (``--exclude-editions``). Each run's rows go to ``runs/bench-step3-pick/<dataset>/rationales/pick-<run>.jsonl``
(resumable: a rerun generates only the missing rows), written by ``python -m slim_train reason``;
the table is slim.lm.rationale_quality's measures on exactly those rows, beside the shipped
student's rows for the same users (``shipped``: the rows ``--shipped`` names), and the genre hit
of naming categories with no model at all (category_baselines).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from slim.artifacts.layout import REPO_ROOT, RunLayout
from slim.data.categories import category_column, history_categories, item_categories
from slim.data.dataset import load_dataset
from slim.eval.metrics import sampled_negatives
from slim.lm import rationale_quality
from slim.lm.encoders import TextEncoder
from slim.lm.prompts import DEFAULT_MAX_HISTORY
from slim.lm.grounding import DEFAULT_POPULARITY_WEIGHT, DEFAULT_SHORTLIST, POPULARITY_WEIGHT, SHORTLIST
from slim_eval import inputs
from slim_eval.pipeline import heldout_pairs
from slim_eval.run import N_NEGATIVES, NEGATIVES_SEED

MEASURES = ("target_item_hit", "target_genre_hit", "step3_distinct_items", "step3_top3_share", "step3_edition_repeats", "step1_distinct",
            "step2_distinct", "zero_shot_ndcg10", "history_zero_shot_ndcg10", "mean_seconds")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--users", type=int, default=80, help="held-out users in the seeded sample")
    p.add_argument("--seed", type=int, default=0, help="seed of the user sample")
    p.add_argument("--runs", default="likelihood/legacy,pmi/legacy,grammar/validated,pmi/validated")
    p.add_argument("--model", default="runs/merged/student-v4-q8_0.gguf",
                   help="the merged student (python -m slim_train merge --adapter assets/student-v4 --quant q8_0 "
                        "--out runs/merged/student-v4-q8_0.gguf)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shipped", default="student", help="the shipped student file to compare with (rationales/<name>.jsonl)")
    p.add_argument("--out", default="runs/bench-step3-pick")
    args = p.parse_args()
    ds = load_dataset(args.dataset)
    shipped = RunLayout.for_dataset(args.dataset, student_file=f"{args.shipped}.jsonl").rationales("student")
    _, pairs = heldout_pairs([shipped], ds.name)
    held_out = sorted({u for u, _ in pairs})
    users = sorted(np.random.default_rng(args.seed).choice(held_out, min(args.users, len(held_out)), replace=False))
    out = Path(args.out) / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    ids = out / "users.jsonl"
    ids.write_text("".join(json.dumps({"user_id": str(u)}) + "\n" for u in users))
    files = {"shipped": shipped}
    for run in args.runs.split(","):
        pick, shortlist, *rest = run.split("/")
        popularity, hub = _shortlist_weights(shortlist, ds.name)
        sizes = [part[1:] for part in rest if re.fullmatch(r"n\d+", part)]
        editions = "editions" in rest
        step2 = [part for part in rest if not re.fullmatch(r"n\d+", part) and part != "editions"]
        step2, n_categories = re.fullmatch(r"(free|categories)(\d*)", step2[0] if step2 else "free").groups()
        name = (f"pick-{pick}-{shortlist}" + ("" if step2 == "free" else f"-step2-{step2}{n_categories}")
                + (f"-n{sizes[0]}" if sizes else "") + ("-editions" if editions else ""))
        subprocess.run([sys.executable, "-m", "slim_train", "reason", "--dataset", args.dataset, "--user-ids", f"@{ids}",
                        "--splits", "valid", "--max-tokens", "160", "--model", args.model, "--adapter", "none",
                        "--step3", "grammar", "--step3-pick", pick, "--popularity-weight", str(popularity),
                        "--hubness-weight", str(hub), "--step2", step2,
                        *(["--step2-candidates", n_categories] if n_categories else []),
                        *(["--candidates", sizes[0]] if sizes else []), *(["--exclude-editions"] if editions else []),
                        "--domain", "dataset",
                        "--workers", str(args.workers),
                        "--out", str(out), "--name", name], check=True, cwd=REPO_ROOT)
        files[run] = out / "rationales" / f"{name}.jsonl"
    encoder = TextEncoder()
    items = inputs.item_text(ds, encoder)
    negatives = sampled_negatives(ds, N_NEGATIVES, NEGATIVES_SEED)
    only = {(str(u), "valid") for u in users}
    reports = {pick: rationale_quality.quality_report(ds, f, encoder=encoder, item_vectors=items, negatives=negatives,
                                                      only=only) for pick, f in files.items()}
    print(f"{ds.name}: {len(users)} held-out users, valid split; sampled zero-shot NDCG@10 (1 target + "
          f"{N_NEGATIVES} negatives)")
    print(f"{'measure':<26}" + "".join(f"{p:>20}" for p in reports))
    for m in MEASURES:
        print(f"{m:<26}" + "".join(f"{_cell(r.get(m)):>20}" for r in reports.values()))
    baselines = category_baselines(ds, users)
    for name, hit in baselines.items():
        print(f"target_genre_hit of {name}: {_cell(hit)}")
    (out / "step3-pick.json").write_text(json.dumps({"users": [str(u) for u in users], "reports": reports,
                                                     "target_genre_hit_baselines": baselines}, indent=1))


def category_baselines(ds, users, k: int = 2) -> dict[str, float | None]:
    """How often naming ``k`` categories without any model hits the valid target's: the history's most
    frequent (what a grounded Step 2 chooses from) and the catalogue's most frequent, the floor a
    Step 2 must clear before its genre hit says anything about the user."""
    if category_column(ds) is None:
        return {}
    catalogue = history_categories(ds, range(1, ds.n_items + 1), k)
    hits = {f"the history's top {k}": [], f"the catalogue's top {k} ({', '.join(catalogue)})": []}
    for user_id in users:
        u = ds.user_index[str(user_id)]
        target = set(item_categories(ds, ds.target(u, "valid")))
        if target:
            shown = list(ds.history(u, "valid"))[-DEFAULT_MAX_HISTORY:]
            for name, named in zip(hits, (history_categories(ds, shown, k), catalogue)):
                hits[name].append(bool(target & set(named)))
    return {name: float(np.mean(h)) if h else None for name, h in hits.items()}


def _shortlist_weights(shortlist: str, dataset: str) -> tuple[float, float]:
    """(popularity weight, hubness weight) of ``legacy``, ``validated`` or an explicit ``p<w>h<w>``."""
    if shortlist == "legacy":
        return POPULARITY_WEIGHT.get(dataset, DEFAULT_POPULARITY_WEIGHT), 0.0
    if shortlist == "validated":
        return SHORTLIST.get(dataset, DEFAULT_SHORTLIST)
    match = re.fullmatch(r"p([0-9.]+)h([0-9.]+)", shortlist)
    if match is None:
        raise SystemExit(f"shortlist {shortlist!r}: use legacy, validated or p<popularity>h<hubness> (p0.1h1.0)")
    return float(match.group(1)), float(match.group(2))


def _cell(v) -> str:
    return "-" if v is None else f"{v:.4f}"


if __name__ == "__main__":
    main()
