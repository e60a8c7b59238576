"""Datasets -> one schema: an item table and per-user chronological sequences, leave-one-out split.

Every loader returns a :class:`SequentialDataset`. Item indices are dense and 1-based (0 is the
padding index every backbone reserves); user indices are dense and 0-based. Sequences are stored
once, as a flat CSR pair (``values`` + ``offsets``): ``dataset.sequence(u)`` is a numpy view and
``dataset.to_hf()`` wraps the same buffers in an Arrow list column, so the LM stages get a
``datasets.Dataset`` without a second copy of the interactions.

Split (leave-one-out, as in the SASRec paper): the last item of a sequence is the test target, the
second-to-last the validation target, the rest the training prefix. The history shown to a model is
``seq[:-2]`` when scoring the validation target and ``seq[:-1]`` when scoring the test target.

Tie rule for equal timestamps (ML-100K has many): a *stable* sort on the timestamp, so equal
timestamps keep the order of the rows in the source file.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import urllib.request
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from slim.data.split import Split, held_out, history_end

BUILTIN_DATASETS = ("ml-100k", "amazon-video-games", "amazon-industrial-scientific")
ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
REPO_ROOT = Path(__file__).resolve().parents[2]


class DataFormatError(ValueError):
    """Bad input data: names the file, the line (1-based, header = line 1) and what to fix."""

    def __init__(self, path: Path | str, line: int | None, problem: str, fix: str):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}. Fix: {fix}")
        self.path, self.line, self.problem, self.fix = str(path), line, problem, fix


@dataclass
class SequentialDataset:
    """Items + chronological sequences. ``items`` is indexed by item_idx (1..n_items)."""

    name: str
    items: pd.DataFrame  # index item_idx; columns item_id (source id, str), title, text
    user_ids: np.ndarray  # source user id (str) per user index
    values: np.ndarray  # int64, concatenated item_idx sequences
    offsets: np.ndarray  # int64, len n_users + 1
    meta: dict = field(default_factory=dict)

    # ---- sizes -------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_interactions(self) -> int:
        return int(self.offsets[-1])

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    # ---- sequences and the split --------------------------------------------------------
    def sequence(self, user: int) -> np.ndarray:
        return self.values[self.offsets[user] : self.offsets[user + 1]]

    def history(self, user: int, split: Split) -> np.ndarray:
        """What a model may see when predicting the ``split`` target of ``user``."""
        seq = self.sequence(user)
        return seq[: len(seq) - held_out(split)]

    def target(self, user: int, split: Split) -> int:
        seq = self.sequence(user)
        return int(seq[-held_out(split)])

    def train_prefix(self, user: int) -> np.ndarray:
        return self.sequence(user)[: -held_out("valid")]

    def targets(self, split: Split) -> np.ndarray:
        pos = history_end(self.offsets, np.arange(self.n_users), split)
        return self.values[pos]

    def titles(self, item_idx: Iterable[int]) -> list[str]:
        return self.items.loc[list(item_idx), "title"].tolist()

    @cached_property
    def user_index(self) -> dict[str, int]:
        """Source user id (as text) -> user index. Rationale rows and uploads name users by id, and a
        user sample re-indexes them, so ids are resolved here and nowhere else."""
        return {str(u): i for i, u in enumerate(self.user_ids)}

    @cached_property
    def title_to_idx(self) -> dict[str, int]:
        return {t: int(i) for i, t in zip(self.items.index, self.items["title"])}

    # ---- views --------------------------------------------------------------------------
    def to_hf(self):
        """``datasets.Dataset`` with columns user_idx, user_id, items (list<int64>).

        The list column is built from our own ``values``/``offsets`` buffers (Arrow wraps
        them without copying), so the interactions live in memory once.
        """
        import datasets
        import pyarrow as pa

        items = pa.ListArray.from_arrays(pa.array(self.offsets), pa.array(self.values))
        table = pa.table(
            {
                "user_idx": pa.array(np.arange(self.n_users, dtype=np.int64)),
                "user_id": pa.array(self.user_ids.astype(str)),
                "items": items,
            }
        )
        return datasets.Dataset(table)

    def stats(self) -> dict:
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "mean_length": float(self.lengths.mean()),
            "min_length": int(self.lengths.min()),
            "max_length": int(self.lengths.max()),
        }

    def subset_users(self, users: np.ndarray, name: str | None = None) -> "SequentialDataset":
        """Same catalogue, only ``users`` (used for seeded user samples of big datasets)."""
        users = np.asarray(users, dtype=np.int64)
        seqs = [self.sequence(u) for u in users]
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(s) for s in seqs])
        return SequentialDataset(
            name or self.name,
            self.items,
            self.user_ids[users],
            np.concatenate(seqs).astype(np.int64),
            offsets,
            {**self.meta, "user_sample_of": self.name, "user_sample_size": len(users)},
        )


# ---------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------

def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``--data-dir``, else ``$SLIM_DATA_DIR``, else ``../shared/data`` beside the repository."""
    if data_dir:
        return Path(data_dir)
    if os.environ.get("SLIM_DATA_DIR"):
        return Path(os.environ["SLIM_DATA_DIR"])
    return REPO_ROOT.parent / "shared" / "data"


