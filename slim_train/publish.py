"""``publish``: the student adapter + model card (+ the teacher-rationale data) -> the Hugging Face Hub.

The folder is always staged first (``--staging``, default ``<run dir>/publish/<repo name>/``) and
exactly that folder is uploaded, so ``--dry-run`` (stage only) shows byte for byte what a push sends:

    model/                     -> model repo ``--repo-id``
      adapter_model.safetensors, adapter_config.json, README.md (model card), metrics.json,
      adapter.gguf (llama.cpp, when present), rationales/teacher.parquet (unless --dataset-repo)
    dataset/                   -> dataset repo ``--dataset-repo`` (only when given)
      README.md (dataset card), data/teacher.parquet

The rationale data are the teacher rows the adapter was trained on (same users, same text; checked
by digest against the adapter's metrics.json), with an ``is_validation`` column.

Push: ``huggingface_hub.HfApi`` with the token from ``HF_TOKEN`` (never printed or written) and the
endpoint from ``--endpoint``, else ``HF_ENDPOINT``, else huggingface.co::

    HF_TOKEN=hf_... python -m slim_train publish --repo-id me/slim-smollm2-ml100k
    python -m slim_train publish --repo-id me/slim-smollm2-ml100k --dry-run
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from slim.lm.rationale_file import read_rows

from .common import add_common, run_dir

MODEL_FILES = ("adapter_model.safetensors", "adapter_config.json", "adapter.gguf")


def add_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--repo-id", required=True, help="model repo, e.g. user/slim-smollm2-ml100k")
    p.add_argument("--dry-run", action="store_true", help="only write the staging folder")
    p.add_argument("--adapter", type=Path, default=None, help="default: <run dir>/distill/adapter")
    p.add_argument("--teacher-file", type=Path, nargs="+", default=None,
                   help="default: metrics.json's teacher_file (one or several files, comma-separated there)")
    p.add_argument("--dataset-repo", default=None, help="push the rationales as this dataset repo instead")
    p.add_argument("--no-rationales", action="store_true", help="publish the adapter only")
    p.add_argument("--staging", type=Path, default=None, help="default: <run dir>/publish/<repo name>")
    p.add_argument("--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--commit-message", default="Upload SLIM student adapter")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rationale_rows(metrics: dict, teacher_file: Path | Sequence[Path]) -> list[dict]:
    """The exact teacher rows the adapter was trained on, in training order.

    A teacher file holds one row per (user, split): distill trains on the ``valid`` rows, and the
    shipped files also carry each user's ``test`` row. Rows are keyed by (user, split); on a
    re-written key the last row wins, as in slim.lm.rationale_file. A user entry of
    metrics.json names no split, so the row is the one whose text has the recorded digest
    (``valid`` first).
    """
    from slim.student.sft import example_key

    files = [teacher_file] if isinstance(teacher_file, (str, Path)) else list(teacher_file)
    primary = str(metrics.get("dataset") or "")
    rows: dict[tuple[str, str], dict] = {}
    for path in files:
        for r in read_rows(path)[0]:
            # a student of several datasets names its other datasets' users "<dataset>/<user_id>"
            rows[(example_key(r, primary), str(r.get("split", "valid")))] = r
    splits: dict[str, list[str]] = {}
    for uid, split in rows:
        splits.setdefault(uid, []).append(split)
    val = set(metrics.get("data", {}).get("val_users", []))
    out = []
    for entry in metrics["users"]:
        uid, digest = str(entry[0]), entry[1]
        named = [entry[2]] if len(entry) > 2 else sorted(splits.get(uid, []), key=lambda s: (s != "valid", s))
        r = next((rows[(uid, s)] for s in named if (uid, s) in rows and rows[(uid, s)].get("status") == "ok"
                  and _digest(rows[(uid, s)]["rationale"]) == digest), None)
        if r is None:
            raise SystemExit(f"{teacher_file}: the row of user {uid} the adapter was trained on is missing or changed "
                             f"(splits in the file for this user: {named or 'none'}). Fix: pass the teacher file "
                             "distill read (--teacher-file), or --no-rationales")
        out.append({"user_id": str(r["user_id"]), "dataset": str(r.get("dataset") or primary), "split": r["split"], "history_len": r.get("history_len"),
                    "teacher": r.get("model"), "prompt_hash": r.get("prompt_hash"), "params": json.dumps(r.get("params")),
                    "rationale": r["rationale"], "steps": r.get("steps"), "is_validation": uid in val})
    return out


def write_parquet(rows: list[dict], path: Path) -> None:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(path))


def dataset_card(repo_id: str, model_repo: str, metrics: dict, n: int):
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(license="apache-2.0", language="en", task_categories=["text-generation"],
                           tags=["recommendation", "chain-of-thought", "distillation", "slim"],
                           pretty_name="SLIM teacher rationales", size_categories=["n<1K"] if n < 1000 else ["1K<n<10K"])
    body = f"""
# SLIM teacher rationales ({metrics.get('dataset')})

{n} step-by-step recommendation rationales written by `{metrics.get('teacher_model')}` for the
training prefix of users of `{metrics.get('dataset')}`, used to distill
[`{model_repo}`](https://huggingface.co/{model_repo}). Columns: user_id, split (history = train
prefix for `valid`), teacher, prompt_hash, params (decoding, JSON), rationale (raw text), steps
(the 3 parsed steps), is_validation (held out during distillation).

