"""The rationale file: append-only JSONL, one row per (user_id, split), that survives kill -9.

Every reader and the writer of rationale JSONL go through this module, so they agree on which rows
a file holds. The torn-line policy, the same for all of them:

* a row is written with a single ``write`` + flush + fsync, so a crash loses at most the row in
  flight and leaves at most one torn (unterminated) last line;
* reading stops at the first line that is not a complete JSON row (no trailing newline, or not
  JSON); that line and anything after it are not rows, and the next append overwrites them;
* a key written again (:meth:`RationaleStore.replace`) is the later row: the last row of a key wins.

:func:`read_rows` gives every row in file order (repeats included, for readers that keep file
order); :class:`RationaleStore` and :func:`read_rationales` give the latest row per key.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def row_key(row: dict) -> tuple[str, str]:
    """``(user_id, split)``: what identifies a rationale row."""
    return str(row["user_id"]), row["split"]


def read_rows(path: str | Path) -> tuple[list[dict], int]:
    """Complete rows of ``path`` in file order, and the bytes they occupy (where the next row goes)."""
    rows, pos = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn final line from a crash: not a row, overwritten by the next append
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            rows.append(row)
            pos += len(line)
    return rows, pos


def read_rationales(path: str | Path) -> list[dict]:
    """The latest row of every (user_id, split) key of ``path``, in the order the keys first appear."""
    return list(RationaleStore(path).rows.values())


class RationaleStore:
    """Append-only JSONL of rationale rows keyed by (user_id, split)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[tuple[str, str], dict] = {}
        self._valid_bytes = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        rows, self._valid_bytes = read_rows(self.path)
        for row in rows:
            self.rows[row_key(row)] = row

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.rows

    def done(self, key: tuple[str, str]) -> bool:
        """A row exists and is not an endpoint error (those are retried)."""
        row = self.rows.get(key)
        return row is not None and not row["status"].startswith("error")

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: dict) -> None:
        key = row_key(row)
        if key in self.rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        with open(self.path, "r+b" if self.path.exists() else "wb") as f:
            f.seek(self._valid_bytes)
            f.write(line)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        self._valid_bytes += len(line)
        self.rows[key] = row

    def replace(self, row: dict) -> None:
        """Append a newer row for an existing key; on load the last row of a key wins (append-only)."""
        key = row_key(row)
        self.rows.pop(key, None)
        self.append(row)

    def ok_rows(self, split: str | None = None) -> list[dict]:
        return [r for r in self.rows.values() if r["status"] == "ok" and (split is None or r["split"] == split)]
