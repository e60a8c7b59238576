"""slim_eval end to end on a real slice of ML-100K (60 seeded users, 2 epochs), plus its pure helpers.

The CLI is driven through ``slim_eval.__main__.main(argv)`` (the same code path as
``python -m slim_eval``, without paying for a second interpreter start). Every run writes into a
tmp ``--out``; nothing touches runs/.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from slim.artifacts.layout import RunLayout
from slim.artifacts.provenance import load_npz, make_record, matches, mismatch, read_json, save_npz
from slim_eval.__main__ import main
from slim_eval.inputs import rationale_text
from slim_eval.report.compute import compute_rows
from slim_eval.report.fusion_choice import chosen_fusion, fusion_choice_table
from slim_eval.report.markdown import regenerate
from slim_eval.report.per_user import sparsity_groups
from slim_eval.report.rows import REPORT_METRICS
from slim_eval.report.tables import (combined_table1, improvement, slim_vs_teacher_cells, slim_vs_teacher_table,
                                     table1, table2)
from slim_eval.variants import producer_command, run_name, spec

# --no-shipped: these runs start from nothing (no shipped rationales or checkpoints from assets/)
BASE = ["--dataset", "ml-100k", "--users", "60", "--epochs", "2", "--seeds", "2", "--backbones", "sasrec",
        "--no-progress", "--no-shipped"]
METRICS = {"HR@10", "HR@20", "NDCG@10"}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data_dir):
    """One real run: id + text fitted, teacher + slim reported missing."""
    out = tmp_path_factory.mktemp("eval")
    t0 = time.perf_counter()
    report = main([*BASE, "--variants", "id,text,teacher,slim", "--out", str(out), "--split", "test"])
    return out, report, time.perf_counter() - t0


def checkpoint_state(out: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime for p in (out / "checkpoints").glob("*/model.safetensors")}


def test_report_json_schema(first_run):
    out, report, _ = first_run
    on_disk = read_json(out / "report.json")
    assert on_disk == report
    assert set(on_disk) == {"dataset", "split", "protocols", "user_sample", "results", "data"}
    # the evaluated sample's own statistics, not the full dataset's
    assert on_disk["data"]["users"] == 60 and on_disk["data"]["items"] == 1682
    assert on_disk["data"]["min_length"] >= 3 and on_disk["data"]["interactions"] >= 60 * on_disk["data"]["min_length"]
    assert on_disk["dataset"] == "ml-100k" and on_disk["split"] == "test"
    assert on_disk["protocols"] == ["full", "sampled"]
    assert on_disk["user_sample"] == {"n": 60, "of": 943, "seed": 0}
    keys = {(r["backbone"], r["variant"], r["protocol"]) for r in on_disk["results"]}
    assert keys == {("sasrec", v, p) for v in ("id", "text") for p in ("full", "sampled")}
    for r in on_disk["results"]:
        assert set(r) == {"backbone", "variant", "protocol", "metrics", "seeds", "best_epoch", "valid_NDCG@10"}
        assert set(r["metrics"]) == METRICS
        for ms in r["metrics"].values():
            assert set(ms) == {"mean", "std"}
            assert 0.0 <= ms["mean"] <= 1.0 and ms["std"] >= 0.0  # fractions, not x100
        assert r["seeds"] == [0, 1]
        assert len(r["best_epoch"]) == 2 and all(1 <= e <= 2 for e in r["best_epoch"])
    # sampled ranking among 101 candidates is never harder than ranking among all items
    for v in ("id", "text"):
        full = next(r for r in on_disk["results"] if r["variant"] == v and r["protocol"] == "full")
        samp = next(r for r in on_disk["results"] if r["variant"] == v and r["protocol"] == "sampled")
        assert samp["metrics"]["HR@10"]["mean"] >= full["metrics"]["HR@10"]["mean"]


def test_report_md_and_per_user_files(first_run):
    out, report, _ = first_run
    md = (out / "report.md").read_text()
    assert "python -m slim_eval" in md and "--users 60" in md
    assert "full ranking" in md and "100 sampled negatives" in md
    assert "Data: a seeded sample of 60 of 943 users (seed 0); 60 users, 1,682 items" in md
    assert "± " in md
    layout = RunLayout(out)
    for v in ("id", "text"):
        for seed in (0, 1):
            rec, arr = load_npz(layout.eval_file("test", run_name("sasrec", v, seed), "full"))
            assert arr["ranks"].shape == (60,) and arr["ranks"].min() >= 1
            assert arr["topk"].shape == (60, 10)
            assert {"EPC@10", "EFD@10"} <= set(rec["metrics"])
            # stored ranks reproduce the reported metric
            assert rec["metrics"]["HR@10"] == pytest.approx(float((arr["ranks"] <= 10).mean()))
    # the Table-1 shape has X and X+ rows but no Improv. without SLIM
    t1 = table1(report, "sampled")
    assert "SASRec+ (item text)" in t1 and "Improv." not in t1
    assert table2(report, "full") is None


def test_missing_variants_name_their_command(first_run, capsys, tmp_path):
    out = tmp_path / "missing"
    main([*BASE, "--variants", "teacher,slim,match-step2", "--out", str(out)])
    text = capsys.readouterr().out
    assert "skipped teacher" in text and "python -m slim_train teach --dataset ml-100k" in text
    assert "skipped slim" in text and "python -m slim_train reason --dataset ml-100k" in text
    assert "skipped match-step2" in text
    assert "nothing was measured" in text
    md = (first_run[0] / "report.md").read_text()
    assert "python -m slim_train teach" in md  # the first run's skips are recorded in its report


def test_default_variants_are_whatever_exists(first_run, capsys):
    """The default (auto) asks for every reported variant (the *-clean ones only when named); with no
    rationale files only id and text run, and each missing variant is named with its producer command.
    Reuses the first run's checkpoints."""
    from slim_eval.__main__ import parse_args

    assert parse_args([]).variant_list == ["id", "text", "teacher", "slim", "slim-gated", "match", "match-step1",
                                           "match-step2", "match-step3", "match-teacher"]
    assert parse_args(["--variants", "slim,slim-clean"]).variant_list == ["slim", "slim-clean"]
    out, _, _ = first_run
    report = main([*BASE, "--out", str(out), "--split", "test"])
    text = capsys.readouterr().out
    assert {r["variant"] for r in report["results"]} == {"id", "text"}
    for v in ("teacher", "slim", "slim-gated", "match", "match-step1", "match-teacher"):
        assert f"skipped {v}" in text
    assert "python -m slim_train reason --dataset ml-100k" in text


