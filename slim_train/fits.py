"""``fits``: ship fitted checkpoints, so a fresh clone measures SLIM without hours of training.

    python -m slim_train fits export --dataset ml-100k [--from runs/ml-100k/checkpoints]
        [--to assets/ml-100k/checkpoints] [--variants slim,match,...] [--dtype fp16]
    python -m slim_train fits publish --dataset ml-100k --repo me/slim-ml100k-fits [--dry-run]

``export`` copies every complete checkpoint of ``--from`` (``config.json`` + ``model.safetensors``
with its floating-point tensors cast to ``--dtype``; ``train_state.pt`` is dropped) into
``--to/<same directory name>/``. ``slim.recommenders.train.fit(reuse_from=[--to])`` then loads a
checkpoint whose key matches in place (``slim_eval`` passes ``assets/<dataset>/checkpoints``), and
``load_state_dict`` casts fp16 back into the fp32 parameters, so scores are computed in fp32.

Refused (nothing is written then): a checkpoint still training or without weights, one written
by another checkpoint format (its key could never match what ``fit`` computes now), and any file
of 20 MB or more (the repository ships them in git). A stale sibling in ``--to`` (same run name,
another fit config, dataset or key format) is removed, since ``fit`` can never load it and the demo
would try it first; a sibling that differs only in its texts (another rationale file, which an
archived report reads) is kept.

``publish`` stages ``--to`` (default ``assets/<dataset>/checkpoints``) with a model card into
``<run dir>/publish/<repo>__fits/model/`` and uploads exactly that folder as a Hub model repo, the
same way ``publish`` pushes the adapter (token from ``HF_TOKEN``, never printed or written).
``slim_eval --fits-from-hub <repo>`` downloads it back into ``runs/<dataset>/hub-fits/``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from slim.artifacts.layout import REPO_ROOT, default_run_dir

MAX_FILE_BYTES = 20 * 1024 * 1024
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
CHECKPOINT_FILES = ("config.json", "model.safetensors")


def add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    e = sub.add_parser("export", help="copy complete checkpoints (fp16 weights) into a shippable folder")
    e.add_argument("--dataset", default="ml-100k")
    e.add_argument("--from", dest="src", type=Path, default=None, help="default: runs/<dataset>/checkpoints")
    e.add_argument("--to", dest="dst", type=Path, default=None, help="default: assets/<dataset>/checkpoints")
    e.add_argument("--variants", default=None,
                   help="comma list of slim_eval variant names (id,text,teacher,slim,match,match-step1,...); "
                   "default: every checkpoint in --from")
    e.add_argument("--dtype", choices=tuple(DTYPES), default="fp16")
    e.add_argument("--skip-incomplete", action="store_true",
                   help="export the complete checkpoints and list the others (default: refuse them all)")
    u = sub.add_parser("publish", help="upload an exported folder to a Hub model repo")
    u.add_argument("--dataset", default="ml-100k")
    u.add_argument("--repo", required=True, help="Hub model repo id, e.g. me/slim-ml100k-fits")
    u.add_argument("--from", dest="src", type=Path, default=None, help="default: assets/<dataset>/checkpoints")
    u.add_argument("--staging", type=Path, default=None, help="default: runs/<dataset>/publish/<repo>__fits")
    u.add_argument("--dry-run", action="store_true", help="only write the staging folder")
    u.add_argument("--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    u.add_argument("--private", action="store_true")
    u.add_argument("--commit-message", default="Upload SLIM fitted checkpoints")


def shipped_dir(dataset: str) -> Path:
    return REPO_ROOT / "assets" / default_run_dir(dataset).name / "checkpoints"


def _run_name(dirname: str) -> str:
    """``sasrec-slim-seed0-<hash>`` -> ``sasrec-slim-seed0``."""
    return dirname.rsplit("-", 1)[0]


def variant_of(dirname: str) -> str:
    """The slim_eval variant of a checkpoint directory, dash-free: ``none-match-step3clean-seed0-<hash>``
    -> ``matchstep3clean`` (= ``match-step3-clean`` without dashes). From the name, so a directory
    still training (no config.json yet) is selected by ``--variants`` like a finished one."""
    return _run_name(dirname).rsplit("-seed", 1)[0].split("-", 1)[-1].replace("-", "")


def why_not_exportable(ckpt: Path) -> str | None:
    """None when ``ckpt`` is a finished checkpoint of the current format; else why not."""
    from slim.recommenders.checkpoint import FORMAT_VERSION

    unfinished = "incomplete (still training, or stopped: resume it with slim_eval)"
    try:
        record = json.loads((ckpt / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        # fit() writes config.json when training ends; until then there is only train_state.pt
        return unfinished if (ckpt / "train_state.pt").exists() else "no readable config.json"
    if not record.get("complete"):
        return unfinished
    if not (ckpt / "model.safetensors").exists():
        return "no model.safetensors"
    fmt = record.get("key", {}).get("format")
    if fmt != FORMAT_VERSION:
        return f"checkpoint format {fmt}, not {FORMAT_VERSION}: fit() never matches its key (refit it)"
    return None


def convert(src: Path, dst: Path, dtype: str) -> None:
    """``model.safetensors`` with every floating-point tensor cast to ``dtype`` (integers untouched)."""
    import torch
    from safetensors.torch import load_file, save_file

    target = getattr(torch, DTYPES[dtype])
    state = load_file(str(src))
    save_file({k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in state.items()},
              str(dst), metadata={"format": "pt", "dtype": DTYPES[dtype]})
    dst.chmod(0o644)  # safetensors writes 0600; a shipped file is read by whoever clones it


def export(src: Path, dst: Path, variants: list[str] | None = None, dtype: str = "fp16",
           skip_incomplete: bool = False) -> dict:
    """Copy the selected checkpoints of ``src`` into ``dst``; returns {"exported", "refused", "removed", "bytes"}."""
    if not src.is_dir():
        raise SystemExit(f"{src}: no checkpoints directory (fit them with python -m slim_eval)")
    wanted = {v.replace("-", "") for v in variants} if variants else None
    chosen, refused = [], {}
    for ckpt in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if wanted is not None and variant_of(ckpt.name) not in wanted:
            continue
        why = why_not_exportable(ckpt)
        if why is None:
            chosen.append((ckpt, json.loads((ckpt / "config.json").read_text())))
        else:
            refused[ckpt.name] = why
    if refused and not skip_incomplete:
        raise SystemExit(f"refused {len(refused)} checkpoint(s) of {src}; nothing exported "
                         "(--skip-incomplete exports the others):\n"
                         + "\n".join(f"  {k}: {v}" for k, v in refused.items()))
    if not chosen:
        raise SystemExit(f"{src}: no complete checkpoint matches --variants {','.join(variants or [])}")
    dst.mkdir(parents=True, exist_ok=True)
    exported, total = [], 0
    with tempfile.TemporaryDirectory(dir=dst, prefix=".export-") as tmp:
        staged = []
        for ckpt, record in chosen:
            out = Path(tmp) / ckpt.name
            out.mkdir()
            convert(ckpt / "model.safetensors", out / "model.safetensors", dtype)
            record = {**record, "weights_dtype": DTYPES[dtype]}
            (out / "config.json").write_text(json.dumps(record, indent=2) + "\n")
            for f in CHECKPOINT_FILES:
                size = (out / f).stat().st_size
                if size >= MAX_FILE_BYTES:
                    raise SystemExit(f"{ckpt.name}/{f} is {size / 1e6:.1f} MB in {dtype} (limit 20 MB); nothing exported")
                total += size
            staged.append(out)
        for out in staged:  # all converted and checked: now replace
            final = dst / out.name
            shutil.rmtree(final, ignore_errors=True)
            out.rename(final)
            exported.append(out.name)
    keys = {_run_name(ckpt.name): record["key"] for ckpt, record in chosen}
    removed = []
    for p in sorted(dst.iterdir()):
        if p.is_dir() and not p.name.startswith(".") and p.name not in exported and _run_name(p.name) in keys:
            if _other_texts_only(p, keys[_run_name(p.name)]):
                continue  # the same fit on another rationale file: an archived report still reuses it
            shutil.rmtree(p)
            removed.append(p.name)
    return {"exported": exported, "refused": refused, "removed": removed, "bytes": total}


def _other_texts_only(sibling: Path, key: dict) -> bool:
    """True when ``sibling`` is the same run (config, dataset) fitted on other texts, e.g. an archived
    report's rationale file: ``fit`` still loads it for those texts, so it is not stale."""
    try:
        other = json.loads((sibling / "config.json").read_text())["key"]
    except (OSError, json.JSONDecodeError, KeyError):
        return False
    same = ("format", "config", "dataset")
    return all(other.get(k) == key.get(k) for k in same) and other != key


