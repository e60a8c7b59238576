"""Flags every slim_train verb shares (names are a contract: other tools call them), and old spellings.

``--users`` and ``--seed`` mean a seeded user sample and its seed (as in ``slim_eval``), so a verb
whose user selection is something else names it otherwise: ``teach --first-users`` (a prefix of a
seeded permutation), ``distill --first-users`` (the first users of the teacher file) and ``distill
--lora-seed``. Their old spellings still parse, with a deprecation message on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slim.artifacts.layout import default_run_dir


def add_common(p: argparse.ArgumentParser, sample: bool = True) -> None:
    """``sample=False``: the verb defines its own user selection and seed (see the module docstring)."""
    p.add_argument("--dataset", default="ml-100k", help="ml-100k | amazon-video-games | "
                   "amazon-industrial-scientific | custom:<interactions>,<items>")
    p.add_argument("--data-dir", default=None, help="default: $SLIM_DATA_DIR, else ../shared/data")
    if sample:
        p.add_argument("--users", type=int, default=None, help="seeded sample of N users (all when omitted)")
        p.add_argument("--seed", type=int, default=0, help="seed of the user sample")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/<dataset>)")


class DeprecatedSpelling(argparse.Action):
    """An old flag name: stores into the new flag's ``dest`` and says on stderr which flag replaces it."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        self.replacement = replacement
        kwargs.setdefault("help", f"deprecated spelling of {replacement}")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated here; use {self.replacement} (same meaning)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_shortlist(p: argparse.ArgumentParser) -> None:
    """The grounded Step 3's size and shortlist (slim.lm.grounding.GroundingConfig), shared by teach and reason."""
    p.add_argument("--k", type=int, default=3, help="items Step 3 names (grammar)")
    p.add_argument("--candidates", type=int, default=20, help="shortlist size the grammar allows")
    p.add_argument("--popularity-weight", type=float, default=None,
                   help="weight of the training popularity prior in the shortlist (default: the dataset's, "
                        "slim.lm.grounding.SHORTLIST)")
    p.add_argument("--hubness-weight", type=float, default=None,
                   help="weight of the hubness correction in the shortlist (default: the dataset's, "
                        "slim.lm.grounding.SHORTLIST; 0 = none)")
    p.add_argument("--step2", choices=("free", "categories"), default=None,
                   help="categories: Step 2 names catalogue categories (ML-100K genres, Amazon categories) chosen "
                        "under a grammar from the history's most frequent (slim.lm.grounded_step2); free: as the "
                        "model writes it. Default: the dataset's (slim.lm.grounding.STEP2); needs the grammar path")
    p.add_argument("--step2-k", type=int, default=None, help="categories a grounded Step 2 names (default 2)")
    p.add_argument("--step2-candidates", type=int, default=None,
                   help="the history's most frequent categories a grounded Step 2 chooses from (default 3)")
    p.add_argument("--exclude-editions", action="store_true", default=None,
                   help="leave other editions of a history item out of the shortlist (\"Far Cry 3\" after \"Far Cry 3 "
                        "- Playstation 3\"; slim.lm.titles.edition_key). Off by default, so that a file being written "
                        "keeps one configuration; the Space always uses it")


def refuse_mixed_grounding(store, grounding, dataset: str, verb: str) -> None:
    """Stop before a resumed file gets rows of another grounding configuration than the rows it has
    (one file, one configuration: the measures and the fits read a file as one set of rationales).
    ``grounding`` is a GroundingConfig or its asdict; nothing is written when it refuses."""
    from dataclasses import is_dataclass

    from slim.lm.grounding import GroundingConfig, mixed_grounding

    cfg = grounding if is_dataclass(grounding) else GroundingConfig(**grounding)
    diffs = mixed_grounding(store.rows.values(), cfg, dataset)
    if diffs:
        said = ", ".join(f"{k}: the file has {old!r}, this run {new!r}" for k, (old, new) in diffs.items())
        raise SystemExit(f"{verb}: {store.path} was written with another grounding configuration ({said}). "
                         "Fix: rerun with the flags the file was written with (e.g. --popularity-weight, "
                         "--hubness-weight, --step2, --exclude-editions), or write a new file with --name; "
                         f"its {len(store)} rows are kept as they are")


def add_first_users(p: argparse.ArgumentParser, what: str) -> None:
    """``--first-users N`` (into ``users``): the first N users of the order ``what`` names; ``--users`` is its
    old spelling in these verbs."""
    p.add_argument("--first-users", dest="users", type=int, default=None, help=what)
    add_deprecated(p, "--users", "--first-users", dest="users")


def add_deprecated(p: argparse.ArgumentParser, old: str, replacement: str, dest: str, type=int) -> None:
    """``old`` parses like ``replacement`` (into ``dest``) and prints a deprecation message when used."""
    p.add_argument(old, dest=dest, type=type, default=argparse.SUPPRESS, action=DeprecatedSpelling,
                   replacement=replacement)


def run_dir(args: argparse.Namespace) -> Path:
    """The run directory (created): ``--out``, else the layout slim_eval reads (``runs/<dataset>``)."""
    out = args.out or default_run_dir(args.dataset)
    out.mkdir(parents=True, exist_ok=True)
    return out
