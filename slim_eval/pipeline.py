"""The grid behind ``python -m slim_eval``: data, inputs per variant, fit-or-reuse, measure-or-reuse."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from slim.artifacts.layout import REPO_ROOT, RunLayout
from slim.artifacts.provenance import make_record, save_npz, write_json
from slim.data.dataset import SequentialDataset, load_dataset, sample_users
from slim.eval.metrics import dataset_fingerprint, item_popularity, sampled_negatives

from . import inputs
from .run import N_NEGATIVES, NEGATIVES_SEED, SeedResult, evaluate_fitted
from .variants import VariantSpec, producer_command, run_name, spec


def load_data(args: argparse.Namespace) -> tuple[SequentialDataset, dict | None]:
    """The dataset, or a seeded user sample of it (recorded in the report as user_sample)."""
    ds = load_dataset(args.dataset, args.data_dir)
    if args.users is None or args.users >= ds.n_users:
        return ds, None
    users = sample_users(ds, args.users, seed=args.user_seed)
    sample = {"n": int(len(users)), "of": int(ds.n_users), "seed": int(args.user_seed)}
    return ds.subset_users(users), sample


class Inputs:
    """Lazily built text inputs, shared by every run that needs them (encoding is the slow part)."""

    def __init__(self, dataset: SequentialDataset, layout: RunLayout):
        self.dataset, self.layout = dataset, layout
        self._encoder = None
        self._item_text: np.ndarray | None = None
        self._user_text: dict = {}

    @property
    def encoder(self):
        if self._encoder is None:
            from slim.lm.encoders import TextEncoder

            self._encoder = TextEncoder(cache_dir=self.layout.text_cache_dir)
        return self._encoder

    def item_text(self) -> np.ndarray:
        if self._item_text is None:
            self._item_text = inputs.item_text(self.dataset, self.encoder)
        return self._item_text

    def user_text(self, s: VariantSpec) -> inputs.UserText:
        key = (s.rationales, s.step, s.clean_step3)
        if key not in self._user_text:
            path = self.layout.rationales(s.rationales)
            self._user_text[key] = inputs.user_text(self.dataset, path, self.encoder, s.step, s.clean_step3)
        return self._user_text[key]


def shown(path: str | Path) -> str:
    """A path as a report prints it: relative to the repository when inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def rationale_source(layout: RunLayout, name: str) -> str:
    """``<path>`` of the file a rationale variant reads, saying when it is the repository's copy."""
    path = layout.rationales(name)
    if layout.is_shipped(path):
        return f"{shown(path)} (shipped with the repository; {shown(layout.own_rationales(name))} is missing)"
    return shown(path)


REPORT_EVERY_S = 30.0  # in-progress report.md rebuilds during a grid (run_grid)
FIT_FILES = ["*/config.json", "*/model.safetensors", "README.md"]


def fetch_fits(repo_id: str, dest: Path, endpoint: str | None = None) -> Path:
    """``snapshot_download`` of a published checkpoint set (slim_train fits publish) into ``dest``.

    slim_eval runs with ``HF_HUB_OFFLINE=1`` (nothing else it does needs the Hub); asking for a
    Hub repo is asking for this one download, so it is made online. When the Hub cannot be reached,
    huggingface_hub falls back to what ``dest`` already holds. Endpoint: ``endpoint``, else
    ``HF_ENDPOINT``; a token, if the repo is private, is huggingface_hub's own (``HF_TOKEN``).
    """
    from huggingface_hub import constants, snapshot_download

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        snapshot_download(repo_id, repo_type="model", local_dir=str(dest), allow_patterns=FIT_FILES,
                          endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None)
    finally:
        constants.HF_HUB_OFFLINE = before
    return dest


def fit_roots(args: argparse.Namespace, layout: RunLayout) -> tuple[list[Path], list[str]]:
    """Read-only checkpoint roots ``fit`` may load from (after ``<out>/checkpoints``), and notes saying so.

    ``assets/<dataset>/checkpoints`` (unless ``--no-shipped``); then a Hub set: ``--fits-from-hub``
    always, ``$SLIM_FITS_REPO`` only when nothing is shipped for the dataset.
    """
    roots, notes = [], []
    shipped = layout.shipped_checkpoints_dir
    if shipped is not None and any(shipped.glob("*/config.json")):
        roots.append(shipped)
    repo = getattr(args, "fits_from_hub", None) or (os.environ.get("SLIM_FITS_REPO") if not roots else None)
    if repo:
        print(f"fits: downloading {repo} into {shown(layout.hub_fits_dir)}", flush=True)
        roots.append(fetch_fits(repo, layout.hub_fits_dir))
    for r in roots:
        n = len(list(r.glob("*/config.json")))
        notes.append(f"checkpoints: {n} fitted models available read-only in {shown(r)}"
                     + (f" (Hub repo {repo})" if r == layout.hub_fits_dir else "")
                     + "; one whose provenance matches is loaded instead of trained")
    return roots, notes