def model_card(dataset: str, repo: str, folder: Path) -> str:
    rows = []
    for cfg_path in sorted(folder.glob("*/config.json")):
        r = json.loads(cfg_path.read_text())
        ndcg = r.get("valid_metrics", {}).get("NDCG@10")
        rows.append(f"| `{cfg_path.parent.name}` | {r.get('best_epoch')} | "
                    f"{'-' if ndcg is None else f'{100 * ndcg:.2f}'} | {r.get('weights_dtype', 'float32')} |")
    return f"""---
tags:
- recommendation
- sequential-recommendation
- slim
---
# SLIM-Rec fitted checkpoints ({dataset})

{len(rows)} fitted models of SLIM-Rec (backbone x variant x seed) for `{dataset}`. Each folder holds
`model.safetensors` (weights) and `config.json` (its provenance: config, data fingerprint, the
texts and encoder of its text inputs, validation history). `python -m slim_eval --split test
--dataset {dataset} --fits-from-hub {repo}` downloads them and reuses every checkpoint whose
provenance matches the local inputs instead of training it.

| checkpoint | best epoch | valid NDCG@10 (full, x100) | weights |
|---|---|---|---|
""" + "\n".join(rows) + "\n\nThe models are trained on the source dataset's interactions; check its terms before reuse.\n"


