"""Rows -> a history of catalogue items: match each title, drop what cannot be used (with a reason), bound the length.

Only *catalogue* titles of matched items ever reach a prompt; the visitor's text is used for lookup only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from slim.lm.titles import TitleMatch, TitleMatcher, readable_title

from .limits import (FUZZY_THRESHOLD, MAX_HISTORY, MAX_QUERY_CHARS, MIN_HISTORY, UploadError, check_rows,
                     check_text, has_surrogate, short, shown)
from .parsing import Row, json_list, order_rows, pasted_rows, read_upload, rows_from_records

@dataclass(frozen=True)
class MatchedItem:
    row: int  # 1-based row/line of the input (header = line 1 for CSV)
    query: str  # what the visitor wrote
    item_idx: int
    title: str  # the catalogue's title (the only text that reaches a prompt)
    how: str  # "exact" | "fuzzy" | "picked"
    score: float  # 100 for exact


@dataclass(frozen=True)
class DroppedRow:
    row: int
    text: str
    reason: str


@dataclass
class History:
    """The result of parsing + matching: items oldest first, plus everything the UI must show."""

    items: list[MatchedItem]
    dropped: list[DroppedRow] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @property
    def item_idx(self) -> list[int]:
        return [m.item_idx for m in self.items]

    @property
    def titles(self) -> list[str]:
        return [m.title for m in self.items]

    def matched_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"#": n, "you wrote": short(m.query), "matched title": m.title, "how": m.how, "score": round(m.score, 1)}
             for n, m in enumerate(self.items, 1)],
            columns=["#", "you wrote", "matched title", "how", "score"],
        )

    def dropped_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"row": d.row, "text": short(d.text), "reason": d.reason} for d in self.dropped],
            columns=["row", "text", "reason"],
        )



class Catalogue:
    """The dataset's items as a lookup table: normalised title -> item index (first one wins)."""

    def __init__(self, titles: Sequence[str], item_idx: Sequence[int]):
        self.matcher = TitleMatcher(titles, item_idx, "upload")
        self.titles, self.item_idx = self.matcher.titles, self.matcher.item_idx
        self._by_idx = {i: t for i, t in zip(self.item_idx, self.titles)}

    @classmethod
    def from_dataset(cls, dataset: Any) -> "Catalogue":
        """``dataset``: a slim.data.dataset.SequentialDataset (items indexed by item_idx, column title)."""
        return cls(dataset.items["title"].astype(str).tolist(), dataset.items.index.tolist())

    def __len__(self) -> int:
        return len(self.titles)

    def title_of(self, item_idx: int) -> str:
        return self._by_idx[int(item_idx)]

    def match(self, query: str) -> TitleMatch | None:
        """``(item_idx, catalogue title, "exact"|"fuzzy", score)`` or None when nothing is close."""
        return self.matcher.match(query)

    def choices(self) -> list[str]:
        """Labels for a searchable multiselect: the readable title, made unique with the item index if needed."""
        labels = [readable_title(t) for t in self.titles]
        seen: dict[str, int] = {}
        for t in labels:
            seen[t] = seen.get(t, 0) + 1
        return [t if seen[t] == 1 else f"{t} [#{i}]" for t, i in zip(labels, self.item_idx)]

    def from_choice(self, label: str) -> int | None:
        m = re.search(r" \[#(\d+)\]$", label)
        if m and int(m.group(1)) in self._by_idx:
            return int(m.group(1))
        return self.matcher.exact(label)



def match_rows(rows: Iterable[Row], catalogue: Catalogue, notices: list[str] | None = None,
               min_history: int = MIN_HISTORY, max_history: int = MAX_HISTORY) -> History:
    """Match each row to the catalogue, drop what cannot be used (with a reason), bound the length."""
    notices = notices if notices is not None else []
    items: list[MatchedItem] = []
    dropped: list[DroppedRow] = []
    seen: dict[int, int] = {}
    for line, text, _ in rows:
        q = str(text).strip()
        if not q:
            dropped.append(DroppedRow(line, "", "empty title"))
            continue
        if len(q) > MAX_QUERY_CHARS:
            dropped.append(DroppedRow(line, q[:MAX_QUERY_CHARS], f"longer than {MAX_QUERY_CHARS} characters: not a title"))
            continue
        if has_surrogate(q):
            dropped.append(DroppedRow(line, q, "contains an invalid character (a lone surrogate such as a broken "
                                               "\\ud800 escape): fix the title's text"))
            continue
        hit = catalogue.match(q)
        if hit is None:
            dropped.append(DroppedRow(line, q, f"not in the catalogue (no title scored >= {FUZZY_THRESHOLD:.0f}/100)"))
            continue
        idx, title, how, score = hit
        if idx in seen:
            dropped.append(DroppedRow(line, q, f"duplicate of row {seen[idx]} ({title})"))
            continue
        seen[idx] = line
        items.append(MatchedItem(line, q, idx, title, how, score))
    return _bound(History(items, dropped, notices), min_history, max_history)


