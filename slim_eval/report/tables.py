"""Text and markdown tables built from report.json alone: the main table and the paper's table shapes.

* :func:`results_table`: the main table (backbone x variant, HR@10, HR@20, NDCG@10 per protocol,
  mean +- std over seeds, x100 when printed; fractions in JSON).
* :func:`table1`: the paper's Table 1 shape per backbone: X, X+, teacher (SLIM-), SLIM, and
  "Improv." = SLIM / max(X, X+) - 1 (computed on the means, as the paper does).
* :func:`table2`: the paper's Table 2 shape (text matching: Step1, Step2, Step3, teacher, SLIM).
* :func:`slim_vs_teacher_table`: SLIM vs SLIM- cell by cell (the paper's "22 of 27 cells").
* :func:`combined_table1`: Table 1's layout across several datasets' reports.
* SLIM's fusion chosen on validation: :mod:`.fusion_choice` (appended by :func:`summary_blocks`).
"""
from __future__ import annotations

from typing import Sequence

from .rows import BACKBONE_LABELS, PROTOCOL_TITLES, REPORT_METRICS, VARIANT_LABELS, find_row, row_keys


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
    for backbone, variant in row_keys(report):
        cells = [BACKBONE_LABELS.get(backbone, backbone), variant]
        for p in protos:
            r = find_row(report, backbone, variant, p)
            cells += [fmt(r["metrics"][m] if r else None) for m in REPORT_METRICS]
        rows.append(cells)
    n_seeds = sorted({len(r["seeds"]) for r in report["results"]})
    title = (f"{report['dataset']} - {report['split']} split - mean ± std over {'/'.join(map(str, n_seeds))} "
             f"seed(s), x100 - protocols: " + ", ".join(PROTOCOL_TITLES[p] for p in protos))
    if report.get("user_sample"):
        us = report["user_sample"]
        title += f" - seeded sample of {us['n']} of {us['of']} users (seed {us['seed']})"
    return title + "\n\n" + render(header, rows, markdown, groups)



def improvement(report: dict, backbone: str, protocol: str, metric: str, variant: str = "slim") -> float | None:
    """SLIM / max(X, X+) - 1 on the means (None when SLIM or both baselines are missing)."""
    slim = find_row(report, backbone, variant, protocol)
    bases = [find_row(report, backbone, v, protocol) for v in ("id", "text")]
    bases = [b["metrics"][metric]["mean"] for b in bases if b]
    if not slim or not bases or max(bases) <= 0:
        return None
    return slim["metrics"][metric]["mean"] / max(bases) - 1


def table1(report: dict, protocol: str, markdown: bool = True) -> str | None:
    """Paper Table 1 shape for one protocol; None when no backbone has more than the plain row."""
    header = ["Method", *REPORT_METRICS]
    rows: list[list[str]] = []
    for backbone in [b for b in ("gru4rec", "sasrec", "srgnn") if any(r["backbone"] == b for r in report["results"])]:
        present = [v for v in ("id", "text", "teacher", "slim", "slim-clean") if find_row(report, backbone, v, protocol)]
        if len(present) < 2:
            continue
        label = BACKBONE_LABELS[backbone]
        for v in present:
            r = find_row(report, backbone, v, protocol)
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
        slim, teacher = (find_row(report, backbone, v, protocol) for v in ("slim", "teacher"))
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
        r = find_row(report, "none", v, protocol)
        if r:
            rows.append([VARIANT_LABELS[v], *(fmt(r["metrics"][m]) for m in REPORT_METRICS)])
    if not rows:
        return None
    return (f"Table 2 shape - {report['dataset']}, {report['split']}, {PROTOCOL_TITLES[protocol]} (x100)\n\n"
            + render(["Method", *REPORT_METRICS], rows, markdown))



def summary_blocks(report: dict) -> list[str]:
    """The blocks every page of one report shows first, in order: the data sentence, the main table,
    then per protocol the paper's table shapes that have rows (report.md and docs/RESULTS.md)."""
    from .fusion_choice import fusion_choice_table  # it builds on this module's helpers

    parts = [line] if (line := data_line(report)) else []
    parts.append(results_table(report, markdown=True))
    for p in report["protocols"]:
        parts += [t for t in (table1(report, p), table2(report, p), slim_vs_teacher_table(report, p)) if t]
    if fusion := fusion_choice_table(report):
        parts.append(fusion)
    return parts


def combined_table1(reports: Sequence[dict], protocol: str, markdown: bool = True) -> str | None:
    """The paper's Table 1 layout across datasets: rows X, X+, teacher, SLIM, Improv.; columns dataset x metric."""
    reports = [r for r in reports if protocol in r["protocols"]]
    if not reports:
        return None
    header = ["Method"] + [f"{r['dataset']} {m}" for r in reports for m in REPORT_METRICS]
    rows = []
    for backbone in ("gru4rec", "sasrec", "srgnn"):
        variants = [v for v in ("id", "text", "teacher", "slim")
                    if any(find_row(r, backbone, v, protocol) for r in reports)]
        if not variants:
            continue
        label = BACKBONE_LABELS[backbone]
        for v in variants:
            cells = []
            for r in reports:
                row = find_row(r, backbone, v, protocol)
                cells += [fmt(row["metrics"][m] if row else None) for m in REPORT_METRICS]
            rows.append([VARIANT_LABELS[v].format(X=label), *cells])
        if "slim" in variants:
            imp = [improvement(r, backbone, protocol, m) for r in reports for m in REPORT_METRICS]
            rows.append(["Improv. (%)", *("-" if x is None else f"{100 * x:+.2f}" for x in imp)])
    return (f"Table 1 layout - {PROTOCOL_TITLES[protocol]} (x100, mean ± std over seeds)\n\n"
            + render(header, rows, markdown))