def test_rerun_reuses_checkpoints_and_measurements(first_run, capsys, monkeypatch):
    import slim_eval.__main__ as entry

    out, report, first_seconds = first_run
    before = checkpoint_state(out)
    assert len(before) == 4  # id + text, 2 seeds
    written = []  # report.md renders; a fully reused model must not trigger one (only the final write)
    render_md = entry.markdown
    monkeypatch.setattr(entry, "markdown", lambda *a, **k: written.append(1) or render_md(*a, **k))
    t0 = time.perf_counter()
    again = main([*BASE, "--variants", "id,text", "--out", str(out), "--split", "test"])
    seconds = time.perf_counter() - t0
    assert checkpoint_state(out) == before  # nothing retrained
    assert again["results"] == report["results"]  # identical numbers
    assert capsys.readouterr().out.count("(reused)") == 8  # 4 models x 2 protocols
    final = (out / "report.md").read_text()
    assert len(written) == 1 and "wall time of this invocation" in final and "in progress" not in final
    assert seconds < first_seconds


def test_a_grid_of_quick_models_rebuilds_the_in_progress_report_at_most_every_30_s(first_run, tmp_path, monkeypatch):
    """Loading (or quickly fitting) many models must not rebuild report.md after each one."""
    import shutil

    import slim_eval.__main__ as entry
    from slim_eval.pipeline import REPORT_EVERY_S

    assert REPORT_EVERY_S == 30.0
    out = tmp_path / "quick"
    shutil.copytree(first_run[0] / "text-cache", RunLayout(out).text_cache_dir)
    written = []
    render_md = entry.markdown
    monkeypatch.setattr(entry, "markdown", lambda *a, **k: written.append(1) or render_md(*a, **k))
    t0 = time.perf_counter()
    main([*BASE, "--epochs", "1", "--variants", "id,text", "--out", str(out), "--protocol", "sampled"])
    if time.perf_counter() - t0 < REPORT_EVERY_S:
        assert len(written) == 2  # after the first new model, then the final report (4 models measured)


def test_valid_split_reuses_checkpoints(first_run):
    out, test_report, _ = first_run
    before = checkpoint_state(out)
    valid = main([*BASE, "--variants", "id,text", "--out", str(out), "--split", "valid", "--protocol", "full"])
    assert checkpoint_state(out) == before
    assert valid["split"] == "valid" and valid["protocols"] == ["full"]
    assert (out / "report-valid.json").exists() and read_json(out / "report.json") == test_report
    # valid metrics from the stored ranks equal the checkpoint's own early-stopping record
    ckpt = next((out / "checkpoints").glob("sasrec-id-seed0-*"))
    rec = json.loads((ckpt / "config.json").read_text())
    row = next(r for r in valid["results"] if r["variant"] == "id")
    _, arr = load_npz(RunLayout(out).eval_file("valid", "sasrec-id-seed0", "full"))
    assert float((arr["ranks"] <= 10).mean()) == pytest.approx(rec["valid_metrics"]["HR@10"])
    assert row["best_epoch"][0] == rec["best_epoch"]
    # the report row carries the validation score that selected the fit (what fusion choices read)
    seeds = [json.loads(p.read_text())["valid_metrics"]["NDCG@10"]
             for p in sorted((out / "checkpoints").glob("sasrec-id-seed*-*/config.json"))]
    assert row["valid_NDCG@10"]["mean"] == pytest.approx(sum(seeds) / len(seeds))