def _bound(h: History, min_history: int, max_history: int) -> History:
    if len(h.items) < min_history:
        why = f" ({len(h.dropped)} row(s) dropped)" if h.dropped else ""
        examples = "; ".join(f"row {d.row}: {shown(d.text, 40)} {d.reason}" for d in h.dropped[:3])
        raise UploadError(
            f"Only {len(h.items)} title(s) matched the catalogue{why}; at least {min_history} are needed. "
            + (f"Dropped: {examples}. " if examples else "")
            + "Fix: use titles as they appear in the catalogue (the multiselect lists them).",
        )
    if len(h.items) > max_history:
        cut = len(h.items) - max_history
        h.notices.append(f"The history has {len(h.items)} items; only the most recent {max_history} are used "
                         f"({cut} older item(s) left out).")
        h.items = h.items[-max_history:]
    return h


def history_from_file(path: str | Path, catalogue: Catalogue) -> History:
    notices: list[str] = []
    return match_rows(read_upload(path, notices), catalogue, notices)


def history_from_text(text: Any, catalogue: Catalogue) -> History:
    """Pasted text: one title per line, oldest first; bounded like a file before any matching."""
    check_text(text, "pasted text")
    if not text.strip():
        raise UploadError("No titles were pasted. Fix: paste one title per line, oldest first.")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    rows = pasted_rows(text)
    check_rows(len(rows), "pasted text")
    return match_rows(rows, catalogue)


def history_from_titles(titles: Any, catalogue: Catalogue) -> History:
    """A list of titles (the API's form, or the multiselect's labels), oldest first; also what a JSON
    file may hold: ``{"titles": [...]}`` and objects with a ``title`` (+ ``timestamp``)."""
    if isinstance(titles, str):
        return history_from_text(titles, catalogue)
    if isinstance(titles, dict):
        titles = json_list(titles)
    if titles is None:
        titles = []
    if not isinstance(titles, (list, tuple)):
        raise UploadError(f"The titles must be a list of strings, not {type(titles).__name__}. "
                          "Fix: [\"Toy Story\", \"Fargo\", \"Babe\"], oldest first.")
    if not titles:
        raise UploadError("No titles given. Fix: pick or paste at least "
                          f"{MIN_HISTORY} titles, oldest first.")
    check_rows(len(titles), "list")
    notices: list[str] = []
    rows = order_rows(rows_from_records(list(titles), 1, notices, one_per_line=False), notices)
    check_text("".join(t for _, t, _ in rows), "list of titles")  # the total size bound
    picked: list[MatchedItem] = []
    for n, t, _ in rows:
        idx = catalogue.from_choice(t) if len(t) <= MAX_QUERY_CHARS and not has_surrogate(t) else None
        if idx is not None:
            picked.append(MatchedItem(n, t, idx, catalogue.title_of(idx), "exact", 100.0))
    if len(picked) == len(rows):  # every label is a catalogue choice: no fuzzy pass needed
        return _bound(History(_dedupe(picked), notices=notices), MIN_HISTORY, MAX_HISTORY)
    return match_rows(rows, catalogue, notices)


def history_from_picks(picked: Any, catalogue: Catalogue) -> History:
    """The multiselect's labels: every one must be a catalogue choice (no fuzzy guess for a pick)."""
    if isinstance(picked, str):
        picked = [picked]
    if not isinstance(picked, (list, tuple)) or not all(isinstance(p, str) for p in picked):
        raise UploadError("The picked titles must be a list of catalogue titles. Fix: pick titles from the list.")
    check_rows(len(picked), "list of picked titles")
    unknown = [p for p in picked if len(p) > MAX_QUERY_CHARS or has_surrogate(p) or catalogue.from_choice(p) is None]
    if unknown:
        names = ", ".join(shown(p, 40) for p in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise UploadError(f"{len(unknown)} picked value(s) are not catalogue titles: {names}. "
                          "Fix: choose titles from the list (type to search), or use the Paste tab.")
    return history_from_titles(list(picked), catalogue)


def _dedupe(items: list[MatchedItem]) -> list[MatchedItem]:
    seen: set[int] = set()
    out = []
    for m in items:
        if m.item_idx not in seen:
            seen.add(m.item_idx)
            out.append(m)
    return out