def _refuse_first(inter: pd.DataFrame, bad: pd.Series, source: Path, what, fix: str) -> None:
    """Raise DataFormatError at the first row where ``bad`` holds (its file line, ``what(row)``, ``fix``)."""
    if bad.any():
        row = int(np.flatnonzero(bad.values)[0])
        raise DataFormatError(source, int(inter["_line"].iloc[row]), what(inter.iloc[row]), fix)


def _build(
    name: str,
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    source: Path,
    meta: dict | None = None,
) -> SequentialDataset:
    """items: item_id,title,text (source order). interactions: user_id,item_id[,timestamp], file order."""
    items = items.reset_index(drop=True)
    items.index = pd.RangeIndex(1, len(items) + 1, name="item_idx")
    id_to_idx = pd.Series(items.index.values, index=items["item_id"].values)
    inter = interactions.copy()
    inter["item_idx"] = inter["item_id"].map(id_to_idx)
    _refuse_first(inter, inter["item_idx"].isna(), source, lambda r: f"item_id {r['item_id']!r} is not in the items file",
                  "add the item to the items file or drop the interaction")
    _refuse_first(inter, inter.duplicated(["user_id", "item_id"]), source,
                  lambda r: f"duplicate interaction (user {r['user_id']!r}, item {r['item_id']!r})",
                  "keep one row per user-item pair (SLIM predicts the next new item)")
    # first appearance order of users, then a stable sort: equal timestamps keep file order
    inter["_user_order"] = pd.factorize(inter["user_id"])[0]
    keys = ["_user_order"] + (["timestamp"] if "timestamp" in inter else [])
    inter = inter.sort_values(keys, kind="stable")
    counts = inter.groupby("_user_order", sort=True).size().values
    short = np.flatnonzero(counts < 3)
    if len(short):
        rows = inter.loc[inter["_user_order"] == short[0]]
        u = rows["user_id"].iloc[0]
        raise DataFormatError(
            source, int(rows["_line"].min()),
            f"user {u!r} has {counts[short[0]]} interaction(s); leave-one-out needs at least 3",
            "drop users with fewer than 3 interactions (or apply a k-core filter)",
        )
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    user_ids = inter.drop_duplicates("_user_order")["user_id"].astype(str).to_numpy()
    values = inter["item_idx"].to_numpy(dtype=np.int64)
    return SequentialDataset(name, items, user_ids, values, offsets, meta or {})


