"""``python -m slim_eval --split test``: fit what is missing, measure every model once, print one table.

Defaults reproduce the paper's grid on ML-100K: backbones sasrec,gru4rec,srgnn x the reported
variants whose artefacts exist (``--variants auto``: id and text always; teacher, slim, its gated
fusion (so that the report can choose SLIM's fusion on validation) and the match family when their
rationale files cover the users, else the report names the command that
makes them; the Step-3 post-filtered ``*-clean`` variants only when named) x 5 seeds, under full
ranking and 100 sampled negatives. Everything is resumable: finished checkpoints
(``checkpoints/``) and finished measurements (``eval/``) are reused when their provenance matches,
so a killed run loses at most the model it was training.

A fresh clone needs no teacher, student or training time: rationale files missing from
``runs/<dataset>/rationales/`` are read from ``assets/rationales/<dataset>/``, and checkpoints
shipped in ``assets/<dataset>/checkpoints/`` (or downloaded with ``--fits-from-hub``) are loaded
when their provenance matches; the report names every file it used. ``--no-shipped`` ignores
``assets/``; ``--refit`` trains every model again into ``runs/``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # 2 shared cores: spinning threads collapse throughput
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # only --fits-from-hub goes online (slim_eval.pipeline.fetch_fits)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import shlex
import sys
import time
from pathlib import Path

from slim.artifacts.layout import RunLayout
from slim.artifacts.provenance import write_json
from slim.artifacts.reported_runs import reported_runs

from .report.markdown import markdown, write_run_record
from .report.rows import PROTOCOL_TITLES, build_report
from .report.tables import results_table, slim_vs_teacher_cells
from .variants import VARIANT_NAMES, spec

PROTOCOL_CHOICES = {"full": ["full"], "sampled": ["sampled"], "both": ["full", "sampled"]}

# ``--variants auto``: the reported variants (the paper's, and the gated fusion SLIM's validation choice
# needs: slim_eval.report.fusion_choice), of which a run fits those whose rationales exist
REPORTED_VARIANTS = "id,text,teacher,slim,slim-gated,match,match-step1,match-step2,match-step3,match-teacher"
# ``--dataset all``: every shipped report by its name (assets/reports/<name>), with the flags it was made
# with, one file each in configs/reported/ (slim.artifacts.reported_runs, which says why each is what it is)
REPORTED_RUNS: dict[str, list[str]] = {run.name: run.argv for run in reported_runs()}
# flags that make a run a second sample of a dataset: an explicit sample or directory from the caller
# would turn it into a duplicate of the main run, so it is left out then
_SAMPLE_FLAGS = ("--users", "--min-coverage", "--out", "--rationales-from")


def _given(flag: str, argv: list[str]) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def expand_all(argv: list[str]) -> dict[str, list[str]]:
    """One argv per reported run for ``--dataset all``, by report name; a flag the caller gives wins over
    the run's own (an explicit ``--users`` replaces every dataset's sample, and its coverage guard)."""
    rest, i = [], 0
    while i < len(argv):
        if argv[i] == "--dataset":
            i += 2
            continue
        if argv[i].startswith("--dataset="):
            i += 1
            continue
        rest.append(argv[i])
        i += 1
    overridden = _given("--users", rest) or _given("--out", rest)
    runs = {}
    for run in reported_runs():
        pairs = list(run.flags)
        if overridden:
            if run.value("--out") is not None:
                continue
            pairs = [p for p in pairs if p[0] not in _SAMPLE_FLAGS]
        runs[run.name] = [*rest, *(x for p in pairs if not _given(p[0], rest) for x in p)]
    return runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m slim_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=("valid", "test"), default="test",
                   help="target to measure (models are always selected on valid)")
    p.add_argument("--dataset", default="ml-100k", help="ml-100k | amazon-video-games | "
                   "amazon-industrial-scientific | custom:<interactions>,<items> | all (the "
                   "reported runs, each with the flags its report was made with: " +
                   "; ".join(f"{k}: {' '.join(v)}" for k, v in REPORTED_RUNS.items()) + ")")
    p.add_argument("--data-dir", default=None, help="default: $SLIM_DATA_DIR, else ../shared/data")
    p.add_argument("--backbones", default="sasrec,gru4rec,srgnn")
    p.add_argument("--variants", default="auto",
                   help=f"auto (the reported variants {REPORTED_VARIANTS} whose rationales exist; the *-clean "
                   "ones only when named) or a comma list of " + ",".join(VARIANT_NAMES))
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    p.add_argument("--first-seed", type=int, default=0,
                   help="fit and measure seeds FIRST..N-1 only: split one grid over several processes or "
                   "machines sharing a run directory (a last pass without it reuses every fit)")
    p.add_argument("--epochs", type=int, default=None, help="max epochs (early stopping on valid NDCG@10)")
    p.add_argument("--protocol", choices=tuple(PROTOCOL_CHOICES), default="both")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/<dataset>)")
    p.add_argument("--users", type=int, default=None, help="seeded sample of N users (recorded in the report)")
    p.add_argument("--user-seed", type=int, default=0, help="seed of the --users sample")
    p.add_argument("--student-file", default=None,
                   help="the student rationale file in <run>/rationales/ (else assets/rationales/<dataset>/) that "
                   "the student variants read, default student.jsonl (e.g. student-v4.jsonl: one student's rows "
                   "measured while another's stay the default)")
    p.add_argument("--rationales-from", type=Path, default=None,
                   help="read rationales/ from this run directory (e.g. runs/<dataset>) instead of --out's: "
                   "a second user sample in its own --out shares the rationale files")
    p.add_argument("--min-coverage", type=float, default=0.9,
                   help="skip a rationale variant when fewer users than this have a rationale")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the box is shared)")
    p.add_argument("--rationales", action="store_true", help="report rationale quality only (no fitting)")
    p.add_argument("--heldout", action="store_true",
                   help="with --rationales: compare the files on the same (user, split) pairs only: those every "
                        "file has an ok row for, of users no shipped student was distilled on "
                        "(writes rationale-quality-heldout.json)")
    p.add_argument("--rationale-files", default=None,
                   help="with --rationales: only these files, comma-separated names without .jsonl "
                        "(e.g. student,student-v2); default: every file of the run")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (logs)")
    p.add_argument("--refit", action="store_true",
                   help="train every model again into <out>/checkpoints (no checkpoint is reused)")
    p.add_argument("--no-shipped", action="store_true",
                   help="ignore the repository's assets/ (rationales and checkpoints): only <out>'s own files")
    p.add_argument("--fits-from-hub", default=None, metavar="REPO_ID",
                   help="download a published set of checkpoints (python -m slim_train fits publish) into "
                   "<out>/hub-fits/ and reuse them; $SLIM_FITS_REPO does the same when assets/<dataset>/"
                   "checkpoints is missing")
    p.add_argument("--results-md", action="store_true",
                   help="write docs/RESULTS.md, docs/HISTORY.md and README.md's results block from assets/reports")
    args = p.parse_args(argv)
    # auto: ask for every reported variant; run_grid skips a rationale variant whose file is missing
    # or covers too few users, and the report says which command would make it
    names = REPORTED_VARIANTS.split(",") if args.variants.strip() == "auto" else args.variants.split(",")
    args.variant_list = [v.strip() for v in names if v.strip()]
    for v in args.variant_list:
        try:
            spec(v)
        except ValueError as e:
            p.error(str(e))
    args.backbone_list = [b.strip() for b in args.backbones.split(",") if b.strip()]
    bad = [b for b in args.backbone_list if b not in ("sasrec", "gru4rec", "srgnn")]
    if bad:
        p.error(f"unknown backbone(s) {bad}; choose from sasrec,gru4rec,srgnn")
    if not 0 <= args.first_seed < args.seeds:
        p.error(f"--first-seed must be in 0..{args.seeds - 1} (--seeds {args.seeds})")
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    return args


def command_line(argv: list[str] | None) -> str:
    return "python -m slim_eval " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def print_teacher_cells(reports: dict[str, dict]) -> None:
    """The paper's cross-dataset count (SLIM beats SLIM- in 22 of 27 cells), on the reports that have both."""
    for protocol in ("sampled", "full"):
        cells = [(name, c) for name, r in reports.items() if protocol in r["protocols"]
                 for c in slim_vs_teacher_cells(r, protocol)]
        if cells:
            names = sorted({d for d, _ in cells})
            print(f"SLIM higher than the teacher-rationale variant, {PROTOCOL_TITLES[protocol]}: "
                  f"{sum(c['slim_wins'] for _, c in cells)} of {len(cells)} cells ({', '.join(names)}; "
                  "paper: 22 of 27, sampled)")