def missing_reason(s: VariantSpec, args: argparse.Namespace, layout: RunLayout, dataset: SequentialDataset) -> str | None:
    """Why a variant cannot be fitted yet, with the command that makes its input; None if it can."""
    if s.rationales is None:
        return None
    path = layout.rationales(s.rationales)
    # the producer writes <out>/rationales: the directory this run reads them from
    source = args.rationales_from or args.out
    out = None if source is None else str(source)
    cmd = producer_command(s.rationales, args.dataset, out, args.users, args.user_seed, layout.student_file)
    if not path.exists():
        return f"skipped {s.name}: {path} is missing; make it with `{cmd}`"
    cov = inputs.rationale_coverage(dataset, path, s.step, s.clean_step3)
    low = {k: v for k, v in cov.items() if v < args.min_coverage}
    if low:
        got = ", ".join(f"{k} {100 * v:.1f}%" for k, v in cov.items())
        return (f"skipped {s.name}: {path} covers {got} of the users (need >= {100 * args.min_coverage:.0f}% "
                f"of both splits); complete it with `{cmd}`")
    return None


def run_grid(args: argparse.Namespace, layout: RunLayout, dataset: SequentialDataset, protocols: list[str],
             on_model: Callable[[list[SeedResult], list[str]], None] | None = None,
             sources: dict | None = None) -> tuple[list[SeedResult], list[str]]:
    """Fit/reuse every (backbone, variant, seed), measure it once per protocol; returns results + notes.

    ``on_model(results_so_far, notes)`` runs after the first model that measured something new,
    then after a later model once REPORT_EVERY_S have passed, so a long grid keeps its report
    current (a run stopped after hours still leaves a table of what finished, reused rows included). Until then the previous report stands:
    rebuilding report.md (bootstrap, plots) after each of the 105 reused ML-100K models dominated a
    pure regeneration (bench/regenerate_reports.py).

    ``sources`` (filled in place, for report.json): ``rationale_files`` {reasoner: path read} and
    ``checkpoints_from`` {root: models loaded from it} for roots other than ``<out>/checkpoints``.
    """
    from slim.recommenders.fit_config import FitConfig
    from slim.recommenders.train import fit

    feed = Inputs(dataset, layout)
    notes: list[str] = []
    ready: list[VariantSpec] = []
    for name in args.variant_list:
        s = spec(name)
        why = missing_reason(s, args, layout, dataset)
        if why:
            print(why, flush=True)
            notes.append(why)
        else:
            ready.append(s)
    sources = {} if sources is None else sources
    sources["rationale_files"] = {}
    for name in sorted({s.rationales for s in ready if s.rationales}):
        sources["rationale_files"][name] = shown(layout.rationales(name))
        note = f"rationales ({name}): {rationale_source(layout, name)}"
        print(note, flush=True)
        notes.append(note)
    roots, root_notes = ([], []) if getattr(args, "refit", False) else fit_roots(args, layout)
    for n in root_notes:
        print(n, flush=True)
    notes.extend(root_notes)
    sources["checkpoints_from"] = {}
    # seed-major: after k seeds every row of the table exists with k seeds, so a grid stopped
    # early (or still running) already gives a complete, if noisier, table
    plan = [(s, backbone, seed) for seed in range(getattr(args, "first_seed", 0), args.seeds) for s in ready
            for backbone in (args.backbone_list if s.has_backbone else ["none"])]

    negatives = (sampled_negatives(dataset, N_NEGATIVES, NEGATIVES_SEED, cache_dir=layout.negatives_dir)
                 if "sampled" in protocols else None)
    popularity = item_popularity(dataset)
    save_npz(layout.eval_dataset_file(args.split),
             make_record({"dataset": dataset.name, "dataset_fingerprint": dataset_fingerprint(dataset)},
                         n_users=int(dataset.n_users), n_items=int(dataset.n_items)),
             item_popularity=popularity)
    results: list[SeedResult] = []
    report_live = False  # set by the first model that measured something new
    last_write = None  # monotonic time of the last in-progress report
    for i, (s, backbone, seed) in enumerate(plan, 1):
        name = run_name(backbone, s.name, seed)
        t0 = time.perf_counter()
        item_text = feed.item_text() if s.needs_item_text else None
        user_text = None
        if s.rationales:
            ut = feed.user_text(s)
            user_text = ut.vectors
            note = (f"{s.name}: rationale vectors from {shown(ut.source)} (step {s.step or '1-3'}{', post-filtered' if s.clean_step3 else ''}), coverage "
                    + ", ".join(f"{k} {100 * v:.1f}%" for k, v in ut.coverage.items()) + "; missing users get zeros")
            if note not in notes:
                notes.append(note)
        cfg_kwargs = {"backbone": backbone, "variant": s.model_variant, "seed": seed, "tag": s.tag, "fusion": s.fusion,
                      "rationale_window": s.rationale_window}
        if args.epochs is not None:
            cfg_kwargs["epochs"] = args.epochs
        cfg = FitConfig(**cfg_kwargs)
        fitted = fit(dataset, cfg, layout.checkpoints_dir, item_text=item_text, user_text=user_text,
                     progress=not args.no_progress, force=getattr(args, "refit", False), reuse_from=roots)
        fit_s = time.perf_counter() - t0
        where = fitted.checkpoint_dir.parent
        if where != layout.checkpoints_dir:
            sources["checkpoints_from"][shown(where)] = sources["checkpoints_from"].get(shown(where), 0) + 1
        conf = {k: v for k, v in fitted.record["key"]["config"].items() if k not in ("seed", "variant", "tag")}
        note = f"FitConfig {backbone}: " + ", ".join(f"{k}={v}" for k, v in conf.items() if k != "backbone")
        if not any(n.startswith(f"FitConfig {backbone}:") for n in notes):
            notes.append(note)
        line = [f"[{i}/{len(plan)}] {name}: best epoch {fitted.best_epoch}"
                f" (valid NDCG@10 {100 * fitted.valid_metrics.get('NDCG@10', float('nan')):.2f}), {fit_s:.1f} s"
                + (f", loaded from {shown(where)}" if where != layout.checkpoints_dir else "")]
        for protocol in protocols:
            metrics, path, reused = evaluate_fitted(fitted, dataset, args.split, protocol, layout, name,
                                                    negatives=negatives, popularity=popularity)
            results.append(SeedResult(backbone, s.name, seed, protocol, metrics, fitted.best_epoch, path, reused,
                                      fitted.valid_metrics.get("NDCG@10")))
            line.append(f"{protocol}: HR@10 {100 * metrics['HR@10']:.2f} NDCG@10 {100 * metrics['NDCG@10']:.2f}"
                        + (" (reused)" if reused else ""))
        print(" | ".join(line), flush=True)
        report_live |= not all(r.reused for r in results[-len(protocols):])
        # once a report was rebuilt, it keeps every later model, at most every REPORT_EVERY_S: loading
        # shipped checkpoints takes seconds per model, and a rebuild (bootstrap, plots) after each of 85
        # would cost more than measuring them; the caller writes the final report anyway
        due = last_write is None or time.monotonic() - last_write >= REPORT_EVERY_S
        if on_model is not None and report_live and due:
            on_model(results, notes)
            last_write = time.monotonic()
    for root, n in sources["checkpoints_from"].items():
        notes.append(f"checkpoints: {n} of {len(plan)} models were loaded from {root} (not trained here)")
    return results, notes


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def distilled_users(layout: RunLayout, dataset_name: str) -> set[str]:
    """User ids whose teacher rationales trained this run's student (its adapter's metrics.json).

    The run's own adapter, else the shipped student of the dataset (RunLayout.distill_metrics), and
    only when it was distilled on this dataset: a student distilled elsewhere says nothing about
    these rows. Its validation users stay in (they were held out of training).
    """
    return _lineage_users(layout.distill_metrics, dataset_name)


