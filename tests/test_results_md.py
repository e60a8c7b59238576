"""slim_eval.results_md: docs/RESULTS.md, docs/HISTORY.md and the README headline, from the shipped reports.

The generator runs on copies (report.json + report.md of every ``assets/reports/<name>``) in a temp dir,
so nothing in the checkout is written. The committed README block and docs must equal what the
generator makes from the committed reports: a report regenerated without rerunning
``python -m slim_eval --results-md`` fails here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slim_eval import results_md as rm
from slim_eval.report.rows import find_row
from slim_eval.report.tables import fmt, improvement

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "assets" / "reports"


def _copy_reports(dst: Path, skip: tuple[str, ...] = ()) -> Path:
    for rep in REPORTS.glob("*/report.json"):
        if rep.parent.name in skip:
            continue
        (dst / rep.parent.name).mkdir(parents=True)
        for f in ("report.json", "report.md"):
            if (rep.parent / f).exists():
                shutil.copy(rep.parent / f, dst / rep.parent.name / f)
    return dst


@pytest.fixture
def tmp_tree(tmp_path):
    reports = _copy_reports(tmp_path / "reports")
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    return reports, tmp_path / "docs", readme


def test_headline_shows_every_report_number(tmp_tree):
    reports_dir, docs, readme = tmp_tree
    rm.generate(reports_dir, docs, readme)
    block = rm.readme_block(readme.read_text(encoding="utf-8"))
    reports = rm.load_reports(reports_dir)
    shown = 0
    for name, label, paper in rm.HEADLINE_RUNS:
        assert name in reports, f"headline run {name} has no shipped report"
        rep = reports[name]
        ivs = rm.intervals(reports_dir / name / "report.md")
        for b in rm.BACKBONES:
            rows = [line for line in block.splitlines() if line.startswith(f"| {label} | {rm.BACKBONE_LABELS[b]} |")]
            assert len(rows) == 1, (label, b)
            row = rows[0]
            assert "| sampled |" in row
            for v in ("id", "text", "teacher", "slim"):
                r = find_row(rep, b, v, "sampled")
                if r:
                    assert f"| {fmt(r['metrics']['NDCG@10'])} |" in row, (name, b, v)
                    assert f"| {len(r['seeds'])} |" in row
                    shown += 1
            imp = improvement(rep, b, "sampled", "NDCG@10")
            if imp is not None:
                assert f"| {100 * imp:+.1f}% |" in row
            iv = ivs.get(("Improv.", b, "sampled"))
            if iv:
                assert f"[{100 * iv['lo']:+.1f}%, {100 * iv['hi']:+.1f}%]" in row
            if paper:
                assert f"| {rm.PAPER_TABLE1_GAMES_NDCG10[b]['slim']} |" in row
    assert shown >= 3 * 3 * 3  # ML-100K 4 variants, Games 3, Games-500 4, for 3 backbones


def test_committed_readme_block_is_current():
    reports = rm.load_reports(REPORTS)
    expected = rm.headline_block(reports, REPORTS)
    got = rm.readme_block((ROOT / "README.md").read_text(encoding="utf-8"))
    assert got == expected, "README.md's results block is stale: run python -m slim_eval --results-md"


def test_committed_docs_are_current(tmp_tree):
    reports_dir, docs, readme = tmp_tree
    rm.generate(REPORTS, docs, readme)  # the real reports: links and names as committed
    for name in ("RESULTS.md", "HISTORY.md"):
        assert (ROOT / "docs" / name).read_text(encoding="utf-8") == (docs / name).read_text(encoding="utf-8"), (
            f"docs/{name} is stale: run python -m slim_eval --results-md")


def test_reported_runs_in_results_the_rest_in_history(tmp_tree):
    reports_dir, docs, readme = tmp_tree
    rm.generate(reports_dir, docs, readme)
    results, history = ((docs / n).read_text(encoding="utf-8") for n in ("RESULTS.md", "HISTORY.md"))
    heads = lambda text: {ln[3:] for ln in text.splitlines() if ln.startswith("## ")}  # noqa: E731
    assert heads(results) == set(rm.reported_runs()) & set(rm.load_reports(reports_dir))
    assert set(rm.SUPERSEDED) <= heads(history)
    assert not heads(results) & heads(history)
    # protocol named beside the numbers, intervals carried
    assert "100 sampled negatives: NDCG@10" in results and "full ranking: NDCG@10" in results
    assert "95% interval" in results


def test_missing_report_is_skipped_with_a_note(tmp_path):
    reports_dir = _copy_reports(tmp_path / "reports", skip=("amazon-video-games",))
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    rm.generate(reports_dir, tmp_path / "docs", readme)
    block = rm.readme_block(readme.read_text(encoding="utf-8"))
    assert "Amazon Games: no `assets/reports/amazon-video-games/report.json` yet" in block
    assert "| Amazon Games | SASRec |" not in block and "| ML-100K | SASRec |" in block
    results = (tmp_path / "docs" / "RESULTS.md").read_text(encoding="utf-8")
    assert "Not generated yet (no report.json): `amazon-video-games`" in results


def test_report_md_older_than_report_json_is_an_error(tmp_path):
    reports_dir = _copy_reports(tmp_path / "reports")
    path = reports_dir / "ml-100k" / "report.json"
    rep = json.loads(path.read_text())
    row = find_row(rep, "sasrec", "slim", "sampled")
    row["metrics"]["NDCG@10"]["mean"] *= 1.05  # a refit whose report.md was not rewritten
    path.write_text(json.dumps(rep))
    with pytest.raises(rm.ReportError, match="report.md is older than report.json"):
        rm.headline_block(rm.load_reports(reports_dir), reports_dir)


def test_readme_needs_one_marker_pair(tmp_path):
    with pytest.raises(rm.ReportError, match="exactly one"):
        rm.replace_block("no markers here", "x")
    text = f"a\n{rm.BEGIN}\nold\n{rm.END}\nb\n"
    assert rm.replace_block(text, f"{rm.BEGIN}\nnew\n{rm.END}") == f"a\n{rm.BEGIN}\nnew\n{rm.END}\nb\n"
