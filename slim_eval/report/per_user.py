"""Analyses that read the per-user ``eval/*.npz`` files of a report's rows: the users behind the means.

* :func:`popularity_table`: EFD@10 / EPC@10 (paper Table 8) of SASRec vs SLIM from the stored
  top-10 lists' per-model values (full ranking, Elliot definitions in slim.eval.metrics).
* :func:`sparsity_groups`: users split into 5 equal groups by history length, NDCG@10 per group.
* :func:`gain_by_rationale_table`: SLIM vs X+ for users whose rationale parsed vs the others.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from slim.artifacts.layout import RunLayout
from slim.artifacts.provenance import load_npz
from slim.eval.metrics import mean_std, rank_metrics, user_metric

from ..variants import run_name
from .rows import BACKBONE_LABELS, ID_BASED, PROTOCOL_TITLES, VARIANT_LABELS, find_row
from .tables import render


def eval_arrays(layout: RunLayout, report: dict, backbone: str, variant: str, protocol: str) -> list[tuple[dict, dict]]:
    """(record, arrays) per seed of one report row; seeds whose file is gone are skipped."""
    row = find_row(report, backbone, variant, protocol)
    out = []
    for seed in (row["seeds"] if row else []):
        got = load_npz(layout.eval_file(report["split"], run_name(backbone, variant, seed), protocol))
        if got is not None:
            out.append(got)
    return out


def per_user_gain(layout: RunLayout, report: dict, backbone: str, variant: str, protocol: str,
                  metric: str = "NDCG@10") -> tuple[np.ndarray, np.ndarray, int] | None:
    """(user ids, the metric per user averaged over the row's seeds, number of seeds); None without files."""
    runs = eval_arrays(layout, report, backbone, variant, protocol)
    if not runs:
        return None
    users = runs[0][1]["user_ids"]
    if any(not np.array_equal(arr["user_ids"], users) for _, arr in runs):
        raise ValueError(f"{backbone}-{variant} seeds scored different users; rerun slim_eval")
    return users, np.mean([user_metric(arr["ranks"], metric) for _, arr in runs], axis=0), len(runs)



def gain_by_rationale_table(layout: RunLayout, report: dict, metric: str = "NDCG@10",
                            markdown: bool = True) -> str | None:
    """SLIM vs X+ per user group: users whose student rationale parsed into 3 steps vs the others.

    Why: a rejected rationale (stopped before Step 3, unparseable, missing) is encoded from raw text
    or zeros; this says how much of the gap such users can explain before anyone repairs them.
    """
    from slim.lm.rationale_file import RationaleStore

    path = layout.rationales("student")
    if not path.exists():
        return None
    rows = RationaleStore(path).rows
    out, total = [], 0
    for protocol in report["protocols"]:
        for backbone in ("sasrec", "gru4rec", "srgnn"):
            slim, text = (per_user_gain(layout, report, backbone, v, protocol, metric) for v in ("slim", "text"))
            if slim is None or text is None or not np.array_equal(slim[0], text[0]):
                continue
            ok = np.array([(r := rows.get((str(u), report["split"]))) is not None and r["status"] == "ok"
                           for u in slim[0]])
            total = len(ok)
            for name, mask in (("3 steps", ok), ("rejected or missing", ~ok)):
                if mask.any():
                    x, y = 100 * text[1][mask].mean(), 100 * slim[1][mask].mean()
                    gain = f"{100 * (y / x - 1):+.1f}%" if x > 0 else "n/a"
                    out.append([BACKBONE_LABELS[backbone], PROTOCOL_TITLES[protocol], name, f"{int(mask.sum()):,}",
                                f"{x:.2f}", f"{y:.2f}", gain])
    if not out or all(r[2] == "3 steps" for r in out):
        return None
    shown = path.relative_to(layout.root) if path.is_relative_to(layout.root) else path
    return (f"SLIM vs X+ by the state of the user's {report['split']} rationale in {shown.as_posix()} "
            f"({metric} x100, averaged over seeds; {total:,} users)\n\n"
            + render(["backbone", "protocol", "rationale", "users", "X+", "SLIM", "SLIM / X+ - 1"], out, markdown))


def popularity_table(layout: RunLayout, report: dict, backbone: str = "sasrec",
                     variants: Sequence[str] = ID_BASED, markdown: bool = True) -> str | None:
    """EFD@10 / EPC@10 (paper Table 8; higher = more long-tail) from the full-ranking top-10 lists."""
    rows = []
    for v in variants:
        recs = [rec for rec, _ in eval_arrays(layout, report, backbone, v, "full")]
        if not recs or "EFD@10" not in recs[0].get("metrics", {}):
            continue
        cells = [f"{np.mean([r['metrics'][m] for r in recs]):.4f} ± "
                 f"{mean_std([r['metrics'][m] for r in recs])['std']:.4f}" for m in ("EFD@10", "EPC@10")]
        rows.append([VARIANT_LABELS[v].format(X=BACKBONE_LABELS.get(backbone, backbone)), *cells])
    if not rows:
        return None
    return (f"Popularity bias (Table 8 shape) - {report['dataset']}, {report['split']}, full-ranking top-10, "
            f"relevance = held-out item\n\n" + render(["Method", "EFD@10", "EPC@10"], rows, markdown))


def sparsity_groups(layout: RunLayout, report: dict, backbone: str, variant: str, protocol: str = "full",
                    n_groups: int = 5, metric: str = "NDCG@10") -> dict | None:
    """Users sorted by history length, cut into ``n_groups`` equal groups; metric mean/std per group.

    Returns {"bounds": [(min_len, max_len)...], "mean": [...], "std": [...]} or None.
    """
    runs = eval_arrays(layout, report, backbone, variant, protocol)
    if not runs:
        return None
    lengths = runs[0][1]["history_len"]
    order = np.argsort(lengths, kind="stable")
    groups = np.array_split(order, n_groups)
    per_seed = np.array([[rank_metrics(arr["ranks"][g])[metric] for g in groups] for _, arr in runs])
    return {
        "bounds": [(int(lengths[g].min()), int(lengths[g].max())) for g in groups],
        "mean": per_seed.mean(0).tolist(),
        "std": (per_seed.std(0, ddof=1) if len(per_seed) > 1 else np.zeros(n_groups)).tolist(),
    }