def test_regenerate_without_refit(first_run):
    out, report, _ = first_run
    before = checkpoint_state(out)
    md = regenerate(out)
    assert "Popularity bias" in md and "EFD@10" in md
    assert "python -m slim_eval" in md and "wall time of this invocation" in md  # command + notes kept
    assert (out / "plots" / "sparsity-test-sasrec-full.png").stat().st_size > 1000
    assert (out / "plots" / "longtail-test-sasrec.png").stat().st_size > 1000
    groups = sparsity_groups(RunLayout(out), report, "sasrec", "id")
    assert len(groups["bounds"]) == 5 and groups["bounds"][0][0] <= groups["bounds"][-1][0]
    assert checkpoint_state(out) == before


def test_compute_per_stage_adds_up_the_artefacts(first_run, tmp_path):
    """Fit hours come from the checkpoints' epoch timings; a rationale copied into two files is paid once."""
    import shutil

    out, report, _ = first_run
    rows = {r["stage"]: r for r in compute_rows(RunLayout(out), report)}
    assert set(rows) == {"fit sasrec id", "fit sasrec text"}
    for r in rows.values():
        assert r["units"] == 2 and r["seconds"] > 0
    ckpts = [read_json(p) for p in (out / "checkpoints").glob("sasrec-id-*/config.json")]
    expect = sum(h["train_seconds"] + h.get("eval_seconds", 0.0) for c in ckpts for h in c["history"])
    assert rows["fit sasrec id"]["seconds"] == pytest.approx(expect)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("text-cache"))
    row = {"user_id": "1", "split": "valid", "model": "m", "prompt_hash": "h", "created": "t", "seconds": 7.5}
    for name in ("teacher.jsonl", "teacher-copy.jsonl"):
        path = RunLayout(copy).rationales(name[:-6])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row) + "\n" + '{"torn')
    got = {r["stage"]: r for r in compute_rows(RunLayout(copy), report)}
    assert got["rationales/teacher.jsonl"]["units"] == 1 and got["rationales/teacher.jsonl"]["seconds"] == 7.5
    assert got["rationales/teacher.jsonl"]["paid"] + got["rationales/teacher-copy.jsonl"]["paid"] == 7.5
    # a report that names the files it read counts those only, not the others in the folder
    named = {**report, "rationale_files": {"teacher": str(RunLayout(copy).rationales("teacher"))}}
    assert {r["stage"] for r in compute_rows(RunLayout(copy), named) if r["stage"].startswith("rationales/")} == {
        "rationales/teacher.jsonl"}
    assert "Compute per stage" in regenerate(copy)


