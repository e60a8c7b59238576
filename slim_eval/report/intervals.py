"""Paired bootstrap intervals over users for the ratios the report headlines (Improv., SLIM / SLIM- - 1)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from slim.artifacts.layout import RunLayout

from .fusion_choice import chosen_fusion
from .per_user import per_user_gain
from .rows import BACKBONE_LABELS, PROTOCOL_TITLES
from .tables import render


def ratio_interval(layout: RunLayout, report: dict, backbone: str, protocol: str, variant: str,
                   baselines: Sequence[str], metric: str = "NDCG@10", n_boot: int = 2000, seed: int = 0) -> dict | None:
    """``variant`` / max(baselines) - 1 with a 95% paired bootstrap interval over users.

    Why: with 2-5 seeds, "mean ± std" says how much refitting moves a row, not whether a +1% gain
    on a few thousand users is more than which users were drawn. The rows scored the same users against
    the same candidates, so users are resampled together (paired); the best baseline is taken per resample.
    ``p_not_better``: share of resamples where ``variant`` does not beat the best baseline.
    """
    top = per_user_gain(layout, report, backbone, variant, protocol, metric)
    if top is None:
        return None
    users = top[0]
    base = [g[1] for g in (per_user_gain(layout, report, backbone, v, protocol, metric) for v in baselines)
            if g is not None and np.array_equal(g[0], users)]
    if not base:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(users), size=(n_boot, len(users)))
    best = np.max([b[idx].mean(1) for b in base], axis=0)
    boot = top[1][idx].mean(1) / np.maximum(best, 1e-12) - 1
    point = top[1].mean() / max(b.mean() for b in base) - 1
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"improv": float(point), "lo": float(lo), "hi": float(hi), "p_not_better": float((boot <= 0).mean()),
            "users": int(len(users)), "seeds": top[2]}


def improvement_interval(layout: RunLayout, report: dict, backbone: str, protocol: str, metric: str = "NDCG@10",
                         n_boot: int = 2000, seed: int = 0) -> dict | None:
    """Improv. = SLIM / max(X, X+) - 1 with its paired bootstrap interval (``ratio_interval``)."""
    return ratio_interval(layout, report, backbone, protocol, "slim", ("id", "text"), metric, n_boot, seed)


def _interval_table(layout: RunLayout, report: dict, variant: str, baselines: Sequence[str], title: str,
                    metric: str, p_means: str, markdown: bool = True) -> str | None:
    rows, n_users = [], 0
    for protocol in report["protocols"]:
        for backbone in ("sasrec", "gru4rec", "srgnn"):
            ci = ratio_interval(layout, report, backbone, protocol, variant, baselines, metric)
            if ci:
                n_users = ci["users"]
                rows.append([BACKBONE_LABELS[backbone], PROTOCOL_TITLES[protocol], f"{100 * ci['improv']:+.1f}%",
                             f"[{100 * ci['lo']:+.1f}%, {100 * ci['hi']:+.1f}%]", f"{ci['p_not_better']:.3f}",
                             str(ci["seeds"])])
    if not rows:
        return None
    return (f"{title} ({metric}) with a 95% paired bootstrap interval over the {n_users:,} users "
            f"(2,000 resamples of users; metric averaged over seeds per user; P = share of resamples where {p_means})\n\n"
            + render(["backbone", "protocol", title, "95% interval", "P(not better)", "seeds"], rows, markdown))


def improvement_table(layout: RunLayout, report: dict, metric: str = "NDCG@10", markdown: bool = True) -> str | None:
    """Per backbone and protocol: Improv. with its paired-bootstrap 95% interval over users."""
    return _interval_table(layout, report, "slim", ("id", "text"), "Improv.", metric, "SLIM <= max(X, X+)", markdown)


def slim_vs_teacher_interval_table(layout: RunLayout, report: dict, metric: str = "NDCG@10",
                                   markdown: bool = True) -> str | None:
    """SLIM / SLIM- - 1 per backbone and protocol, with its interval: on a few hundred users the means
    of the cell table can differ by more than the seeds' std without the users supporting it."""
    return _interval_table(layout, report, "slim", ("teacher",), "SLIM / SLIM- - 1", metric, "SLIM <= SLIM-",
                           markdown)




def chosen_fusion_interval_table(layout: RunLayout, report: dict, metric: str = "NDCG@10",
                                 markdown: bool = True) -> str | None:
    """Improv. of SLIM with the fusion its validation scores chose (.fusion_choice), per backbone and
    protocol, with the paired interval; None when no backbone has both fusions."""
    rows, n_users = [], 0
    for protocol in report["protocols"]:
        for backbone in ("sasrec", "gru4rec", "srgnn"):
            choice = chosen_fusion(report, backbone)
            ci = ratio_interval(layout, report, backbone, protocol, choice, ("id", "text"), metric) if choice else None
            if ci:
                n_users = ci["users"]
                rows.append([BACKBONE_LABELS[backbone], choice, PROTOCOL_TITLES[protocol], f"{100 * ci['improv']:+.1f}%",
                             f"[{100 * ci['lo']:+.1f}%, {100 * ci['hi']:+.1f}%]", f"{ci['p_not_better']:.3f}",
                             str(ci["seeds"])])
    if not rows:
        return None
    return (f"Improv. of SLIM with the fusion chosen on validation ({metric}), 95% paired bootstrap interval over "
            f"the {n_users:,} users (2,000 resamples; P = share of resamples where it is <= max(X, X+))\n\n"
            + render(["backbone", "fusion", "protocol", "Improv.", "95% interval", "P(not better)", "seeds"], rows,
                     markdown))