def _read_table(path: Path, required: list[str], **kwargs) -> pd.DataFrame:
    """CSV/TSV/JSONL -> DataFrame of str columns, with ``_line`` (1-based file line)."""
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        raise DataFormatError(path, None, "file not found", "check the path or --data-dir") from None
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataFormatError(path, line, "not valid UTF-8", "re-save the file as UTF-8") from None
    if not text.strip():
        raise DataFormatError(path, 1, "file is empty", "provide a header row and data rows")
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFormatError(path, n, f"invalid JSON ({e.msg})", "write one JSON object per line") from None
                rec["_line"] = n
                rows.append(rec)
        df = pd.DataFrame(rows)
    else:
        sep = "\t" if path.suffix in (".tsv", ".inter", ".item") else ","
        try:
            df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, **kwargs)
        except pd.errors.ParserError as e:  # ragged row: pandas names the line, we keep its number
            m = re.search(r"line (\d+)", str(e))
            raise DataFormatError(path, int(m.group(1)) if m else None, f"malformed row ({e})",
                                  "give every row the same number of fields as the header") from None
        df.columns = [c.split(":")[0].strip() for c in df.columns]
        df["_line"] = np.arange(2, len(df) + 2)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataFormatError(
            path, 1, f"missing column(s) {missing}; found {[c for c in df.columns if c != '_line']}",
            f"add a header with the columns {required}",
        )
    for c in required:
        df[c] = df[c].fillna("").astype(str)  # a JSONL record without the key / a short CSV row -> ""
        empty = df[c].str.strip() == ""
        if empty.any():
            raise DataFormatError(path, int(df["_line"][empty].iloc[0]), f"empty {c}", f"fill in {c} or drop the row")
    return df


def _item_text(df: pd.DataFrame, fields: list[str]) -> pd.Series:
    """Text to encode for an item: "title. field: value. ..." over the non-empty fields."""
    parts = [df["title"].str.strip()]
    for f in fields:
        if f in df.columns:
            parts.append(df[f].fillna("").astype(str).map(lambda v, f=f: f"{f}: {v.strip()}" if v.strip() else ""))
    joined = pd.concat(parts, axis=1).apply(lambda r: ". ".join(p.rstrip(".") for p in r if p), axis=1)
    return joined


# ---------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------

def load_ml100k(data_dir: Path, download_url: str = ML100K_URL) -> SequentialDataset:
    root = data_dir / "ml-100k" / "raw"
    inter_path, item_path = root / "ml-100k.inter", root / "ml-100k.item"
    if not inter_path.exists():
        download_ml100k(root, download_url)
    inter = _read_table(inter_path, ["user_id", "item_id", "timestamp"])
    inter["timestamp"] = inter["timestamp"].astype(float)
    items = _read_table(item_path, ["item_id", "movie_title"], quoting=csv.QUOTE_NONE)
    items = items.rename(columns={"movie_title": "title", "class": "genre", "release_year": "year"})
    items["text"] = _item_text(items, ["year", "genre"])
    return _build("ml-100k", items[["item_id", "title", "text", "year", "genre"]], inter, inter_path,
                  {"source": str(root)})


def download_ml100k(dest: Path, url: str = ML100K_URL, timeout: float = 60.0) -> None:
    """Fetch the GroupLens zip and write RecBole-style atomic files into ``dest``.

    Titles keep GroupLens's form ("Toy Story (1995)"); the RecBole copy strips the year, so
    a downloaded ML-100K differs from the bundled one in title text only.
    """
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed https URL or test server)
        payload = resp.read()
    zf = zipfile.ZipFile(io.BytesIO(payload))
    names = {Path(n).name: n for n in zf.namelist()}
    if "u.data" not in names or "u.item" not in names:
        raise DataFormatError(url, None, "zip lacks ml-100k/u.data or u.item", "point --data-dir at a local copy")
    dest.mkdir(parents=True, exist_ok=True)
    data = zf.read(names["u.data"]).decode("latin-1")
    with open(dest / "ml-100k.inter", "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        f.write(data if data.endswith("\n") else data + "\n")
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
              "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
              "Thriller", "War", "Western"]
    with open(dest / "ml-100k.item", "w", encoding="utf-8") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for line in zf.read(names["u.item"]).decode("latin-1").splitlines():
            if not line.strip():
                continue
            p = line.split("|")
            year = p[2][-4:] if p[2] else ""
            flags = [g for g, v in zip(genres, p[5:]) if v == "1"]
            f.write(f"{p[0]}\t{p[1]}\t{year}\t{' '.join(flags)}\n")