def _write_rationales(path: Path, user_ids, coverage: float) -> None:
    rows = []
    for k, uid in enumerate(user_ids):
        if k >= coverage * len(user_ids):
            break
        for split in ("valid", "test"):
            steps = [f"likes drama {k}", "Drama, Romance", "Titanic (1997)"]
            rows.append({"user_id": str(uid), "user_idx": k, "split": split, "rationale": "\n".join(steps),
                         "steps": steps, "status": "ok"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_rationale_variants_fit_and_low_coverage_is_refused(first_run, tmp_path, capsys, data_dir):
    import shutil

    from slim.data.dataset import load_dataset, sample_users

    ds = load_dataset("ml-100k")
    ids = ds.user_ids[sample_users(ds, 60, seed=0)]
    out = tmp_path / "rat"
    shutil.copytree(first_run[0] / "text-cache", RunLayout(out).text_cache_dir)  # item vectors: encoded once
    _write_rationales(RunLayout(out).rationales("student"), ids, coverage=1.0)
    _write_rationales(RunLayout(out).rationales("teacher"), ids, coverage=0.5)
    report = main([*BASE, "--seeds", "1", "--epochs", "1", "--variants", "slim,slim-clean,match-step3,teacher",
                   "--out", str(out), "--protocol", "sampled"])
    text = capsys.readouterr().out
    assert "skipped teacher" in text and "50.0%" in text
    keys = {(r["backbone"], r["variant"]) for r in report["results"]}
    assert keys == {("sasrec", "slim"), ("sasrec", "slim-clean"), ("none", "match-step3")}
    assert "SLIM-Step3" in table2(report, "sampled")
    assert "SLIM (SASRec), Step 3 post-filtered (ours)" in table1(report, "sampled")
    assert len(list((out / "checkpoints").glob("sasrec-slim-clean-seed0-*"))) == 1  # apart from plain slim


def test_a_second_sample_reads_another_runs_rationales(first_run, tmp_path, capsys):
    """``--rationales-from``: own checkpoints and report, shared rationale files; regenerate keeps it."""
    import shutil

    from slim.data.dataset import load_dataset, sample_users

    ds = load_dataset("ml-100k")
    shared = tmp_path / "shared"
    _write_rationales(RunLayout(shared).rationales("student"), ds.user_ids[sample_users(ds, 60, seed=0)], 1.0)
    out = tmp_path / "sample"
    shutil.copytree(first_run[0] / "text-cache", RunLayout(out).text_cache_dir)
    report = main([*BASE, "--seeds", "1", "--epochs", "1", "--variants", "match-step3,teacher", "--out", str(out),
                   "--protocol", "sampled", "--rationales-from", str(shared)])
    text = capsys.readouterr().out
    assert {r["variant"] for r in report["results"]} == {"match-step3"}
    assert not (out / "rationales").exists() and report["rationales_from"] == str(shared)
    # the teacher's command writes where this run reads, for this run's sample
    assert f"--out {shared}" in text and "--eval-users 60 --seed 0" in text
    md = regenerate(out)
    # the compute table counts the shared file's 120 rows (60 users x 2 splits); notes would not show that
    assert "| rationales/student.jsonl | 120 |" in md


# ---- pure helpers ----------------------------------------------------------------------------

def test_variant_specs_and_names():
    assert spec("match-step2").step == 2 and not spec("match-step2").has_backbone
    assert spec("teacher").rationales == "teacher" and spec("slim").rationales == "student"
    assert run_name("gru4rec", "match-teacher", 3) == "none-match-teacher-seed3"
    assert run_name("srgnn", "text", 0) == "srgnn-text-seed0"
    assert spec("slim-clean").clean_step3 and spec("slim-clean").has_backbone
    assert run_name("sasrec", "slim-clean", 1) == "sasrec-slim-clean-seed1"
    with pytest.raises(ValueError, match="match-step1"):
        spec("match-step4")


def test_rationale_text_rules():
    ok = {"status": "ok", "steps": ["a", "b", "c"], "rationale": "raw"}
    assert rationale_text(ok) == "a\nb\nc"
    assert rationale_text(ok, step=2) == "b"
    assert rationale_text({"status": "ok", "steps": None, "rationale": " raw "}) == "raw"
    assert rationale_text({"status": "rejected: no steps", "steps": None, "rationale": "x"}) is None


def test_improvement_is_slim_over_best_baseline():
    def row(v, m):
        return {"backbone": "sasrec", "variant": v, "protocol": "sampled",
                "metrics": {k: {"mean": m, "std": 0.0} for k in METRICS}, "seeds": [0], "best_epoch": [1]}
    report = {"dataset": "d", "split": "test", "protocols": ["sampled"], "user_sample": None,
              "results": [row("id", 0.2273), row("text", 0.2746), row("teacher", 0.3158), row("slim", 0.3143)]}
    # paper Table 1, SASRec on Games, NDCG@10: Improv. 14.46%
    assert improvement(report, "sasrec", "sampled", "NDCG@10") == pytest.approx(0.1446, abs=5e-4)
    t = table1(report, "sampled")
    assert "Improv. (%)" in t and "+14.46" in t and "SLIM (SASRec)" in t
    other = {**report, "dataset": "e", "results": report["results"][:2]}
    wide = combined_table1([report, other], "sampled")
    assert "d NDCG@10" in wide and "e NDCG@10" in wide and "+14.46" in wide
    clean = {**report, "results": [*report["results"], row("slim-clean", 0.3021)]}  # 0.3021 / 0.2746 - 1 = +10.01%
    assert improvement(clean, "sasrec", "sampled", "NDCG@10", "slim-clean") == pytest.approx(0.1001, abs=5e-4)
    assert "Improv. of the post-filtered SLIM (%) | +10.01" in table1(clean, "sampled")


def test_fusion_is_chosen_on_validation_never_on_test():
    def row(v, backbone, valid, test):
        return {"backbone": backbone, "variant": v, "protocol": "sampled", "seeds": [0, 1], "best_epoch": [1, 1],
                "metrics": {k: {"mean": test, "std": 0.0} for k in METRICS},
                "valid_NDCG@10": {"mean": valid, "std": 0.0}}
    results = [row("id", "sasrec", 0.05, 0.20), row("text", "sasrec", 0.06, 0.25),
               # the gate wins on validation and loses on test: validation decides
               row("slim", "sasrec", 0.07, 0.30), row("slim-gated", "sasrec", 0.08, 0.26),
               # a tie keeps the paper's concatenation
               row("id", "gru4rec", 0.05, 0.20), row("slim", "gru4rec", 0.07, 0.21), row("slim-gated", "gru4rec", 0.07, 0.29)]
    report = {"dataset": "d", "split": "test", "protocols": ["sampled"], "user_sample": None, "results": results}
    assert chosen_fusion(report, "sasrec") == "slim-gated" and chosen_fusion(report, "gru4rec") == "slim"
    assert chosen_fusion(report, "srgnn") is None
    table = fusion_choice_table(report)
    # SASRec: the gate's test 26.00 and its Improv. 0.26 / 0.25 - 1 = +4.00% are reported, not concatenation's 30.00
    assert "| SASRec | 7.00 ± 0.00 | 8.00 ± 0.00 | zero-initialised gate (ours) | 26.00 ± 0.00 | +4.00% |" in table
    assert "| GRU4Rec | 7.00 ± 0.00 | 7.00 ± 0.00 | concatenation (paper) | 21.00 ± 0.00 | +5.00% |" in table
    assert "SRGNN" not in table
    # rows written before the validation score was kept, or fitted with other seeds, make no choice
    old = {**report, "results": [{k: v for k, v in r.items() if k != "valid_NDCG@10"} for r in results]}
    assert chosen_fusion(old, "sasrec") is None and fusion_choice_table(old) is None
    other_seeds = {**report, "results": [*results[:3], {**results[3], "seeds": [0]}]}
    assert chosen_fusion(other_seeds, "sasrec") is None


def test_slim_vs_teacher_counts_cells_as_the_paper_does(capsys):
    # paper Table 1, SASRec on Games: SLIM- (ChatGPT rationale) vs SLIM; SLIM is higher on HR@10, HR@20, not NDCG@10
    paper = {"teacher": {"HR@10": 0.5083, "HR@20": 0.6345, "NDCG@10": 0.3158},
             "slim": {"HR@10": 0.5111, "HR@20": 0.6410, "NDCG@10": 0.3143}}
    rows = [{"backbone": "sasrec", "variant": v, "protocol": "sampled", "seeds": [0], "best_epoch": [1],
             "metrics": {k: {"mean": paper[v][k], "std": 0.0} for k in REPORT_METRICS}} for v in paper]
    report = {"dataset": "d", "split": "test", "protocols": ["sampled"], "user_sample": None, "results": rows}
    cells = slim_vs_teacher_cells(report, "sampled")
    assert [(c["metric"], c["slim_wins"]) for c in cells] == [("HR@10", True), ("HR@20", True), ("NDCG@10", False)]
    table = slim_vs_teacher_table(report, "sampled")
    assert "SLIM is higher in 2 of 3 cells" in table and "| SASRec | NDCG@10 | 31.58 | 31.43 | -0.5% | teacher |" in table
    assert slim_vs_teacher_table({**report, "results": rows[1:]}, "sampled") is None  # no teacher row, no table
    from slim_eval.__main__ import print_teacher_cells

    other = {**report, "dataset": "e", "results": [{**r, "backbone": "gru4rec"} for r in rows]}
    print_teacher_cells({"d": report, "e": other, "f": {**report, "dataset": "f", "results": rows[1:]}})
    out = capsys.readouterr().out
    assert "100 sampled negatives: 4 of 6 cells (d, e; paper: 22 of 27, sampled)" in out and "full" not in out


def test_provenance_records_round_trip(tmp_path):
    key = {"checkpoint": "x-1", "split": "test", "negatives": {"n": 100, "seed": 0}}
    rec = make_record(key, metrics={"HR@10": 0.5})
    assert matches(rec, key) and not matches(rec, {**key, "split": "valid"})
    assert mismatch(rec, {**key, "split": "valid"}) == ["split"]
    assert not matches(None, key)
    path = tmp_path / "a.npz"
    save_npz(path, rec, ranks=np.arange(1, 4), user_ids=np.array(["u1", "u2", "u3"]))
    got_rec, arrays = load_npz(path)
    assert matches(got_rec, key) and arrays["ranks"].tolist() == [1, 2, 3]
    assert arrays["user_ids"].tolist() == ["u1", "u2", "u3"]
    assert load_npz(tmp_path / "missing.npz") is None


def test_layout_paths():
    lay = RunLayout.for_dataset("custom:a.csv,b.csv")
    assert lay.root == Path("runs/custom-a.csv_b.csv")
    assert lay.rationales("student") == Path("runs/custom-a.csv_b.csv/rationales/student.jsonl")  # nothing shipped
    lay = RunLayout(Path("/r"))
    assert lay.rationales("student") == Path("/r/rationales/student.jsonl")
    assert lay.report("test") == Path("/r/report.json") and lay.report("valid", "md") == Path("/r/report-valid.md")
    assert lay.eval_file("test", "sasrec-id-seed0", "full") == Path("/r/eval/test/sasrec-id-seed0-full.npz")
    assert lay.checkpoints_dir == Path("/r/checkpoints")


def test_rationales_flag_reports_quality_only(tmp_path, capsys, data_dir):
    """--rationales: no fitting; one table over rationales/*.jsonl, student compared with teacher."""
    from slim.data.dataset import load_dataset

    ds = load_dataset("ml-100k")
    lay = RunLayout(tmp_path / "rq")
    _write_rationales(lay.rationales("teacher"), ds.user_ids[:10], coverage=1.0)
    _write_rationales(lay.rationales("student"), ds.user_ids[:20], coverage=1.0)
    assert main(["--rationales", "--out", str(lay.root)]) is None
    text = capsys.readouterr().out
    assert "format_compliance" in text and "vs_reference.rougeL_f1" in text
    saved = read_json(lay.rationale_quality)
    assert set(saved["files"]) == {"teacher", "student"}
    vs = saved["files"]["student"]["vs_reference"]
    assert vs["pairs"] == 20  # 10 users x 2 splits
    # identical texts on the same users rank identically zero-shot
    assert 0 <= vs["zero_shot_ndcg10"] <= 1 and vs["zero_shot_ndcg10"] == pytest.approx(vs["reference_zero_shot_ndcg10"])
    assert not (lay.root / "checkpoints").exists()


def test_dataset_all_expands_to_the_reported_samples():
    from slim_eval.__main__ import REPORTED_RUNS, REPORTED_VARIANTS, expand_all

    # configs/reported/amazon-video-games-u500.toml: the teacher sample with the two fusion ablations
    TEACHER_SAMPLE_VARIANTS = "id,text,teacher,slim,match,match-teacher,slim-gated,slim-noleak"
    # the Games-3000 and Scientific reports were made before the gate was fitted beside SLIM: their
    # configs name the variants they were made with
    PAPER_VARIANTS = "id,text,teacher,slim,match,match-step1,match-step2,match-step3,match-teacher"

    runs = expand_all(["--split", "test", "--dataset", "all", "--seeds", "2"])
    assert list(runs) == list(REPORTED_RUNS)
    ml, games, u500, sci = (runs[k] for k in ("ml-100k", "amazon-video-games", "amazon-video-games-u500",
                                              "amazon-industrial-scientific"))
    # all 943 users, the reported variants
    assert ml == ["--split", "test", "--seeds", "2", "--dataset", "ml-100k", "--variants", REPORTED_VARIANTS]
    assert games[:4] == ["--split", "test", "--seeds", "2"] and games[-4:] == ["--users", "3000", "--variants",
                                                                             PAPER_VARIANTS]
    # the teacher sample is its own run directory and reads the main run's rationale files (student v4's, over the
    # hubness-corrected shortlist)
    assert u500[u500.index("--users"):] == ["--users", "500", "--out", "runs/amazon-video-games-u500",
                                            "--rationales-from", "runs/amazon-video-games",
                                            "--student-file", "student-v4-hub.jsonl",
                                            "--variants", TEACHER_SAMPLE_VARIANTS]
    assert sci[sci.index("--users"):] == ["--users", "600", "--variants", PAPER_VARIANTS]
    assert "slim-clean" not in REPORTED_VARIANTS and "match-teacher" in REPORTED_VARIANTS
    assert set(REPORTED_VARIANTS.split(",")) == set(PAPER_VARIANTS.split(",")) | {"slim-gated"}
    assert {"teacher", "slim"} <= set(TEACHER_SAMPLE_VARIANTS.split(","))
    # a flag the caller gives wins, once: an explicit sample replaces each dataset's sample and guard,
    # and drops the second Games sample (it would be the main run again, in another directory)
    explicit = expand_all(["--dataset=all", "--users", "50", "--variants", "id"])
    assert list(explicit) == ["ml-100k", "amazon-video-games", "amazon-industrial-scientific"]
    assert all(r.count("--users") == 1 and "50" in r and r.count("--variants") == 1 and "--min-coverage" not in r
               and "--out" not in r for r in explicit.values())


def test_missing_rationales_command_names_the_student_and_the_sample():
    """The printed command must make what the report used: the distilled adapter, only the sampled users."""
    ml = producer_command("student", "ml-100k")
    assert "--adapter assets/student-v4/adapter.gguf" in ml and "--splits valid,test" in ml and "--users" not in ml
    games = producer_command("student", "amazon-video-games", users=3000, user_seed=0)
    assert "--users 3000 --seed 0" in games and "--adapter assets/student-games/adapter.gguf" in games
    teacher = producer_command("teacher", "ml-100k", out="runs/x")
    assert teacher.startswith("python -m slim_train teach --dataset ml-100k") and "--out runs/x" in teacher
    # teach's --first-users is its permutation prefix: the evaluated sample must be asked for as --eval-users
    sampled = producer_command("teacher", "amazon-video-games", users=500, user_seed=0)
    assert "--eval-users 500 --seed 0" in sampled and "--users" not in sampled.replace("--eval-users", "")
    for cmd in (ml, games):  # the adapters it names ship with the repository
        assert (Path(__file__).resolve().parents[1] / cmd.split("--adapter ")[1]).is_file()


def test_improvement_interval_is_a_paired_bootstrap_over_users(tmp_path):
    """The interval is around the same Improv. the tables print; a SLIM row equal to its best baseline
    is never "better", and one that wins on every user always is."""
    from slim.eval.metrics import rank_metrics
    from slim_eval.report.intervals import improvement_interval, improvement_table

    layout, rng, users = RunLayout(tmp_path), np.random.default_rng(0), np.arange(400).astype(str)
    ranks = {"id": rng.integers(1, 60, 400), "text": rng.integers(1, 30, 400)}
    ranks["slim"] = np.maximum(ranks["text"] - 2, 1)  # better than X+ for every user ranked > 1
    results = []
    for v, r in ranks.items():
        for seed in (0, 1):
            save_npz(layout.eval_file("test", run_name("sasrec", v, seed), "sampled"), {}, ranks=r, user_ids=users)
        m = rank_metrics(r)["NDCG@10"]
        results.append({"backbone": "sasrec", "variant": v, "protocol": "sampled", "seeds": [0, 1],
                        "metrics": {"NDCG@10": {"mean": m, "std": 0.0}}})
    report = {"dataset": "t", "split": "test", "protocols": ["sampled"], "results": results}
    ci = improvement_interval(layout, report, "sasrec", "sampled")
    assert ci["improv"] == pytest.approx(improvement(report, "sasrec", "sampled", "NDCG@10"))
    assert ci["lo"] < ci["improv"] < ci["hi"] and ci["improv"] > 0 and ci["p_not_better"] == 0.0
    assert ci["users"] == 400 and ci["seeds"] == 2
    assert "| SASRec | 100 sampled negatives |" in improvement_table(layout, report)
    for seed in (0, 1):  # SLIM = X+ exactly: no resample says it is better
        save_npz(layout.eval_file("test", run_name("sasrec", "slim", seed), "sampled"), {}, ranks=ranks["text"],
                 user_ids=users)
    assert improvement_interval(layout, report, "sasrec", "sampled")["p_not_better"] == 1.0


def test_slim_vs_teacher_interval_pairs_the_same_users(tmp_path):
    """SLIM / SLIM- - 1 gets the same paired bootstrap as Improv.; no teacher row, no table."""
    from slim.eval.metrics import rank_metrics
    from slim_eval.report.intervals import ratio_interval, slim_vs_teacher_interval_table

    layout, rng, users = RunLayout(tmp_path), np.random.default_rng(1), np.arange(300).astype(str)
    ranks = {"teacher": rng.integers(1, 40, 300)}
    ranks["slim"] = ranks["teacher"] + 3  # the student's rationale loses a few places for every user
    results = []
    for v, r in ranks.items():
        save_npz(layout.eval_file("test", run_name("gru4rec", v, 0), "full"), {}, ranks=r, user_ids=users)
        results.append({"backbone": "gru4rec", "variant": v, "protocol": "full", "seeds": [0],
                        "metrics": {"NDCG@10": {"mean": rank_metrics(r)["NDCG@10"], "std": 0.0}}})
    report = {"dataset": "t", "split": "test", "protocols": ["full"], "results": results}
    ci = ratio_interval(layout, report, "gru4rec", "full", "slim", ("teacher",))
    expected = rank_metrics(ranks["slim"])["NDCG@10"] / rank_metrics(ranks["teacher"])["NDCG@10"] - 1
    assert ci["improv"] == pytest.approx(expected) and ci["hi"] < 0 and ci["p_not_better"] == 1.0
    table = slim_vs_teacher_interval_table(layout, report)
    assert "| GRU4Rec | full ranking |" in table and "SLIM <= SLIM-" in table and "300 users" in table
    assert slim_vs_teacher_interval_table(layout, {**report, "results": results[1:]}) is None


def test_gain_by_rationale_state_splits_users_by_their_rationale(tmp_path):
    """Users whose student rationale was rejected are measured apart: how much of the gap they explain."""
    from slim.lm.rationale_file import RationaleStore
    from slim_eval.report.per_user import gain_by_rationale_table

    layout, users = RunLayout(tmp_path), np.arange(10).astype(str)
    ranks = {"text": np.full(10, 5), "slim": np.array([1] * 8 + [50] * 2)}  # SLIM fails on users 8-9
    results = []
    for v, r in ranks.items():
        save_npz(layout.eval_file("test", run_name("sasrec", v, 0), "sampled"), {}, ranks=r, user_ids=users)
        results.append({"backbone": "sasrec", "variant": v, "protocol": "sampled", "seeds": [0],
                        "metrics": {"NDCG@10": {"mean": 0.0, "std": 0.0}}})
    report = {"dataset": "t", "split": "test", "protocols": ["sampled"], "results": results}
    store = RationaleStore(layout.rationales("student"))
    for u in users[:9]:  # user 9 has no row; user 8's row was rejected
        store.append({"user_id": u, "split": "test", "status": "ok" if u != "8" else "rejected: missing Step 3"})
    table = gain_by_rationale_table(layout, report)
    assert "| SASRec | 100 sampled negatives | 3 steps | 8 | 38.69 | 100.00 | +158.5% |" in table
    assert "| SASRec | 100 sampled negatives | rejected or missing | 2 | 38.69 | 0.00 | -100.0% |" in table
    assert "rationales/student.jsonl" in table


# ---- a fresh clone: shipped rationales --------------------------------------------------------

def test_shipped_rationales_are_read_when_the_run_has_none(first_run, tmp_path, capsys):
    """No runs/<ds>/rationales/: the student file shipped in assets/rationales/ml-100k/ is read, and
    the printout, report.md notes and report.json name it; an own file wins over the shipped one."""
    import shutil

    shipped = Path(__file__).resolve().parents[1] / "assets" / "rationales" / "ml-100k" / "student.jsonl"
    out = tmp_path / "fresh"
    shutil.copytree(first_run[0] / "text-cache", RunLayout(out).text_cache_dir)
    argv = [a for a in BASE if a != "--no-shipped"]
    lay = RunLayout.for_dataset("ml-100k", out)
    assert lay.rationales("student") == shipped and lay.is_shipped(lay.rationales("student"))
    assert RunLayout.for_dataset("ml-100k", out, shipped=False).rationales("student") == out / "rationales/student.jsonl"
    report = main([*argv, "--seeds", "1", "--epochs", "1", "--variants", "match-step3", "--out", str(out),
                   "--protocol", "sampled"])
    text = capsys.readouterr().out
    rel = "assets/rationales/ml-100k/student.jsonl"
    assert f"rationales (student): {rel} (shipped with the repository" in text
    assert {r["variant"] for r in report["results"]} == {"match-step3"}
    assert report["rationale_files"] == {"student": rel} and read_json(out / "report.json")["rationale_files"] == {"student": rel}
    # the shipped checkpoints are offered to fit() (none matches a 60-user sample: its data fingerprint differs)
    assert re.search(r"checkpoints: \d+ fitted models available read-only in assets/ml-100k/checkpoints", text)
    assert "checkpoints_from" not in report and len(list((out / "checkpoints").iterdir())) == 1
    md = (out / "report.md").read_text()
    assert f"rationales (student): {rel} (shipped" in md and f"match-step3: rationale vectors from {rel}" in md
    # the run's own file, once there, is what it reads
    _write_rationales(lay.own_rationales("student"), ["1"], coverage=1.0)
    assert lay.rationales("student") == out / "rationales" / "student.jsonl"


def test_a_fresh_run_knows_the_shipped_students_training_users(tmp_path):
    """Without its own distill/, a run reads the shipped student's metrics (the one that wrote the
    shipped rationales), so held-out measures still leave its training users out."""
    from slim.artifacts.layout import REPO_ROOT, RunLayout
    from slim_eval.pipeline import distilled_users

    layout = RunLayout.for_dataset("ml-100k", out=tmp_path)
    assert layout.distill_metrics == REPO_ROOT / "assets" / "student-v4" / "metrics.json"
    trained = distilled_users(layout, "ml-100k")
    # v4 was continued from v3, itself continued from v2: the users of all three are trained users
    v2 = json.loads((REPO_ROOT / "assets" / "student" / "metrics.json").read_text())
    v2_trained = {str(u[0] if isinstance(u, list) else u) for u in v2["users"]} - set(map(str, v2["data"]["val_users"]))
    assert v2_trained <= trained and "526" in trained and len(trained) > 600
    # Scientific's student (v4, distilled on ML-100K and Games) says nothing about Scientific's users
    assert distilled_users(RunLayout.for_dataset("amazon-industrial-scientific", out=tmp_path),
                           "amazon-industrial-scientific") == set()


def test_heldout_comparison_uses_the_same_pairs_of_untrained_users_for_every_file(tmp_path):
    """--rationales --heldout: files are compared on the (user, split) pairs they all cover, minus any
    shipped student's training users; a file with no such pair (a distillation set) is left out."""
    import json

    from slim_eval.pipeline import heldout_pairs

    def write(name, keys):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"user_id": u, "split": s, "status": "ok", "rationale": "x"}) + "\n"
                                for u, s in keys))
        return path

    trained = "526"  # one of the ML-100K users student v2 was distilled on (assets/student/metrics.json)
    # 4, 6, 8: no shipped student trained on them
    a = write("a", [("4", "valid"), ("6", "valid"), ("6", "test"), (trained, "valid")])
    b = write("b", [("4", "valid"), ("6", "test"), (trained, "valid"), ("8", "valid")])
    distillation_set = write("c", [(trained, "valid")])
    files, pairs = heldout_pairs([a, b, distillation_set], "ml-100k")
    assert files == [a, b] and pairs == {("4", "valid"), ("6", "test")}