The prompts are not included: rebuild them from the source dataset with SLIM-Rec
(`slim.lm.prompts.student_messages(dataset.titles(dataset.history(u, split)))`). The rationales name
items of the source dataset; check its terms before reuse. Generated text may be wrong or biased.
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")


def stage(adapter: Path, staging: Path, repo_id: str, teacher_file: Path | None, dataset_repo: str | None,
          include_rationales: bool) -> dict:
    """Write the exact upload folder(s); returns {"model": Path, "dataset": Path | None, "files": [...]}."""
    metrics_path = adapter / "metrics.json"
    if not (adapter / "adapter_model.safetensors").exists() or not metrics_path.exists():
        raise SystemExit(f"{adapter} is not a distilled adapter (needs adapter_model.safetensors + metrics.json). "
                         "Fix: python -m slim_train distill")
    metrics = json.loads(metrics_path.read_text())
    # staged into a temporary sibling, renamed into place only when every file is written: a refused
    # or failed stage leaves no partial folder (and an earlier complete one stays as it was)
    staging.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{staging.name}.", suffix=".partial", dir=staging.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the folder is published, not secret
    try:
        n_rows, has_dataset = _write_stage(adapter, metrics, tmp, repo_id, teacher_file, dataset_repo,
                                           include_rationales)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    tmp.rename(staging)
    files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    return {"model": staging / "model", "dataset": staging / "dataset" if has_dataset else None, "files": files,
            "rationale_rows": n_rows}


def _write_stage(adapter: Path, metrics: dict, staging: Path, repo_id: str, teacher_file: Path | None,
                 dataset_repo: str | None, include_rationales: bool) -> tuple[int, bool]:
    from slim.student.card import build_card

    model_dir = staging / "model"
    model_dir.mkdir(parents=True)
    for name in MODEL_FILES:
        if (adapter / name).exists():
            shutil.copyfile(adapter / name, model_dir / name)
    public = {k: v for k, v in metrics.items() if k not in ("users", "teacher_file")}
    public["config"] = {k: v for k, v in metrics.get("config", {}).items() if k != "base"}  # local cache path
    (model_dir / "metrics.json").write_text(json.dumps(public, indent=1) + "\n")
    n_rows = 0
    has_dataset = False
    if include_rationales:
        tf = teacher_file or [Path(f.strip()) for f in str(metrics.get("teacher_file", "")).split(",")]
        tf = [tf] if isinstance(tf, (str, Path)) else tf
        missing = [str(f) for f in tf if not Path(f).exists()]
        if missing or not tf:
            raise SystemExit(f"teacher file {', '.join(missing)} not found; pass --teacher-file or --no-rationales")
        rows = rationale_rows(metrics, tf)
        n_rows = len(rows)
        if dataset_repo:
            dataset_dir = staging / "dataset"
            write_parquet(rows, dataset_dir / "data" / "teacher.parquet")
            dataset_card(dataset_repo, repo_id, metrics, n_rows).save(dataset_dir / "README.md")
            has_dataset = True
        else:
            write_parquet(rows, model_dir / "rationales" / "teacher.parquet")
    card = build_card(metrics, repo_id=repo_id, dataset_repo=dataset_repo,
                      rationales_in_repo=include_rationales and not dataset_repo)
    card.save(model_dir / "README.md")
    return n_rows, has_dataset


def push(staged: dict, repo_id: str, dataset_repo: str | None, endpoint: str | None, private: bool,
         commit_message: str) -> dict:
    """Create the repo(s) (exist_ok) and upload the staged folder(s) as one commit each."""
    from huggingface_hub import HfApi

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise SystemExit("HF_TOKEN is not set: export a write token (it is read from the environment only)")
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    out = {}
    targets = [("model", repo_id, staged["model"])]
    if dataset_repo and staged["dataset"] is not None:
        targets.insert(0, ("dataset", dataset_repo, staged["dataset"]))  # the card links to it: push it first
    for repo_type, rid, folder in targets:
        api.create_repo(rid, repo_type=repo_type, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=rid, repo_type=repo_type, folder_path=str(folder),
                                 commit_message=commit_message)
        out[repo_type] = {"repo_id": rid, "commit": info.oid, "url": info.commit_url}
    return out


def main(args: argparse.Namespace) -> None:
    out = run_dir(args)
    adapter = args.adapter or out / "distill" / "adapter"
    staging = args.staging or out / "publish" / args.repo_id.replace("/", "__")
    staged = stage(adapter, staging, args.repo_id, args.teacher_file, args.dataset_repo, not args.no_rationales)
    print(f"staged {len(staged['files'])} files in {staging} ({staged['rationale_rows']} rationale rows):")
    for f in staged["files"]:
        print(f"  {f}  ({(staging / f).stat().st_size:,} bytes)")
    if args.dry_run:
        print("dry run: nothing uploaded")
        return
    result = push(staged, args.repo_id, args.dataset_repo, args.endpoint, args.private, args.commit_message)
    for repo_type, r in result.items():
        print(f"pushed {repo_type} {r['repo_id']} at commit {r['commit']}: {r['url']}")