def _lineage_users(path: Path, dataset_name: str) -> set[str]:
    """The training users of the adapter whose metrics.json is ``path`` and of every adapter it was
    continued from (``config.init_adapter``): a continued student has seen its parents' users too."""
    import json

    from slim.artifacts.layout import REPO_ROOT
    from slim.student.sft import trained_user_ids

    users: set[str] = set()
    seen: set[Path] = set()
    while path.exists() and path not in seen:
        seen.add(path)
        m = json.loads(path.read_text())
        primary = m.get("dataset") or dataset_name
        if primary == dataset_name or dataset_name in m.get("also_datasets", []):
            # a student of several datasets names its other datasets' users "<dataset>/<user_id>"
            users |= (trained_user_ids(m.get("users", []), primary, dataset_name)
                      - trained_user_ids(m.get("data", {}).get("val_users", []), primary, dataset_name))
        parent = (m.get("config") or {}).get("init_adapter")
        if not parent:
            break
        folder = Path(parent) if Path(parent).is_absolute() else REPO_ROOT / parent
        path = (folder if folder.is_dir() else folder.parent) / "metrics.json"
    return users


def rationale_report(args: argparse.Namespace, layout: RunLayout, dataset: SequentialDataset) -> dict | None:
    """``--rationales``: quality of every rationales/*.jsonl via ``slim.lm.rationale_quality.quality_report``.

    Every file but the teacher's is also compared with the teacher file (ROUGE-L, BLEU, embedding
    cosine on the users both cover). Uses the full dataset: rationale files name their own users,
    so a --users sample would only drop rows. Writes rationale-quality.json and prints one table.
    """
    try:
        from slim.lm import rationale_quality
    except ImportError:
        print("rationale quality: slim/lm/rationale_quality.py is missing (expected "
              "quality_report(dataset, path, reference_path=None) -> dict); nothing to report")
        return None
    files = layout.rationale_files()  # the run's own, plus the shipped teacher / student files it reads
    if getattr(args, "rationale_files", None):
        wanted = [n.strip() for n in args.rationale_files.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {p.stem for p in files})
        if unknown:
            raise SystemExit(f"--rationale-files: no {', '.join(unknown)} among {', '.join(p.stem for p in files)}")
        files = [p for p in files if p.stem in wanted]
    if not files:
        print(f"rationale quality: no rationales in {layout.rationales_dir}; make them with "
              f"`{producer_command('teacher', args.dataset)}` / `{producer_command('student', args.dataset)}`")
        return None
    from .report.tables import render

    teacher = layout.rationales("teacher")
    trained_on = distilled_users(layout, dataset.name)
    from slim.lm.encoders import TextEncoder

    encoder = TextEncoder(cache_dir=layout.text_cache_dir)  # MiniLM cosine of student vs teacher text
    # zero-shot ranking needs the report's item vectors and its sampled negatives (which a tiny
    # custom catalogue may not allow: then the other measures are still reported)
    items = negatives = None
    try:
        negatives = sampled_negatives(dataset, N_NEGATIVES, NEGATIVES_SEED, cache_dir=layout.negatives_dir)
        items = inputs.item_text(dataset, encoder)
    except ValueError as e:
        print(f"rationale quality: no zero-shot ranking ({e})")
    only = None
    if getattr(args, "heldout", False):
        files, only = heldout_pairs(files, dataset.name)
        trained_on = set()  # already left out of `only`
        print(f"rationale quality: {len(only)} (user, split) pairs that {', '.join(p.name for p in files)} all "
              "cover, of users no shipped student was distilled on")
    out: dict[str, dict] = {}
    for path in files:
        ref = teacher if path != teacher and teacher.exists() else None
        # agreement with the teacher only on users the student was NOT distilled on
        out[path.stem] = rationale_quality.quality_report(dataset, path, reference_path=ref,
                                                          exclude_users=trained_on, encoder=encoder,
                                                          item_vectors=items, negatives=negatives, only=only)
    flat = {name: _flatten(rep) for name, rep in out.items()}
    cols = sorted({c for f in flat.values() for c in f})
    cell = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    rows = [[c, *(cell(flat[n].get(c)) for n in flat)] for c in cols]
    print(render(["measure", *flat], rows, markdown=False))
    target = layout.rationale_quality
    if only is not None:
        target = target.with_name("rationale-quality-heldout.json")
    write_json(target, {"dataset": dataset.name, "files": out,
                        **({"pairs": len(only), "same_pairs_for_every_file": True} if only is not None else {})})
    print(f"wrote {target}")
    return out