def print_paper_tables(layout: RunLayout, report: dict) -> None:
    """The paper-shaped view on the console: Table 1 (X, X+, SLIM-, SLIM, Improv.) under the paper's
    protocol, then Improv. and SLIM / SLIM- - 1 with their paired intervals over users (both protocols),
    then SLIM's fusion chosen on validation when both fusions were fitted."""
    from .report.fusion_choice import fusion_choice_table
    from .report.intervals import chosen_fusion_interval_table, improvement_table, slim_vs_teacher_interval_table
    from .report.tables import table1

    for block in (table1(report, "sampled", markdown=False) if "sampled" in report["protocols"] else None,
                  improvement_table(layout, report, markdown=False),
                  slim_vs_teacher_interval_table(layout, report, markdown=False),
                  fusion_choice_table(report, markdown=False),
                  chosen_fusion_interval_table(layout, report, markdown=False)):
        if block:
            print()
            print(block)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.results_md:  # no fitting: the pages are rebuilt from the shipped reports
        from .results_md import main as results_md
        return results_md()
    if args.dataset == "all":
        # each dataset is its own resumable run with its own report; one failing does not lose the others' work
        given = sys.argv[1:] if argv is None else argv
        reports = {name: main(sub) for name, sub in expand_all(given).items()}
        print_teacher_cells({name: r for name, r in reports.items() if r})
        return reports
    import torch

    torch.set_num_threads(max(1, args.threads))
    from .pipeline import load_data, rationale_report, run_grid

    layout = RunLayout.for_dataset(args.dataset, args.out, args.rationales_from, shipped=not args.no_shipped,
                                   student_file=args.student_file)
    if args.rationales:
        from slim.data.dataset import load_dataset

        rationale_report(args, layout, load_dataset(args.dataset, args.data_dir))
        return None
    dataset, user_sample = load_data(args)
    t0 = time.time()
    protocols = PROTOCOL_CHOICES[args.protocol]
    cmd = command_line(argv)
    data_stats = dataset.stats()
    sources: dict = {}  # run_grid fills: which rationale files and checkpoint roots this run read

    def write(results, notes, final: bool = False) -> dict:
        report = build_report(dataset.name, args.split, protocols, user_sample, results, data_stats)
        if args.rationales_from:  # so that `regenerate` reads the same rationale files
            report["rationales_from"] = str(args.rationales_from)
        if args.student_file:
            report["student_file"] = args.student_file
        report.update({k: v for k, v in sources.items() if v})
        write_json(layout.report(args.split, "json"), report)
        status = "" if final else " (in progress: the grid is still running)"
        extra = [f"wall time of this invocation: {time.time() - t0:.0f} s{status} "
                 f"({sum(r.reused for r in results)} of {len(results)} measurements reused)"]
        write_run_record(layout, args.split, cmd, [*notes, *extra])  # what regenerate cannot know
        layout.report(args.split, "md").write_text(markdown(layout, report, cmd, [*notes, *extra]), encoding="utf-8")
        return report

    seed_results, notes = run_grid(args, layout, dataset, protocols, on_model=write, sources=sources)
    if not seed_results:
        print("nothing was measured (every requested variant was skipped)")
        return None
    report = write(seed_results, notes, final=True)
    md_path = layout.report(args.split, "md")
    print()
    print(results_table(report))
    print_paper_tables(layout, report)
    print(f"\nwrote {layout.report(args.split, 'json')} and {md_path}")
    return report


def cli() -> None:
    """The ``slim-eval`` console script (``main`` returns the report, which is not an exit code)."""
    main()


if __name__ == "__main__":
    cli()
