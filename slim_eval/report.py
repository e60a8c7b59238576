"""Report shapes, built only from ``report.json`` and the per-user ``eval/*.npz`` files.

Nothing here fits or scores a model, so every table and plot can be regenerated after the fact
(``regenerate(run_dir)``) and the demo may import these functions without pulling in training.

* :func:`aggregate` / :func:`results_table`: the main table (backbone x variant, HR@10, HR@20,
  NDCG@10 per protocol, mean +- std over seeds, x100 when printed; fractions in JSON).
* :func:`table1`: the paper's Table 1 shape per backbone: X, X+, teacher (SLIM-), SLIM, and
  "Improv." = SLIM / max(X, X+) - 1 (computed on the means, as the paper does).
* :func:`table2`: the paper's Table 2 shape (text matching: Step1, Step2, Step3, teacher, SLIM).
* :func:`slim_vs_teacher_table`: SLIM vs SLIM- cell by cell (the paper's "22 of 27 cells").
* :func:`popularity_table`: EFD@10 / EPC@10 (paper Table 8) of SASRec vs SLIM from the stored
  top-10 lists' per-model values (full ranking, Elliot definitions in slim.eval.metrics).
* :func:`longtail_plot`: the paper's Fig. 6/7 (top-10 frequency of items sorted by popularity).
* :func:`sparsity_groups` / :func:`sparsity_plot`: users split into 5 equal groups by history
  length, NDCG@10 per group. NOTE: the paper (Fig. 5) *trains* a model per group; we evaluate one
  model trained on all users per group, which asks "who benefits" rather than "does it work with
  less data". Said in the plot title too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from slim.artifacts.layout import RATIONALE_FILES, RunLayout
from slim.artifacts.provenance import load_npz, read_json
from slim.eval.metrics import mean_std, rank_metrics, user_metric

from .variants import run_name

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


# ---------------------------------------------------------------------------------------
# report.json
# ---------------------------------------------------------------------------------------

def aggregate(seed_results: Iterable) -> list[dict]:
    """SeedResults -> report.json ``results`` rows (one per backbone x variant x protocol)."""
    groups: dict[tuple[str, str, str], list] = {}
    for r in seed_results:
        groups.setdefault((r.backbone, r.variant, r.protocol), []).append(r)
    rows = []
    for (backbone, variant, protocol), rs in groups.items():
        rs = sorted(rs, key=lambda r: r.seed)
        rows.append({
            "backbone": backbone,
            "variant": variant,
            "protocol": protocol,
            "metrics": {m: mean_std([r.metrics[m] for r in rs]) for m in REPORT_METRICS},
            "seeds": [r.seed for r in rs],
            "best_epoch": [r.best_epoch for r in rs],
        })
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


def data_line(report: dict) -> str | None:
    """One sentence on the evaluated users (report.md); None for reports written before it existed."""
    d, sample = report.get("data"), report.get("user_sample")
    if not d:
        return None
    who = (f"a seeded sample of {sample['n']:,} of {sample['of']:,} users (seed {sample['seed']})" if sample
           else f"all {d['users']:,} users")
    return (f"Data: {who}; {d['users']:,} users, {d['items']:,} items in the catalogue, "
            f"{d['interactions']:,} interactions, sequence length mean {d['mean_length']:.1f} "
            f"(min {d['min_length']}, max {d['max_length']}).")


def _find(report: dict, backbone: str, variant: str, protocol: str) -> dict | None:
    for r in report["results"]:
        if r["backbone"] == backbone and r["variant"] == variant and r["protocol"] == protocol:
            return r
    return None


def _rows(report: dict) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for r in report["results"]:
        if (r["backbone"], r["variant"]) not in seen:
            seen.append((r["backbone"], r["variant"]))
    return seen


def fmt(ms: dict | None) -> str:
    """Fractions -> "mean +- std" x100, like the paper."""
    if ms is None:
        return "-"
    return f"{100 * ms['mean']:.2f} ± {100 * ms['std']:.2f}"


def render(header: list[str], rows: list[list[str]], markdown: bool, groups: list[str] | None = None) -> str:
    """A markdown table, or an aligned text table; ``groups`` is an optional spanning header row (text)."""
    if markdown:
        head = [f"{g}: {h}" if g else h for g, h in zip(groups, header)] if groups else header
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    if groups:  # label each run of equal group names once, above its first column
        cells = [g if g and (i == 0 or groups[i - 1] != g) else "" for i, g in enumerate(groups)]
        out.insert(0, "  ".join(c.ljust(w) if len(c) <= w else c for c, w in zip(cells, widths)).rstrip())
    return "\n".join(out)


def results_table(report: dict, markdown: bool = False) -> str:
    """The main table: one row per backbone x variant, HR@10 / HR@20 / NDCG@10 per protocol."""
    protos = report["protocols"]
    header = ["backbone", "variant"] + [m for _ in protos for m in REPORT_METRICS]
    groups = ["", ""] + [PROTOCOL_TITLES[p] for p in protos for _ in REPORT_METRICS]
    rows = []
    for backbone, variant in _rows(report):
        cells = [BACKBONE_LABELS.get(backbone, backbone), variant]
        for p in protos:
            r = _find(report, backbone, variant, p)
            cells += [fmt(r["metrics"][m] if r else None) for m in REPORT_METRICS]
        rows.append(cells)
    n_seeds = sorted({len(r["seeds"]) for r in report["results"]})
    title = (f"{report['dataset']} - {report['split']} split - mean ± std over {'/'.join(map(str, n_seeds))} "
             f"seed(s), x100 - protocols: " + ", ".join(PROTOCOL_TITLES[p] for p in protos))
    if report.get("user_sample"):
        us = report["user_sample"]
        title += f" - seeded sample of {us['n']} of {us['of']} users (seed {us['seed']})"
    return title + "\n\n" + render(header, rows, markdown, groups)


# ---------------------------------------------------------------------------------------
# paper table shapes
# ---------------------------------------------------------------------------------------

def improvement(report: dict, backbone: str, protocol: str, metric: str, variant: str = "slim") -> float | None:
    """SLIM / max(X, X+) - 1 on the means (None when SLIM or both baselines are missing)."""
    slim = _find(report, backbone, variant, protocol)
    bases = [_find(report, backbone, v, protocol) for v in ("id", "text")]
    bases = [b["metrics"][metric]["mean"] for b in bases if b]
    if not slim or not bases or max(bases) <= 0:
        return None
    return slim["metrics"][metric]["mean"] / max(bases) - 1


def table1(report: dict, protocol: str, markdown: bool = True) -> str | None:
    """Paper Table 1 shape for one protocol; None when no backbone has more than the plain row."""
    header = ["Method", *REPORT_METRICS]
    rows: list[list[str]] = []
    for backbone in [b for b in ("gru4rec", "sasrec", "srgnn") if any(r["backbone"] == b for r in report["results"])]:
        present = [v for v in ("id", "text", "teacher", "slim", "slim-clean") if _find(report, backbone, v, protocol)]
        if len(present) < 2:
            continue
        label = BACKBONE_LABELS[backbone]
        for v in present:
            r = _find(report, backbone, v, protocol)
            rows.append([VARIANT_LABELS[v].format(X=label), *(fmt(r["metrics"][m]) for m in REPORT_METRICS)])
        for v, what in (("slim", "Improv. (%)"), ("slim-clean", "Improv. of the post-filtered SLIM (%)")):
            imp = [improvement(report, backbone, protocol, m, v) for m in REPORT_METRICS]
            if any(x is not None for x in imp):
                rows.append([what, *("-" if x is None else f"{100 * x:+.2f}" for x in imp)])
    if not rows:
        return None
    return (f"Table 1 shape - {report['dataset']}, {report['split']}, {PROTOCOL_TITLES[protocol]} (x100)\n\n"
            + render(header, rows, markdown))


def slim_vs_teacher_cells(report: dict, protocol: str) -> list[dict]:
    """Every (backbone, metric) cell holding both SLIM and the teacher-rationale variant (SLIM-).

    The paper's claim "SLIM beats the teacher in 22/27 ID-based cells" counts 3 datasets x 3
    backbones x 3 metrics on the means; each dataset's report contributes its 9 cells.
    """
    cells = []
    for backbone in ("sasrec", "gru4rec", "srgnn"):
        slim, teacher = (_find(report, backbone, v, protocol) for v in ("slim", "teacher"))
        if not (slim and teacher):
            continue
        for m in REPORT_METRICS:
            s, t = slim["metrics"][m]["mean"], teacher["metrics"][m]["mean"]
            cells.append({"backbone": backbone, "metric": m, "slim": s, "teacher": t, "slim_wins": s > t})
    return cells


def slim_vs_teacher_table(report: dict, protocol: str, markdown: bool = True) -> str | None:
    """SLIM (student rationales) vs SLIM- (teacher rationales), cell by cell, with the win count."""
    cells = slim_vs_teacher_cells(report, protocol)
    if not cells:
        return None
    rows = [[BACKBONE_LABELS[c["backbone"]], c["metric"], f"{100 * c['teacher']:.2f}", f"{100 * c['slim']:.2f}",
             f"{100 * (c['slim'] / c['teacher'] - 1):+.1f}%" if c["teacher"] > 0 else "-",
             "SLIM" if c["slim_wins"] else "teacher"] for c in cells]
    wins = sum(c["slim_wins"] for c in cells)
    return (f"SLIM vs the teacher-rationale variant (SLIM-) - {PROTOCOL_TITLES[protocol]} (x100, means over seeds): "
            f"SLIM is higher in {wins} of {len(cells)} cells (paper: 22 of 27 over its 3 datasets, sampled)\n\n"
            + render(["backbone", "metric", "teacher (SLIM-)", "SLIM", "SLIM / teacher - 1", "higher"], rows,
                     markdown))


def table2(report: dict, protocol: str, markdown: bool = True) -> str | None:
    """Paper Table 2 shape (ID-agnostic text matching) for one protocol."""
    order = ("match-step1", "match-step2", "match-step3", "match-step3-clean", "match-teacher", "match", "match-clean")
    rows = []
    for v in order:
        r = _find(report, "none", v, protocol)
        if r:
            rows.append([VARIANT_LABELS[v], *(fmt(r["metrics"][m]) for m in REPORT_METRICS)])
    if not rows:
        return None
    return (f"Table 2 shape - {report['dataset']}, {report['split']}, {PROTOCOL_TITLES[protocol]} (x100)\n\n"
            + render(["Method", *REPORT_METRICS], rows, markdown))


# ---------------------------------------------------------------------------------------
# per-user analyses (read the .npz files)
# ---------------------------------------------------------------------------------------

def eval_arrays(layout: RunLayout, report: dict, backbone: str, variant: str, protocol: str) -> list[tuple[dict, dict]]:
    """(record, arrays) per seed of one report row; seeds whose file is gone are skipped."""
    row = _find(report, backbone, variant, protocol)
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


# ---------------------------------------------------------------------------------------
# compute per stage
# ---------------------------------------------------------------------------------------

def _checkpoint_seconds(layout: RunLayout, checkpoint: str) -> float | None:
    """Training + per-epoch validation seconds of one fitted checkpoint (its config.json history)."""
    roots = [layout.checkpoints_dir, layout.shipped_checkpoints_dir, layout.hub_fits_dir]
    rec = next((r for d in roots if d is not None and (r := read_json(d / checkpoint / "config.json"))), None)
    if not rec or not rec.get("history"):
        return None
    return float(sum(h.get("train_seconds", 0.0) + h.get("eval_seconds", 0.0) for h in rec["history"]))


def compute_rows(layout: RunLayout, report: dict) -> list[dict]:
    """What each stage of this run cost, read back from the artefacts themselves.

    Why from artefacts rather than a stopwatch around the command: a rerun reuses most fits and
    rationales, so the wall time of the last command says little; the rows' own ``seconds`` and
    the checkpoints' epoch timings add up what was really spent, whichever session spent it.
    """
    from .inputs import load_rationale_rows

    rows: list[dict] = []
    seen: set[tuple] = set()  # a row copied into two files (teacher.jsonl -> teacher-distill-700.jsonl) was paid once
    for path in layout.rationale_files():  # the run's own, and the shipped ones it read
        file_rows = list(load_rationale_rows(path).values())  # torn last line handled by RationaleStore
        secs, paid = [], 0.0
        for r in file_rows:
            if not isinstance(r.get("seconds"), (int, float)):
                continue
            secs.append(float(r["seconds"]))
            ident = (r.get("user_id"), r.get("split"), r.get("model"), r.get("prompt_hash"), r.get("created"))
            if ident not in seen:
                seen.add(ident)
                paid += float(r["seconds"])
        models = sorted({str(r.get("model")) for r in file_rows})
        rows.append({"stage": f"rationales/{path.name}", "units": len(file_rows), "seconds": float(sum(secs)),
                     "paid": paid, "per_unit": float(np.median(secs)) if secs else None, "what": ", ".join(models)})
    distill = read_json(layout.distill_metrics)
    if distill:
        secs, steps = distill.get("train_seconds"), distill.get("steps")
        if secs is not None:
            rows.append({"stage": "distill (LoRA SFT)", "units": steps, "seconds": float(secs),
                         "per_unit": float(secs) / steps if steps else None, "what": "optimizer steps"})
    protocol = report["protocols"][0] if report.get("protocols") else "full"
    for r in report["results"]:
        if r["protocol"] != protocol:
            continue
        fit, n = 0.0, 0
        for rec, _ in eval_arrays(layout, report, r["backbone"], r["variant"], protocol):
            s = _checkpoint_seconds(layout, rec.get("key", {}).get("checkpoint", ""))
            if s is not None:
                fit, n = fit + s, n + 1
        if n:
            name = r["variant"] if r["backbone"] == "none" else f"{r['backbone']} {r['variant']}"
            rows.append({"stage": f"fit {name}", "units": n, "seconds": fit, "per_unit": fit / n,
                         "what": "seeds (train + validation epochs)"})
    return rows


def compute_table(layout: RunLayout, report: dict, markdown: bool = True) -> str | None:
    rows = compute_rows(layout, report)
    if not rows:
        return None
    cell = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
    body = [[r["stage"], cell(r["units"], "{}"), cell(r["seconds"] / 3600, "{:.2f}"),
             cell(r["per_unit"], "{:.1f}"), r["what"]] for r in rows]
    total = sum(r.get("paid", r["seconds"]) for r in rows)
    body.append(["total", "", f"{total / 3600:.2f}", "", "sum of the rows above, a rationale copied into two files counted once"])
    return ("Compute per stage (from the artefacts: rationale rows' `seconds`, checkpoint epoch timings;"
            " single-threaded unless the producing command said otherwise)\n\n"
            + render(["stage", "units", "hours", "s per unit (median for rationales)", "units are"], body, markdown))


# ---------------------------------------------------------------------------------------
# report.md
# ---------------------------------------------------------------------------------------

def markdown(layout: RunLayout, report: dict, command: str | None = None, notes: Sequence[str] = ()) -> str:
    """report.md: the main table, the command, then every issue-4 shape whose variants exist."""
    parts = [f"# SLIM-Rec report: {report['dataset']} ({report['split']})"]
    if command:
        parts.append(f"Produced by:\n\n```\n{command}\n```")
    line = data_line(report)
    if line:
        parts.append(line)
    parts.append(results_table(report, markdown=True))
    for p in report["protocols"]:
        for t in (table1(report, p), table2(report, p), slim_vs_teacher_table(report, p)):
            if t:
                parts.append(t)
    for t in (improvement_table(layout, report), slim_vs_teacher_interval_table(layout, report)):
        if t:
            parts.append(t)
    by_state = gain_by_rationale_table(layout, report)
    if by_state:
        parts.append(by_state)
    pop = popularity_table(layout, report)
    if pop:
        parts.append(pop)
    plot = sparsity_plot(layout, report) if any(r["backbone"] == "sasrec" for r in report["results"]) else None
    if plot:
        parts.append(f"User-sparsity groups: ![sparsity]({plot.relative_to(layout.root).as_posix()})")
    tail = longtail_plot(layout, report) if any(r["backbone"] == "sasrec" for r in report["results"]) else None
    if tail:
        parts.append(f"Recommendation frequency vs item popularity: ![longtail]({tail.relative_to(layout.root).as_posix()})")
    compute = compute_table(layout, report)
    if compute:
        parts.append(compute)
    if notes:
        parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in notes))
    return "\n\n".join(parts) + "\n"


def regenerate(run_dir: str | Path, split: str = "test") -> str:
    """Rewrite report.md (+ plots) from report.json and the stored per-user files; no refitting."""
    layout = RunLayout(Path(run_dir))
    report = read_json(layout.report(split, "json"))
    if report is None:
        raise FileNotFoundError(f"{layout.report(split, 'json')}: no report; run python -m slim_eval first")
    layout = RunLayout(layout.root, report.get("rationales_from"), report.get("dataset"),
                       report.get("student_file") or RATIONALE_FILES["student"])
    old = layout.report(split, "md")
    command, notes = None, []
    if old.exists():  # keep what only the producing run knew: its command line and notes
        text = old.read_text(encoding="utf-8")
        if "```\n" in text:
            command = text.split("```\n", 1)[1].split("\n```", 1)[0]
        if "\nNotes:\n\n" in text:
            notes = [ln[2:] for ln in text.split("\nNotes:\n\n", 1)[1].splitlines() if ln.startswith("- ")]
    md = markdown(layout, report, command, notes)
    old.write_text(md, encoding="utf-8")
    return md


def combined_table1(reports: Sequence[dict], protocol: str, markdown: bool = True) -> str | None:
    """The paper's Table 1 layout across datasets: rows X, X+, teacher, SLIM, Improv.; columns dataset x metric."""
    reports = [r for r in reports if protocol in r["protocols"]]
    if not reports:
        return None
    header = ["Method"] + [f"{r['dataset']} {m}" for r in reports for m in REPORT_METRICS]
    rows = []
    for backbone in ("gru4rec", "sasrec", "srgnn"):
        variants = [v for v in ("id", "text", "teacher", "slim")
                    if any(_find(r, backbone, v, protocol) for r in reports)]
        if not variants:
            continue
        label = BACKBONE_LABELS[backbone]
        for v in variants:
            cells = []
            for r in reports:
                row = _find(r, backbone, v, protocol)
                cells += [fmt(row["metrics"][m] if row else None) for m in REPORT_METRICS]
            rows.append([VARIANT_LABELS[v].format(X=label), *cells])
        if "slim" in variants:
            imp = [improvement(r, backbone, protocol, m) for r in reports for m in REPORT_METRICS]
            rows.append(["Improv. (%)", *("-" if x is None else f"{100 * x:+.2f}" for x in imp)])
    return (f"Table 1 layout - {PROTOCOL_TITLES[protocol]} (x100, mean ± std over seeds)\n\n"
            + render(header, rows, markdown))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m slim_eval.report RUN_DIR [RUN_DIR ...]``: regenerate report.md + plots, print the tables."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m slim_eval.report", description=main.__doc__)
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--markdown", action="store_true", help="print markdown instead of aligned text")
    args = p.parse_args(argv)
    reports = []
    for d in args.run_dirs:
        regenerate(d, args.split)
        rep = read_json(RunLayout(d).report(args.split, "json"))
        reports.append(rep)
        print(results_table(rep, markdown=args.markdown), end="\n\n")
    if len(reports) > 1:
        for proto in ("full", "sampled"):
            t = combined_table1(reports, proto, markdown=args.markdown)
            if t:
                print(t, end="\n\n")


if __name__ == "__main__":
    main()