def test_student_file_names_which_student_rows_a_run_reads_and_the_command_that_writes_them(tmp_path):
    """--student-file: one student's rows measured while another's stay the default file; the run's
    own file wins, then the shipped one of that name, and the missing-file command writes that name."""
    from slim.artifacts.layout import REPO_ROOT
    from slim_eval.variants import producer_command

    lay = RunLayout.for_dataset("amazon-video-games", tmp_path, student_file="student-v4.jsonl")
    assert lay.own_rationales("student") == tmp_path / "rationales" / "student-v4.jsonl"
    assert lay.own_rationales("teacher") == tmp_path / "rationales" / "teacher.jsonl"  # teacher untouched
    shipped = REPO_ROOT / "assets" / "rationales" / "amazon-video-games" / "student-v4.jsonl"
    assert lay.rationales("student") == (shipped if shipped.exists() else lay.own_rationales("student"))
    assert RunLayout.for_dataset("amazon-video-games", tmp_path).own_rationales("student").name == "student.jsonl"
    cmd = producer_command("student", "amazon-video-games", str(tmp_path), 500, 0, "student-v4.jsonl")
    assert "--name student-v4 " in cmd + " " and "--users 500 --seed 0" in cmd
    assert "--name" not in producer_command("student", "amazon-video-games", str(tmp_path), 500, 0)


def test_reported_run_configs_are_read_in_order_and_a_malformed_one_is_refused(tmp_path):
    from slim.artifacts.reported_runs import read_run, reported_runs

    (tmp_path / "b.toml").write_text('order = 1\n[flags]\ndataset = "ml-100k"\nusers = 50\nmin-coverage = 0.85\n')
    (tmp_path / "a.toml").write_text('order = 2\n[flags]\ndataset = "ml-100k"\n')
    runs = reported_runs(tmp_path)
    assert [r.name for r in runs] == ["b", "a"]
    assert runs[0].argv == ["--dataset", "ml-100k", "--users", "50", "--min-coverage", "0.85"]
    (tmp_path / "c.toml").write_text('[flags]\ndataset = "ml-100k"\n')
    with pytest.raises(ValueError, match="c.toml: a reported run needs `order"):
        read_run(tmp_path / "c.toml")
    with pytest.raises(FileNotFoundError, match="no reported-run configs"):
        reported_runs(tmp_path / "empty")
