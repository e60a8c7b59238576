"""report.json: the rows of one run (backbone x variant x protocol, mean +- std over seeds) and their labels.

Every other module of the report reads these rows; none of them fits or scores a model.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from slim.eval.metrics import mean_std

REPORT_METRICS = ("HR@10", "HR@20", "NDCG@10")
PROTOCOL_TITLES = {"full": "full ranking", "sampled": "100 sampled negatives"}
VARIANT_LABELS = {
    "id": "{X}", "text": "{X}+ (item text)", "teacher": "{X} + teacher rationale (SLIM-)", "slim": "SLIM ({X})",
    "match": "SLIM (text matching)", "match-step1": "SLIM-Step1", "match-step2": "SLIM-Step2",
    "match-step3": "SLIM-Step3", "match-teacher": "Teacher rationale (text matching)",
    "match-step3-clean": "SLIM-Step3, post-filtered", "match-clean": "SLIM (text matching), Step 3 post-filtered",
    "slim-clean": "SLIM ({X}), Step 3 post-filtered (ours)",
}
ID_BASED = ("id", "text", "teacher", "slim")  # the per-backbone rows; plots show the ones present
BACKBONE_LABELS = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "srgnn": "SRGNN", "none": "-"}


def aggregate(seed_results: Iterable) -> list[dict]:
    """SeedResults -> report.json ``results`` rows (one per backbone x variant x protocol)."""
    groups: dict[tuple[str, str, str], list] = {}
    for r in seed_results:
        groups.setdefault((r.backbone, r.variant, r.protocol), []).append(r)
    rows = []
    for (backbone, variant, protocol), rs in groups.items():
        rs = sorted(rs, key=lambda r: r.seed)
        row = {
            "backbone": backbone,
            "variant": variant,
            "protocol": protocol,
            "metrics": {m: mean_std([r.metrics[m] for r in rs]) for m in REPORT_METRICS},
            "seeds": [r.seed for r in rs],
            "best_epoch": [r.best_epoch for r in rs],
        }
        if all(r.valid_ndcg10 is not None for r in rs):
            # the validation score of each seed's selected epoch: choices between variants read it, never test
            row["valid_NDCG@10"] = mean_std([r.valid_ndcg10 for r in rs])
        rows.append(row)
    return rows


def build_report(dataset: str, split: str, protocols: Sequence[str], user_sample, seed_results,
                 data_stats: dict | None = None) -> dict:
    """``data_stats``: statistics of the users actually evaluated (a seeded sample is described by
    its own size and lengths, not the full dataset's), so a reader can compare samples across runs."""
    report = {"dataset": dataset, "split": split, "protocols": list(protocols), "user_sample": user_sample,
              "results": aggregate(seed_results)}
    if data_stats is not None:
        report["data"] = dict(data_stats)
    return report


def find_row(report: dict, backbone: str, variant: str, protocol: str) -> dict | None:
    """The one report row of (backbone, variant, protocol), or None when the run did not measure it."""
    for r in report["results"]:
        if r["backbone"] == backbone and r["variant"] == variant and r["protocol"] == protocol:
            return r
    return None


def row_keys(report: dict) -> list[tuple[str, str]]:
    """(backbone, variant) pairs in the order the run measured them: the main table's row order."""
    seen: list[tuple[str, str]] = []
    for r in report["results"]:
        if (r["backbone"], r["variant"]) not in seen:
            seen.append((r["backbone"], r["variant"]))
    return seen

