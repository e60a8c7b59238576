"""The report's figures: user-sparsity groups and the long-tail shape (paper Fig. 5-7), as PNGs in plots/.

The sparsity plot evaluates one model trained on all users per group, while the paper (Fig. 5)
*trains* a model per group: it asks "who benefits" rather than "does it work with less data";
the plot title says so too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from slim.artifacts.layout import RunLayout
from slim.artifacts.provenance import load_npz

from .per_user import eval_arrays, sparsity_groups
from .rows import BACKBONE_LABELS, ID_BASED, PROTOCOL_TITLES, VARIANT_LABELS


def _save_figure(fig, ax, out: Path) -> Path:
    """Legend, layout, write the PNG and free the figure: the same last steps for every plot."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def sparsity_plot(layout: RunLayout, report: dict, backbone: str = "sasrec", variants: Sequence[str] = ID_BASED,
                  protocol: str = "full", out: Path | None = None, metric: str = "NDCG@10") -> Path | None:
    """Grouped bars of ``metric`` per user-sparsity group; PNG path, or None if nothing to plot."""
    data = {v: sparsity_groups(layout, report, backbone, v, protocol, metric=metric) for v in variants}
    data = {v: d for v, d in data.items() if d}
    if not data:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bounds = next(iter(data.values()))["bounds"]
    x = np.arange(len(bounds))
    width = 0.8 / len(data)
    fig, ax = plt.subplots(figsize=(7, 4))
    label = BACKBONE_LABELS.get(backbone, backbone)
    for i, (v, d) in enumerate(data.items()):
        mean, std = np.array(d["mean"]) * 100, np.array(d["std"]) * 100
        ax.bar(x + (i - (len(data) - 1) / 2) * width, mean, width, yerr=[np.minimum(std, mean), std],
               capsize=3, label=VARIANT_LABELS[v].format(X=label))
    ax.set_xticks(x, [f"{lo}-{hi}" for lo, hi in bounds])
    ax.set_xlabel("history length (5 equal user groups, sparse -> dense)")
    ax.set_ylabel(f"{metric} x100 ({PROTOCOL_TITLES[protocol]})")
    ax.set_title(f"{report['dataset']} {report['split']}: one model per variant, evaluated per group", fontsize=9)
    return _save_figure(fig, ax, out or layout.plots_dir / f"sparsity-{report['split']}-{backbone}-{protocol}.png")


def longtail_plot(layout: RunLayout, report: dict, backbone: str = "sasrec", variants: Sequence[str] = ID_BASED,
                  out: Path | None = None, n_bins: int = 20) -> Path | None:
    """Paper Fig. 6/7 shape: items sorted by training popularity and cut into ``n_bins`` equal bins
    (x, most popular first); y = share of all top-10 slots that go to each bin (mean over seeds).
    More mass on the right = more long-tail recommendations. Bins, not single items: per-item
    counts over a few hundred users are too sparse to read."""
    got = load_npz(layout.eval_dataset_file(report["split"]))
    runs = {v: eval_arrays(layout, report, backbone, v, "full") for v in variants}
    runs = {v: r for v, r in runs.items() if r and "topk" in r[0][1]}
    if got is None or not runs:
        return None
    pop = got[1]["item_popularity"]
    order = np.argsort(-pop[1:], kind="stable") + 1  # most popular first; padding excluded
    bins = np.array_split(order, n_bins)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    label = BACKBONE_LABELS.get(backbone, backbone)
    x = np.arange(1, n_bins + 1)
    for v, rs in runs.items():
        shares = []
        for _, arr in rs:
            freq = np.bincount(arr["topk"].ravel(), minlength=len(pop)).astype(np.float64)
            shares.append([freq[b].sum() / max(freq.sum(), 1) for b in bins])
        ax.plot(x, 100 * np.mean(shares, 0), marker="o", ms=3, label=VARIANT_LABELS[v].format(X=label))
    share_train = [pop[b].sum() / max(pop.sum(), 1) for b in bins]
    ax.plot(x, 100 * np.array(share_train), ls="--", color="grey", label="training interactions")
    ax.set_yscale("log")
    ax.set_xticks(x[::2])
    ax.set_xlabel(f"item popularity bin ({n_bins} equal bins, most popular first)")
    ax.set_ylabel("% of top-10 slots")
    ax.set_title(f"{report['dataset']} {report['split']}: where the top-10 lists go (full ranking)", fontsize=9)
    return _save_figure(fig, ax, out or layout.plots_dir / f"longtail-{report['split']}-{backbone}.png")