def heldout_pairs(files: list[Path], dataset_name: str) -> tuple[list[Path], set[tuple[str, str]]]:
    """(the files that share held-out rows, the (user, split) pairs every one of them has an ok row for).

    Held out = no shipped student (slim.artifacts.layout.SHIPPED_STUDENTS) was distilled on the user, so no
    file is measured on its own training data; a file with no such row (a distillation set) is left out.
    """
    from slim.artifacts.layout import REPO_ROOT, SHIPPED_STUDENTS
    from slim.artifacts.provenance import read_json
    from slim.lm.rationale_file import RationaleStore
    from slim.student.sft import trained_user_ids

    trained: set[str] = set()
    for folder in SHIPPED_STUDENTS:
        path = REPO_ROOT / folder / "metrics.json"
        if path.exists():
            m = read_json(path)
            primary = m.get("dataset") or dataset_name
            trained |= (trained_user_ids(m.get("users", []), primary, dataset_name)  # its held-out users stay
                        - trained_user_ids(m.get("data", {}).get("val_users", []), primary, dataset_name))
    keys = {p: {k for k, r in RationaleStore(p).rows.items() if r.get("status") == "ok" and k[0] not in trained}
            for p in files}
    kept = [p for p in files if keys[p]]
    common = set.intersection(*(keys[p] for p in kept)) if kept else set()
    return kept, common