def stage(src: Path, staging: Path, dataset: str, repo: str) -> dict:
    """The exact folder a push uploads: every checkpoint of ``src`` (complete ones only) + README.md."""
    if not src.is_dir() or not any(src.glob("*/config.json")):
        raise SystemExit(f"{src}: no exported checkpoints (make them with python -m slim_train fits export)")
    bad = {p.name: why for p in sorted(src.iterdir()) if p.is_dir() and not p.name.startswith(".")
           if (why := why_not_exportable(p))}
    if bad:
        raise SystemExit("refused to publish:\n" + "\n".join(f"  {k}: {v}" for k, v in bad.items()))
    shutil.rmtree(staging, ignore_errors=True)
    model_dir = staging / "model"
    model_dir.mkdir(parents=True)
    for p in sorted(src.iterdir()):
        if p.is_dir() and not p.name.startswith("."):
            (model_dir / p.name).mkdir()
            for f in CHECKPOINT_FILES:
                shutil.copyfile(p / f, model_dir / p.name / f)
    (model_dir / "README.md").write_text(model_card(dataset, repo, model_dir), encoding="utf-8")
    files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    return {"model": model_dir, "dataset": None, "files": files}


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main(args: argparse.Namespace) -> None:
    if args.action == "export":
        src = args.src or default_run_dir(args.dataset) / "checkpoints"
        dst = args.dst or shipped_dir(args.dataset)
        variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
        res = export(src, dst, variants, args.dtype, args.skip_incomplete)
        for name, why in res["refused"].items():
            print(f"skipped {name}: {why}")
        for name in res["removed"]:
            print(f"removed stale {dst / name} (same run, another key)")
        print(f"exported {len(res['exported'])} checkpoints ({args.dtype}) from {src} to {dst}: "
              f"{_mb(res['bytes'])} in all")
        return
    from .publish import push

    src = args.src or shipped_dir(args.dataset)
    staging = args.staging or default_run_dir(args.dataset) / "publish" / (args.repo.replace("/", "__") + "__fits")
    staged = stage(src, staging, args.dataset, args.repo)
    total = sum((staging / f).stat().st_size for f in staged["files"])
    print(f"staged {len(staged['files'])} files in {staging} ({_mb(total)})")
    if args.dry_run:
        print("dry run: nothing uploaded")
        return
    result = push(staged, args.repo, None, args.endpoint, args.private, args.commit_message)
    r = result["model"]
    print(f"pushed model {r['repo_id']} at commit {r['commit']}: {r['url']}")
