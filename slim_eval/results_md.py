"""``python -m slim_eval --results-md``: docs/RESULTS.md, docs/HISTORY.md and the README headline block.

Everything is read from ``assets/reports/<name>/report.json`` when this runs, so regenerating a report
and rerunning this is all it takes to bring the pages up to date; nothing is copied by hand.

* The reported runs are the ones ``python -m slim_eval --dataset all`` reproduces (``configs/reported/``):
  they go to docs/RESULTS.md, every table in the shapes of :mod:`slim_eval.report`.
* Every other report directory is an earlier run a newer one replaced: docs/HISTORY.md.
* README.md: the block between ``<!-- results:begin -->`` and ``<!-- results:end -->`` is rewritten with
  the headline table (ML-100K and Amazon Games, sampled NDCG@10) beside the paper's own numbers.

The paired bootstrap intervals need the per-user ``eval/*.npz`` files, which live in the machine-local
``runs/`` and are not shipped; the report that computed them printed them in its ``report.md``, written
by the same command as its ``report.json``. They are read from there, and an interval whose point
estimate disagrees with the ``report.json`` means (a report.md older than its report.json) is refused.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from slim.artifacts.provenance import read_json

from .report.rows import BACKBONE_LABELS, PROTOCOL_TITLES, find_row
from .report.tables import fmt, improvement, render, slim_vs_teacher_cells, summary_blocks

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
BACKBONES = ("sasrec", "gru4rec", "srgnn")

# The paper's Table 1 (ID-based models, Amazon "Games" = Video Games, NDCG@10 x100, mean ± std over
# 5 runs, 1 positive + 100 sampled negatives). "teacher" = X + ChatGPT rationales (SLIM-);
# "improv" = the paper's "Improv. (%)" row, SLIM / max(X, X+) - 1. Source: Wang et al. 2024, Table 1.
PAPER_TABLE1_GAMES_NDCG10 = {
    "gru4rec": {"id": "17.61 ± 0.18", "text": "27.33 ± 0.53", "teacher": "27.70 ± 0.47", "slim": "28.37 ± 0.41",
                "improv": "+3.81%"},
    "sasrec": {"id": "22.73 ± 0.28", "text": "27.46 ± 0.19", "teacher": "31.58 ± 0.35", "slim": "31.43 ± 0.39",
               "improv": "+14.46%"},
    "srgnn": {"id": "16.45 ± 0.22", "text": "21.54 ± 0.64", "teacher": "22.35 ± 1.48", "slim": "23.77 ± 0.20",
              "improv": "+10.35%"},
}

# The README headline: (report name, label, whether the paper's Games numbers sit beside it). The
# 500-user Games sample is the one with teacher rationales for every user, so the only Games SLIM- row.
HEADLINE_RUNS = (
    ("ml-100k", "ML-100K", False),
    ("amazon-video-games", "Amazon Games", True),
    ("amazon-video-games-u500", "Amazon Games, 500 users", True),
)

# Why a report directory is not a current result (docs/HISTORY.md); a directory missing here and from
# configs/reported/ is listed there too, as "not one of the reported runs".
SUPERSEDED = {
    "ml-100k-u300": ("ml-100k", "a seeded 300-user sample, 2 backbones, 3 seeds, the first student; "
                     "replaced by the all-user, 3-backbone, 5-seed grid"),
    "ml-100k-student-v1": ("ml-100k", "the same grid with student v1 (distilled on 137 teacher rationales); "
                           "replaced by student v2"),
    "amazon-video-games-5000users": ("amazon-video-games", "an earlier 5,000-user sample, SASRec and GRU4Rec, "
                                     "2 seeds, no rationale variants; its users are not the current sample's"),
    "ml-100k-student-v2": ("ml-100k", "the same grid with student v2 (plain prompt, free Step 3, distilled on 700 "
                           "teacher rationales written without the domain); replaced by student v4 (domain-aware "
                           "prompt, catalogue-grounded Step 3)"),
    "amazon-video-games-u500-v3": ("amazon-video-games", "the 500-user sample with student v3's rows (plain "
                                   "prompt, free Step 3); replaced by student v4's rows for the same users"),
    "ml-100k-v4-legacy-shortlist": ("ml-100k", "student v4's rows over the shortlist before its hubness "
                                    "correction, with the fusion ablations (zero-initialised gate, leakage-free "
                                    "training); replaced by the rows over the corrected shortlist"),
    "ml-100k-v4-free-step2": ("ml-100k", "student v4's rows over the corrected shortlist with a free Step 2; "
                              "replaced by the same rows with Step 2 grounded in the history's genres"),
    "amazon-video-games-u500-v4-legacy-shortlist": ("amazon-video-games-u500", "the 500-user sample with student "
                                                    "v4's rows over the shortlist before its hubness correction; "
                                                    "replaced by the rows over the corrected shortlist"),
    "amazon-industrial-scientific-v3": ("amazon-industrial-scientific", "the 600-user sample with student v3's rows "
                                        "(plain prompt, free Step 3; 88.8% parse); replaced by student v4's rows "
                                        "for the same users"),
    "amazon-industrial-scientific-allusers": ("amazon-industrial-scientific", "all users, SASRec and GRU4Rec, "
                                              "id / text only, 1-2 seeds; replaced by the 600-user sample "
                                              "that has student rationales"),
}

PROTOCOL_DEFS = (
    "`sampled` = the held-out item ranked among 100 seeded uniform negatives the user never interacted with "
    "(1 positive + 100 sampled negatives, the paper's protocol; chance is NDCG@10 4.50, HR@10 9.90); "
    "`full` = full ranking: every catalogue item, the user's history filtered out. "
    "In the tables `sampled` is titled \"100 sampled negatives\" and `full` \"full ranking\"."
)
VARIANT_DEFS = (
    "X (`id`) = the plain ID backbone; X+ (`text`) = X with item text; SLIM- (`teacher`) = X with item text, "
    "fused with the teacher's rationales; SLIM (`slim`) = the same fusion with the distilled student's "
    "rationales; match = ID-agnostic text matching "
    "(rationale vector vs item-text vector, no IDs); `*-clean` = ours, Step 3 post-filtered. "
    "Improv. = SLIM / max(X, X+) - 1 on the means over seeds, as in the paper."
)


class ReportError(RuntimeError):
    """A report the pages need is malformed or inconsistent."""


# ---------------------------------------------------------------------------------------
# reading the reports
# ---------------------------------------------------------------------------------------

def reported_runs() -> dict[str, list[str]]:
    """Report name -> the flags ``--dataset all`` runs it with (configs/reported/<name>.toml)."""
    from slim.artifacts.reported_runs import reported_runs as configured

    return {run.name: run.argv for run in configured()}


def load_reports(reports_dir: Path) -> dict[str, dict]:
    """Every ``<name>/report.json`` under ``reports_dir``, by directory name (sorted)."""
    out = {}
    for path in sorted(Path(reports_dir).glob("*/report.json")):
        rep = read_json(path)
        if not isinstance(rep, dict) or "results" not in rep or "protocols" not in rep:
            raise ReportError(f"{path}: not a slim_eval report.json (no results / protocols)")
        out[path.parent.name] = rep
    return out


_INTERVAL_TITLES = {"Improv.": ("slim", ("id", "text")), "SLIM / SLIM- - 1": ("slim", ("teacher",))}
_PCT = r"([+-]?\d+(?:\.\d+)?)%"


def intervals(report_md: Path) -> dict[tuple[str, str, str], dict]:
    """The paired bootstrap interval tables of one report.md: (title, backbone, protocol) -> interval.

    ``title`` is "Improv." or "SLIM / SLIM- - 1"; values are fractions like ``report.ratio_interval``'s.
    """
    if not report_md.exists():
        return {}
    back = {v: k for k, v in BACKBONE_LABELS.items()}
    proto = {v: k for k, v in PROTOCOL_TITLES.items()}
    out: dict[tuple[str, str, str], dict] = {}
    title = None
    for line in report_md.read_text(encoding="utf-8").splitlines():
        head = re.match(r"^(Improv\.|SLIM / SLIM- - 1) \(NDCG@10\) with a 95% paired bootstrap interval", line)
        if head:
            title = head.group(1)
            continue
        if title and line.startswith("| ") and not line.startswith("| backbone"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            m = re.fullmatch(rf"\[{_PCT}, {_PCT}\]", cells[3]) if len(cells) == 6 else None
            point = re.fullmatch(_PCT, cells[2]) if len(cells) == 6 else None
            if not (m and point and cells[0] in back and cells[1] in proto):
                raise ReportError(f"{report_md}: unreadable interval row {line!r}")
            out[(title, back[cells[0]], proto[cells[1]])] = {
                "improv": float(point.group(1)) / 100, "lo": float(m.group(1)) / 100, "hi": float(m.group(2)) / 100,
                "p_not_better": float(cells[4]), "seeds": int(cells[5])}
        elif title and line.strip() and not line.startswith("|"):
            title = None
    return out


def checked_interval(report: dict, ivs: dict, title: str, backbone: str, protocol: str) -> dict | None:
    """The interval for one cell, or None; a ReportError when report.md and report.json disagree."""
    iv = ivs.get((title, backbone, protocol))
    if iv is None:
        return None
    variant, bases = _INTERVAL_TITLES[title]
    top = find_row(report, backbone, variant, protocol)
    base = [b["metrics"]["NDCG@10"]["mean"] for b in (find_row(report, backbone, v, protocol) for v in bases) if b]
    if top is None or not base or max(base) <= 0:
        raise ReportError(f"{report['dataset']}: report.md has a {title} interval for {backbone} {protocol} "
                          "that report.json has no rows for (regenerate the report)")
    point = top["metrics"]["NDCG@10"]["mean"] / max(base) - 1
    if abs(point - iv["improv"]) > 0.0006:  # report.md prints 0.1%: a rounding differs by <= 0.05%
        raise ReportError(f"{report['dataset']}: report.md's {title} for {backbone} {protocol} is "
                          f"{100 * iv['improv']:+.1f}%, report.json's means give {100 * point:+.2f}%: report.md is "
                          "older than report.json (regenerate it: python -m slim_eval.report runs/<name>)")
    return iv


def fmt_interval(iv: dict | None) -> str:
    return "-" if iv is None else f"[{100 * iv['lo']:+.1f}%, {100 * iv['hi']:+.1f}%]"


def run_command(name: str, runs: dict[str, list[str]]) -> str | None:
    """The command ``--dataset all`` runs for a reported run (for one that has no report yet)."""
    return "python -m slim_eval --split test " + " ".join(runs[name]) if name in runs else None


def produced_by(report_md: Path) -> str | None:
    """The command a report.md says produced it (``slim_eval.report.markdown.markdown`` writes it first)."""
    if not report_md.exists():
        return None
    text = report_md.read_text(encoding="utf-8")
    if "Produced by:\n\n```\n" not in text:
        return None
    return text.split("Produced by:\n\n```\n", 1)[1].split("\n```", 1)[0].strip() or None


# ---------------------------------------------------------------------------------------
# the README headline
# ---------------------------------------------------------------------------------------

def headline_rows(reports: dict[str, dict], reports_dir: Path) -> tuple[list[list[str]], list[str]]:
    """(table rows, notes): one row per headline run x backbone, sampled NDCG@10."""
    rows, notes = [], []
    for name, label, paper in HEADLINE_RUNS:
        rep = reports.get(name)
        if rep is None:
            notes.append(f"{label}: no `assets/reports/{name}/report.json` yet, so it is not in this table.")
            continue
        if "sampled" not in rep["protocols"]:
            notes.append(f"{label}: its report has no `sampled` rows.")
            continue
        ivs = intervals(reports_dir / name / "report.md")
        for b in BACKBONES:
            cells = {v: find_row(rep, b, v, "sampled") for v in ("id", "text", "teacher", "slim")}
            if not any(cells.values()):
                continue
            seeds = sorted({len(r["seeds"]) for r in cells.values() if r})
            imp = improvement(rep, b, "sampled", "NDCG@10")
            iv = checked_interval(rep, ivs, "Improv.", b, "sampled")
            pp = PAPER_TABLE1_GAMES_NDCG10[b] if paper else {}
            rows.append([label, BACKBONE_LABELS[b], "sampled", "/".join(map(str, seeds)),
                         *(fmt(r["metrics"]["NDCG@10"]) if r else "-" for r in cells.values()),
                         "-" if imp is None else f"{100 * imp:+.1f}%", fmt_interval(iv),
                         *(pp.get(k, "-") for k in ("id", "text", "teacher", "slim", "improv"))])
    return rows, notes


HEADLINE_HEADER = ["run", "backbone", "protocol", "seeds", "X", "X+", "SLIM-", "SLIM", "Improv.", "95% interval",
                   "paper X", "paper X+", "paper SLIM-", "paper SLIM", "paper Improv."]


def interval_summary(rows: list[list[str]]) -> str:
    """One generated sentence: how many Improv. intervals lie above, below or across 0."""
    ivs = [r[9] for r in rows if r[9] != "-"]
    lo_hi = [tuple(float(x) for x in re.findall(r"[+-]\d+(?:\.\d+)?", iv)) for iv in ivs]
    above = sum(lo > 0 for lo, _ in lo_hi)
    below = sum(hi < 0 for _, hi in lo_hi)
    return (f"Of the {len(ivs)} rows with an interval, SLIM is above max(X, X+) in {above}, below it in {below}, "
            f"and within the noise in {len(ivs) - above - below}.")


def headline_block(reports: dict[str, dict], reports_dir: Path) -> str:
    rows, notes = headline_rows(reports, reports_dir)
    cells = [c for name, _, _ in HEADLINE_RUNS if name in reports
             for c in slim_vs_teacher_cells(reports[name], "sampled")]
    parts = [BEGIN,
             "<!-- generated by `python -m slim_eval --results-md` from assets/reports/*/report.json; "
             "do not edit by hand -->",
             "NDCG@10 x100, mean ± std over the seeds in the `seeds` column, `sampled` protocol (1 positive + 100 "
             "sampled negatives). Improv. = SLIM / max(X, X+) - 1 on the means; the interval is the report's 95% "
             "paired bootstrap over users. The `paper` columns are the paper's Table 1 for Amazon Games "
             "(ChatGPT teacher, LLaMA2-7B student); the paper has no ML-100K.",
             "", render(HEADLINE_HEADER, rows, markdown=True), ""]
    if rows:
        parts.append(interval_summary(rows))
    if cells:
        parts.append(f"SLIM is above SLIM- in {sum(c['slim_wins'] for c in cells)} of {len(cells)} sampled cells "
                     f"(HR@10, HR@20, NDCG@10 x backbones, runs with both; paper: 22 of 27).")
    parts += notes
    parts.append(END)
    return "\n".join(p for p in parts if p is not None)


def replace_block(text: str, block: str, where: str = "README.md") -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ReportError(f"{where}: needs exactly one {BEGIN} ... {END} pair")
    head, rest = text.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def readme_block(text: str) -> str:
    """The current block of a README text, markers included."""
    if BEGIN not in text or END not in text:
        raise ReportError(f"no {BEGIN} ... {END} block")
    return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END


# ---------------------------------------------------------------------------------------
# docs/RESULTS.md and docs/HISTORY.md
# ---------------------------------------------------------------------------------------

def _interval_section(report: dict, ivs: dict, title: str) -> str | None:
    rows = []
    for p in report["protocols"]:
        for b in BACKBONES:
            iv = checked_interval(report, ivs, title, b, p)
            if iv:
                rows.append([BACKBONE_LABELS[b], p, f"{100 * iv['improv']:+.1f}%", fmt_interval(iv),
                             f"{iv['p_not_better']:.3f}", str(iv["seeds"])])
    if not rows:
        return None
    what = "SLIM <= max(X, X+)" if title == "Improv." else "SLIM <= SLIM-"
    return (f"{title} (NDCG@10) with its 95% paired bootstrap interval over the users (2,000 resamples; "
            f"P = share of resamples where {what}):\n\n"
            + render(["backbone", "protocol", title, "95% interval", "P(not better)", "seeds"], rows, True))


def run_section(name: str, report: dict, reports_dir: Path, preface: str | None = None) -> str:
    link = f"../assets/reports/{name}/report.md"
    parts = [f"## {name}", preface, f"Report: [{link[3:]}]({link}) (plots, compute per stage, notes)."]
    command = produced_by(reports_dir / name / "report.md")
    if command:
        parts.append(f"Produced by `{command}`.")
    parts += summary_blocks(report)
    ivs = intervals(reports_dir / name / "report.md")
    for title in _INTERVAL_TITLES:
        t = _interval_section(report, ivs, title)
        if t:
            parts.append(t)
    return "\n\n".join(p for p in parts if p)


def results_md(reports: dict[str, dict], reports_dir: Path, runs: dict[str, list[str]]) -> str:
    parts = ["# Results",
             "<!-- generated by `python -m slim_eval --results-md` from assets/reports/*/report.json; "
             "do not edit by hand -->",
             "Every number below is read from a shipped `assets/reports/<name>/report.json` (the intervals from the "
             "`report.md` the same command wrote). Numbers x100, mean ± std over seeds. Earlier runs that newer ones "
             "replaced are in [HISTORY.md](HISTORY.md).",
             f"Protocols: {PROTOCOL_DEFS}", f"Variants: {VARIANT_DEFS}",
             "Models are selected on validation NDCG@10 (full ranking); test is computed once per fitted model."]
    missing = [n for n in runs if n not in reports]
    if missing:
        parts.append("Not generated yet (no report.json): " + ", ".join(
            f"`{n}` (`{run_command(n, runs)}`)" for n in missing) + ".")
    cells = {p: [c for n in runs if n in reports and p in reports[n]["protocols"]
                 for c in slim_vs_teacher_cells(reports[n], p)] for p in ("sampled", "full")}
    for p, cs in cells.items():
        if cs:
            parts.append(f"SLIM above SLIM- ({p}): {sum(c['slim_wins'] for c in cs)} of {len(cs)} cells over the runs "
                         "that have both (paper: 22 of 27, sampled).")
    for name in runs:
        if name in reports:
            parts.append(run_section(name, reports[name], reports_dir))
    return "\n\n".join(parts) + "\n"


def history_md(reports: dict[str, dict], reports_dir: Path, runs: dict[str, list[str]]) -> str:
    parts = ["# Earlier runs",
             "<!-- generated by `python -m slim_eval --results-md`; do not edit by hand -->",
             "Reports kept for the record: each was replaced by a newer run (current results: "
             "[RESULTS.md](RESULTS.md)). "
             f"Protocols: {PROTOCOL_DEFS}"]
    old = [n for n in reports if n not in runs]
    if not old:
        parts.append("(none)")
    for name in old:
        newer, why = SUPERSEDED.get(name, (None, "not one of the runs `python -m slim_eval --dataset all` reproduces"))
        preface = f"Superseded by [{newer}](RESULTS.md#{newer}): {why}." if newer else f"{why[0].upper()}{why[1:]}."
        parts.append(run_section(name, reports[name], reports_dir, preface))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------

def generate(reports_dir: Path = ROOT / "assets" / "reports", docs_dir: Path = ROOT / "docs",
             readme: Path | None = ROOT / "README.md", runs: dict[str, list[str]] | None = None) -> dict[str, Path]:
    """Write RESULTS.md and HISTORY.md into ``docs_dir`` and the headline block into ``readme``."""
    reports_dir, docs_dir = Path(reports_dir), Path(docs_dir)
    runs = reported_runs() if runs is None else runs
    reports = load_reports(reports_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for fname, text in (("RESULTS.md", results_md(reports, reports_dir, runs)),
                        ("HISTORY.md", history_md(reports, reports_dir, runs))):
        (docs_dir / fname).write_text(text, encoding="utf-8")
        written[fname] = docs_dir / fname
    if readme is not None:
        readme = Path(readme)
        new = replace_block(readme.read_text(encoding="utf-8"), headline_block(reports, reports_dir), str(readme))
        readme.write_text(new, encoding="utf-8")
        written["README.md"] = readme
    return written


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    written = generate()
    for path in written.values():
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return written
