"""``merge-rationales``: shards of ``teach``/``reason --shard I/N`` -> one ``rationales/<name>.jsonl``.

Sharded generation: ``--shard I/N`` (I = 0..N-1) makes a run write only the (user, split) pairs whose
hash falls in shard I (a deterministic 1/N, independent of the order or number of users) into its own
append-only ``rationales/<name>.shard-I-of-N.jsonl``, next to a manifest
``<name>.shard-I-of-N.manifest.json`` listing the pairs that shard owes (in the order of an unsharded
run). Shards run anywhere (other machines, other endpoints), are resumable like any run (rows already
written are skipped) and can be killed at any time.

Merging checks every manifest belongs to the same job (dataset, users, splits, N), that each pair owed
is present with a finished row (not an endpoint error), and writes the rows in the unsharded run's
order with no duplicates. Anything missing is listed by shard, with the command that completes it::

    python -m slim_train teach --dataset ml-100k --first-users 1000 --shard 0/4 &   # ... 1/4, 2/4, 3/4
    python -m slim_train merge-rationales --dataset ml-100k --name teacher --shards 4
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

from .common import run_dir


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N) with 0 <= I < N; None when not sharded."""
    if not spec:
        return None
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise SystemExit(f"--shard {spec!r}: expected I/N, e.g. 0/4 (shards are numbered 0..N-1)") from None
    if n < 1 or not 0 <= i < n:
        raise SystemExit(f"--shard {spec!r}: need 0 <= I < N (shards are numbered 0..N-1)")
    return i, n


def shard_of(user_id: str, split: str, n: int) -> int:
    """The shard a (user, split) pair belongs to: a hash, so it never depends on which users a run has."""
    return int.from_bytes(hashlib.sha256(f"{user_id}\t{split}".encode()).digest()[:8], "big") % n


def shard_path(rationales_dir: Path, name: str, i: int, n: int) -> Path:
    return rationales_dir / f"{name}.shard-{i}-of-{n}.jsonl"


def manifest_path(shard_file: Path) -> Path:
    return shard_file.with_name(shard_file.name.removesuffix(".jsonl") + ".manifest.json")


def write_manifest(shard_file: Path, keys: list[tuple[str, str]], i: int, n: int, job: dict) -> list[tuple[str, str]]:
    """Record the pairs shard ``i`` owes (``keys`` is the whole job in unsharded order); returns them.

    A rerun with another job (other users or splits) for the same file is refused: its rows would mix."""
    mine = [(k, pos) for pos, k in enumerate(keys) if shard_of(k[0], k[1], n) == i]
    record = {"shard": i, "shards": n, "job": job, "total_pairs": len(keys),
              "pairs": [[u, s, pos] for (u, s), pos in mine]}
    path = manifest_path(shard_file)
    if path.exists():
        old = json.loads(path.read_text())
        if old["job"] != job or old["shards"] != n:
            raise SystemExit(f"{path} was written for another job {old['job']} ({old['shards']} shards); this run is "
                             f"{job} ({n} shards). Use another --name or delete the shard files")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)
    return [k for k, _ in mine]


def split_groups(ds, users, splits: list[str], mine: set[tuple[str, str]] | None) -> list[tuple[list, list[str]]]:
    """(users, [split]) groups for ``write_rationales``: everything at once unsharded, else per split the
    users whose pair is in this shard."""
    if mine is None:
        return [(list(users), splits)]
    return [([u for u in users if (str(ds.user_ids[u]), s) in mine], [s]) for s in splits]


def add_shard_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="write only shard I of N (0-based) of the (user, split) pairs to "
                   "rationales/<name>.shard-I-of-N.jsonl; merge with `merge-rationales --name <name> --shards N`")


def output_for(args: argparse.Namespace, rationales_dir: Path, keys: list[tuple[str, str]], job: dict
               ) -> tuple[Path, set[tuple[str, str]] | None]:
    """The file this run appends to and, when sharded, the pairs it owns (manifest written)."""
    shard = parse_shard(args.shard)
    if shard is None:
        return rationales_dir / f"{args.name}.jsonl", None
    path = shard_path(rationales_dir, args.name, *shard)
    return path, set(write_manifest(path, keys, shard[0], shard[1], job))


def merge(rationales_dir: Path, name: str, n: int) -> tuple[Path, int]:
    """Merge the N shards into ``<name>.jsonl``; returns (path, rows). Raises SystemExit listing what is missing."""
    from slim.lm.rationale_file import RationaleStore

    problems, jobs, order = [], {}, {}
    stores = {}
    for i in range(n):
        f = shard_path(rationales_dir, name, i, n)
        m = manifest_path(f)
        if not m.exists():
            problems.append(f"shard {i}/{n}: never started ({m.name} is missing)")
            continue
        man = json.loads(m.read_text())
        jobs[i] = json.dumps(man["job"], sort_keys=True)
        stores[i] = RationaleStore(f)
        missing = []
        for u, s, pos in man["pairs"]:
            order[(u, s)] = pos
            if not stores[i].done((u, s)):
                row = stores[i].rows.get((u, s))
                missing.append(f"{u}/{s}" + (f" ({row['status'][:80]})" if row else ""))
        if missing:
            problems.append(f"shard {i}/{n}: {len(missing)} of {len(man['pairs'])} pairs missing or failed: "
                            + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if len(set(jobs.values())) > 1:
        problems.append("the shards were made by different jobs: " + "; ".join(f"shard {i}: {j}" for i, j in jobs.items()))
    if not problems and len(order) != json.loads(manifest_path(shard_path(rationales_dir, name, 0, n)).read_text())[
            "total_pairs"]:
        problems.append(f"the manifests cover {len(order)} pairs of the job's "
                        f"{json.loads(manifest_path(shard_path(rationales_dir, name, 0, n)).read_text())['total_pairs']}")
    if problems:
        raise SystemExit("merge-rationales: not merged, nothing written.\n  " + "\n  ".join(problems)
                         + "\nRerun the same teach/reason command with the shard(s) named above (it resumes), "
                         "then merge again.")
    out = rationales_dir / f"{name}.jsonl"
    # rows of an earlier unsharded file outside this job are kept (first, in their order)
    kept = [r for k, r in RationaleStore(out).rows.items() if k not in order] if out.exists() else []
    rows = {}
    for i, store in stores.items():
        for key, row in store.rows.items():
            if key in order:
                if key in rows:
                    raise SystemExit(f"merge-rationales: {key} is in two shards; the shard files were edited by hand")
                rows[key] = row
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w") as fh:
        for row in kept:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        for key in sorted(rows, key=order.__getitem__):
            fh.write(json.dumps(rows[key], ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return out, len(rows) + len(kept)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="ml-100k", help="names the run directory runs/<dataset> (with --out unset)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/<dataset>)")
    p.add_argument("--name", required=True, help="rationales/<name>.shard-I-of-N.jsonl -> rationales/<name>.jsonl")
    p.add_argument("--shards", type=int, required=True, help="N of --shard I/N")


def main(args: argparse.Namespace) -> None:
    out = run_dir(args)
    path, n = merge(out / "rationales", args.name, args.shards)
    print(f"merged {args.shards} shards: {n} rows in {path}")