def load_games(data_dir: Path) -> SequentialDataset:
    root = data_dir / "amazon-video-games" / "raw"
    items = _read_table(root / "Games.item", ["item_id", "title"], quoting=csv.QUOTE_NONE)
    items["text"] = items["title"]
    test = _read_table(root / "Games-6k.test.inter", ["user_id", "item_id_list", "item_id"], quoting=csv.QUOTE_NONE)
    # full sequence = history + last item (dataset README); one row per interaction, file order
    seqs = (test["item_id_list"] + " " + test["item_id"]).str.split()
    inter = pd.DataFrame({
        "user_id": np.repeat(test["user_id"].to_numpy(), seqs.str.len()),
        "item_id": np.concatenate(seqs.to_numpy()),
        "_line": np.repeat(test["_line"].to_numpy(), seqs.str.len()),
    })
    return _build("amazon-video-games", items[["item_id", "title", "text"]], inter, root / "Games-6k.test.inter",
                  {"source": str(root)})


def load_scientific(data_dir: Path) -> SequentialDataset:
    root = data_dir / "amazon-industrial-scientific" / "raw"
    item_path, inter_path = root / "Scientific.item.json", root / "Scientific.inter.json"
    meta = json.loads(item_path.read_text(encoding="utf-8"))
    items = pd.DataFrame([{"item_id": k, **v} for k, v in meta.items()]).fillna("")
    items["category"] = items["categories"].str.split(",").str[-1].fillna("")
    items["text"] = _item_text(items, ["brand", "category"])
    seqs = json.loads(inter_path.read_text(encoding="utf-8"))
    users = list(seqs)
    inter = pd.DataFrame({
        "user_id": np.repeat(users, [len(seqs[u]) for u in users]),
        "item_id": [str(i) for u in users for i in seqs[u]],
    })
    inter["_line"] = 1  # single-line JSON: no useful line numbers
    return _build("amazon-industrial-scientific",
                  items[["item_id", "title", "text", "brand", "category", "description"]], inter, inter_path,
                  {"source": str(root)})


def load_custom(interactions_path: str | Path, items_path: str | Path, name: str = "custom") -> SequentialDataset:
    """Interactions: user_id,item_id[,timestamp] (CSV or JSONL); items: item_id,title[,category,brand,description].

    Without a timestamp column the file order is the chronological order.
    """
    interactions_path, items_path = Path(interactions_path), Path(items_path)
    items = _read_table(items_path, ["item_id", "title"])
    dup = items.duplicated("item_id")
    if dup.any():
        raise DataFormatError(items_path, int(items["_line"][dup].iloc[0]),
                              f"duplicate item_id {items['item_id'][dup].iloc[0]!r}", "keep one row per item")
    fields = [c for c in ("category", "brand", "description") if c in items.columns]
    items["text"] = _item_text(items, fields)
    inter = _read_table(interactions_path, ["user_id", "item_id"])
    if "timestamp" in inter.columns:
        ts = pd.to_numeric(inter["timestamp"], errors="coerce")
        if ts.isna().any():
            raise DataFormatError(interactions_path, int(inter["_line"][ts.isna()].iloc[0]),
                                  f"timestamp {inter['timestamp'][ts.isna()].iloc[0]!r} is not a number",
                                  "use Unix seconds, or drop the column to use file order")
        inter["timestamp"] = ts
    return _build(name, items[["item_id", "title", "text", *fields]], inter, interactions_path,
                  {"source": str(interactions_path)})


_LOADERS = {"ml-100k": load_ml100k, "amazon-video-games": load_games, "amazon-industrial-scientific": load_scientific}


def load_dataset(name: str, data_dir: str | Path | None = None) -> SequentialDataset:
    """Load a built-in dataset by name, or a custom one given as ``custom:<interactions>,<items>``."""
    if name.startswith("custom:"):
        inter_path, items_path = name[len("custom:"):].split(",", 1)
        return load_custom(inter_path, items_path)
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {BUILTIN_DATASETS} or custom:<interactions>,<items>")
    return _LOADERS[name](resolve_data_dir(data_dir))


def sample_users(dataset: SequentialDataset, n: int | None, seed: int = 0) -> np.ndarray:
    """Seeded sample of user indices (sorted); all users when ``n`` is None or >= n_users."""
    if n is None or n >= dataset.n_users:
        return np.arange(dataset.n_users)
    return np.sort(np.random.default_rng(seed).choice(dataset.n_users, size=n, replace=False))
