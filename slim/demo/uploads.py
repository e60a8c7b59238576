"""A visitor's own history: an uploaded CSV/JSON/JSONL file, pasted titles or picked titles -> items.

Why this lives in ``slim/`` and not in ``app.py``: every rule here (what a valid upload is, how a
title is matched to the catalogue, how long a history may be) is domain logic that the API, the
browser UI and the tests must agree on, and it must be testable without a web server.

Accepted inputs (the page documents the same):

* CSV with a header row; required column ``title``; optional ``timestamp`` (Unix seconds or an ISO
  date, rows are then sorted oldest first; without it the file order is the order). Other columns
  are ignored with a notice. Header names are matched case-insensitively.
* JSON: a list of titles, a list of objects with ``title`` (+ ``timestamp``), or an object with a
  ``titles``/``history``/``items`` list. JSONL: one such object or string per line.
* Pasted text: one title per line, oldest first.

Matching to the catalogue (``Catalogue.match``): titles are normalised (casefold, NFKC, a trailing
"(1995)" year removed, "Usual Suspects, The" == "The Usual Suspects", punctuation dropped) and
looked up exactly; failing that, the closest catalogue title by rapidfuzz ``token_sort_ratio`` is
taken when its score is >= ``FUZZY_THRESHOLD`` (88 of 100: typos and word order pass, "Star" does
not become "Star Wars"). Unmatched rows are dropped with a reason, never guessed.

Prompt injection: only *catalogue* titles of matched items ever reach a prompt (the visitor's text
is used for lookup only), and ``slim.lm.prompts`` sanitises and fences titles as data on top of that.
A row like "Ignore previous instructions..." simply fails to match and is listed as dropped.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from slim.lm.prompts import DEFAULT_MAX_HISTORY
from slim.lm.titles import RULES, TitleMatch, TitleMatcher

# Bounds, the same for every input path (file, paste, picks, API), checked BEFORE any matching:
# fuzzy matching costs ~0.3 ms per unknown title on 2 cores (50,000 unknown pasted lines took 14.7 s)
MAX_UPLOAD_BYTES = 1_000_000  # 1 MB of text in total: anything bigger is not a personal history
MAX_ROWS = 5_000  # titles per input: at most ~1.5 s of fuzzy matching, however hostile the input
MIN_HISTORY = 3  # fewer recognised items give the reasoner nothing to generalise from
MAX_HISTORY = DEFAULT_MAX_HISTORY  # the prompt shows the most recent 20; longer histories are truncated
FUZZY_THRESHOLD = RULES["upload"].cutoff  # rapidfuzz token_sort_ratio on normalised titles, 0-100
MAX_QUERY_CHARS = 300  # a "title" longer than this is not a title (dropped unread)
SHOWN_CHARS = 60  # user text quoted back in a message is cut to this
TEMPLATE_COLUMNS = ("title", "timestamp")
TITLE_COLUMN_ALIASES = ("title", "titles", "item", "item_title", "name", "movie_title", "movie", "game")


class UploadError(ValueError):
    """An input that cannot become a history; the message says what is wrong and how to fix it."""


LIMITS = (f"at most {MAX_ROWS:,} titles, {MAX_QUERY_CHARS} characters per title and "
          f"{MAX_UPLOAD_BYTES // 1_000_000} MB in total")

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def has_surrogate(text: str) -> bool:
    """A lone UTF-16 surrogate (a broken ``\\ud800`` escape): no valid UTF-8 text contains one."""
    return _SURROGATE.search(text) is not None


def shown(text: Any, n: int = SHOWN_CHARS) -> str:
    """User text as a message quotes it: one line, cut to ``n`` characters, invalid characters replaced.

    Plain text: whoever renders it (Markdown, HTML) escapes it (app.py does).
    """
    s = text if isinstance(text, str) else repr(text)
    cut = len(s) > n
    s = _SURROGATE.sub("\ufffd", s[: n + 1])
    s = re.sub(r"\s+", " ", _CONTROL.sub(" ", s)).strip()
    if cut:
        s = s[: n - 1].rstrip() + "…"
    return f"'{s}'"


def check_text(text: Any, what: str) -> str:
    """``text`` must be a string within the total size bound; returns it."""
    if not isinstance(text, str):
        raise UploadError(f"The {what} must be text, not {type(text).__name__}. Fix: send one title per line, "
                          "oldest first.")
    if len(text) > MAX_UPLOAD_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_UPLOAD_BYTES:
        raise UploadError(f"The {what} is longer than {MAX_UPLOAD_BYTES // 1_000_000} MB (the limit: {LIMITS}). "
                          f"Fix: keep the most recent titles (only the last {MAX_HISTORY} matched are used).")
    return text


def check_rows(n: int, what: str) -> None:
    if n > MAX_ROWS:
        raise UploadError(f"The {what} has {n:,} titles; the limit is {MAX_ROWS:,} ({LIMITS}). "
                          f"Fix: keep the most recent titles (only the last {MAX_HISTORY} matched are used).")


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
            [{"#": n, "you wrote": _short(m.query), "matched title": m.title, "how": m.how, "score": round(m.score, 1)}
             for n, m in enumerate(self.items, 1)],
            columns=["#", "you wrote", "matched title", "how", "score"],
        )

    def dropped_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"row": d.row, "text": _short(d.text), "reason": d.reason} for d in self.dropped],
            columns=["row", "text", "reason"],
        )


def _short(text: str, n: int = 80) -> str:
    text = str(text)[: n + 1]
    text = re.sub(r"\s+", " ", _CONTROL.sub(" ", _SURROGATE.sub("\ufffd", text))).strip()
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------------------------------
# normalisation and the catalogue
# ---------------------------------------------------------------------------------------
class Catalogue:
    """The dataset's items as a lookup table: normalised title -> item index (first one wins)."""

    def __init__(self, titles: Sequence[str], item_idx: Sequence[int]):
        self.matcher = TitleMatcher(titles, item_idx, "upload")
        self.titles, self.item_idx = self.matcher.titles, self.matcher.item_idx
        self._by_idx = {i: t for i, t in zip(self.item_idx, self.titles)}

    @classmethod
    def from_dataset(cls, dataset: Any) -> "Catalogue":
        """``dataset``: a slim.data.SequentialDataset (items indexed by item_idx, column title)."""
        return cls(dataset.items["title"].astype(str).tolist(), dataset.items.index.tolist())

    def __len__(self) -> int:
        return len(self.titles)

    def title_of(self, item_idx: int) -> str:
        return self._by_idx[int(item_idx)]

    def match(self, query: str) -> TitleMatch | None:
        """``(item_idx, catalogue title, "exact"|"fuzzy", score)`` or None when nothing is close."""
        return self.matcher.match(query)

    def choices(self) -> list[str]:
        """Labels for a searchable multiselect: the title, made unique with the item index if needed."""
        seen: dict[str, int] = {}
        for t in self.titles:
            seen[t] = seen.get(t, 0) + 1
        return [t if seen[t] == 1 else f"{t} [#{i}]" for t, i in zip(self.titles, self.item_idx)]

    def from_choice(self, label: str) -> int | None:
        m = re.search(r" \[#(\d+)\]$", label)
        if m and int(m.group(1)) in self._by_idx:
            return int(m.group(1))
        return self.matcher.exact(label)


# ---------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------

def _binary_share(text: str) -> float:
    """Share of control characters (tab and line breaks excepted) in the first 4,096 characters."""
    head = text[:4096]
    return len(_CONTROL.findall(head)) / max(len(head), 1)


def _utf16_without_bom(raw: bytes) -> str | None:
    """Text when ``raw`` reads as UTF-16 without a byte-order mark (every other byte NUL), else None."""
    head = raw[:4096]
    even, odd = head[0::2].count(0), head[1::2].count(0)
    half = max(len(head) // 2, 1)
    for enc, zeros, other in (("utf-16-le", odd, even), ("utf-16-be", even, odd)):
        if zeros / half > 0.3 and other / half < 0.05:
            try:
                text = raw[: len(raw) // 2 * 2].decode(enc)
            except UnicodeDecodeError:
                return None
            return text if _binary_share(text) < 0.02 else None
    return None


def decode_bytes(raw: bytes, notices: list[str]) -> str:
    """UTF-8 (with or without BOM), UTF-16 (BOM or not), else Latin-1 with a notice; binary refused."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise UploadError("The file starts like UTF-16 but is not valid UTF-16. Fix: save it as UTF-8 CSV.") from None
    if b"\x00" in raw[:4096]:
        text = _utf16_without_bom(raw)
        if text is not None:
            notices.append("The file is UTF-16 without a byte-order mark; it was read as UTF-16. "
                           "Fix: save it as UTF-8 to be sure.")
            return text
        if raw.startswith(b"PK\x03\x04"):
            raise UploadError("This is a ZIP archive (an Excel .xlsx or a .docx is one), not text. "
                              "Fix: export it as CSV (UTF-8) with a 'title' column, or use the template.")
        raise UploadError("This is not a text file (it contains binary bytes). "
                          "Fix: upload a CSV (UTF-8) with a 'title' column, or use the template.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:  # Windows-1252 is Latin-1 with printable quotes and dashes where Latin-1 has control codes
            text = raw.decode("cp1252")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        if _binary_share(text) > 0.02:
            raise UploadError("This is not a text file: it is neither UTF-8 nor Latin-1 text (it contains binary "
                              "bytes). Fix: upload a CSV (UTF-8) with a 'title' column, or use the template.") from None
        notices.append("The file is not UTF-8; it was read as Latin-1 (Windows-1252). Accented titles may look "
                       "wrong: save it as UTF-8 to be sure.")
        return text
    if _binary_share(text) > 0.02:
        raise UploadError("This is not a text file (it contains control characters). "
                          "Fix: upload a CSV (UTF-8) with a 'title' column, or use the template.")
    return text


UNREADABLE = math.nan  # a timestamp was given but cannot be read (blank, text, nan, inf)
TIMESTAMP_RULE = ("rows are sorted by timestamp only when every row has a readable one (Unix seconds or an "
                  "ISO date like 2024-01-31; equal timestamps keep the file order); otherwise the file order is "
                  "the order")


def _timestamp(value: Any) -> float:
    """Unix seconds or an ISO date -> float seconds; ``UNREADABLE`` (NaN) when blank, unreadable or not finite."""
    if value is None or isinstance(value, bool):
        return UNREADABLE
    s = str(value)[:64].strip()
    if not s:
        return UNREADABLE
    try:
        t = float(s)
    except ValueError:
        try:
            t = datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError, OSError):
            return UNREADABLE
    return t if math.isfinite(t) else UNREADABLE


Row = tuple[int, str, float | None]  # (line, title text, timestamp: None = no timestamp column/field)


def _rows_from_records(records: list[Any], first_line: int, notices: list[str], one_per_line: bool) -> list[Row]:
    check_rows(len(records), "history")
    rows: list[Row] = []
    extra: set[str] = set()
    any_ts = any(isinstance(r, dict) and any(str(k).strip().lower() == "timestamp" for k in r) for r in records)
    for n, rec in enumerate(records):
        line = first_line + n if one_per_line else n + 1
        if isinstance(rec, str):
            rows.append((line, rec, UNREADABLE if any_ts else None))
        elif isinstance(rec, dict):
            keys = {str(k).strip().lower(): k for k in rec}
            col = next((keys[a] for a in TITLE_COLUMN_ALIASES if a in keys), None)
            if col is None:
                fields = ", ".join(shown(str(k), 30) for k in list(rec)[:8]) or "none"
                raise UploadError(f"Record {line} has no 'title' field (fields: {fields}). "
                                  "Fix: give every record a \"title\".")
            extra |= {str(k) for k in rec if k != col and str(k).strip().lower() != "timestamp"}
            title = rec[col]
            if title is None:
                title = ""
            elif isinstance(title, (int, float)) and not isinstance(title, bool):
                title = str(title)
            elif not isinstance(title, str):
                raise UploadError(f"Record {line}: the title is {type(title).__name__}, not text. "
                                  "Fix: \"title\": \"Toy Story\".")
            ts = _timestamp(rec[keys["timestamp"]]) if "timestamp" in keys else (UNREADABLE if any_ts else None)
            rows.append((line, title, ts))
        else:
            raise UploadError(f"Record {line} is {type(rec).__name__}, not a title or an object with a title. "
                              "Fix: use [\"Title 1\", \"Title 2\"] or [{\"title\": \"Title 1\"}, ...].")
    if extra:
        names = ", ".join(shown(k, 30) for k in sorted(extra)[:8])
        notices.append(f"Ignored field(s) {names}: only 'title' and 'timestamp' are used.")
    return rows


def json_list(data: Any) -> list:
    """A parsed JSON history -> its list: a list as is, an object's titles/history/items list."""
    if isinstance(data, dict):
        key = next((k for k in ("titles", "history", "items") if isinstance(data.get(k), list)), None)
        if key is None:
            raise UploadError("The JSON object has no 'titles' (or 'history'/'items') list. "
                              "Fix: {\"titles\": [\"Title 1\", ...]} or a plain list.")
        data = data[key]
    if not isinstance(data, list):
        raise UploadError(f"The JSON is {type(data).__name__}, not a list of titles or of objects with a "
                          "'title'. Fix: [\"Title 1\", \"Title 2\"].")
    return data


def loads_json(text: str, where: str = "") -> Any:
    """``json.loads`` with the two failures a visitor can cause turned into messages."""
    try:
        return json.loads(text)
    except RecursionError:
        raise UploadError(f"The JSON{where} is nested too deeply to be a history. "
                          "Fix: a flat list of titles, [\"Title 1\", \"Title 2\"].") from None


def _parse_json(text: str, notices: list[str]) -> list[Row]:
    try:
        data = loads_json(text)
    except json.JSONDecodeError as e:
        raise UploadError(f"Invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}. "
                          "Fix: a JSON list of titles, or one JSON object per line (.jsonl).") from None
    return _rows_from_records(json_list(data), 1, notices, one_per_line=False)


def _parse_jsonl(text: str, notices: list[str]) -> list[Row]:
    records, lines = [], []
    numbered = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    check_rows(len(numbered), "file")
    for k, (n, line) in enumerate(numbered):
        try:
            records.append(loads_json(line, f" on line {n}"))
        except json.JSONDecodeError as e:
            torn = k == len(numbered) - 1 and k > 0 and not text.rstrip(" \t").endswith("\n")
            if torn:  # the last line, cut short by a crash mid-write (no line end after it): drop it, say so
                notices.append(f"Line {n}, the last line, is not complete JSON ({e.msg}) and was left out. "
                               "Fix: end the file after a complete line.")
                continue
            raise UploadError(f"Line {n}: invalid JSON ({e.msg}). Fix: one JSON object per line, "
                              "e.g. {\"title\": \"Toy Story\"}.") from None
        lines.append(n)
    rows = _rows_from_records(records, 1, notices, one_per_line=True)
    return [(lines[k], t, ts) for k, (_, t, ts) in enumerate(rows)]


def _parse_csv(text: str, notices: list[str]) -> list[Row]:
    first = text.split("\n", 1)[0]  # the delimiter is the one the header uses (sniffing titles misleads)
    delimiter = next((d for d in (",", "\t", ";") if d in first), ",")
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise UploadError("The file is empty. Fix: a header row 'title' and one title per row.") from None
    except csv.Error as e:
        raise UploadError(f"Could not read the CSV header ({e}).") from None
    names = [h.strip().lstrip("\ufeff").lower() for h in header]
    col = next((names.index(a) for a in TITLE_COLUMN_ALIASES if a in names), None)
    if col is None:
        found = ", ".join(shown(h, 30) for h in [h for h in header if h.strip()][:8]) or "no header"
        raise UploadError(f"Missing column 'title' in the header (found {found}). "
                          "Fix: the first row must be a header with a 'title' column; download the template.")
    ts_col = names.index("timestamp") if "timestamp" in names else None
    extra = [h for k, h in enumerate(header) if k not in (col, ts_col) and h.strip()]
    if extra:
        names_shown = ", ".join(shown(h, 30) for h in extra[:8])
        notices.append(f"Ignored column(s) {names_shown}: only 'title' and 'timestamp' are used.")
    rows: list[Row] = []
    ragged: list[int] = []
    try:
        for n, rec in enumerate(reader, 2):
            if not any(c.strip() for c in rec):
                continue
            if len(rec) > len(header):
                ragged.append(n)
            if len(header) == 1:  # a one-column file: an unquoted comma belongs to the title
                title = delimiter.join(rec)
            else:
                title = rec[col] if col < len(rec) else ""
            ts = None if ts_col is None else _timestamp(rec[ts_col]) if ts_col < len(rec) else UNREADABLE
            rows.append((n, title, ts))
            if len(rows) > MAX_ROWS:
                check_rows(len(rows), "file")
    except csv.Error as e:
        raise UploadError(f"Malformed CSV near line {reader.line_num}: {e}. "
                          "Fix: quote titles that contain commas or line breaks, e.g. \"Toy Story, The\".") from None
    if ragged and len(header) > 1:
        notices.append(f"Row(s) {ragged[:5]} have more fields than the header: quote titles that contain "
                       f"'{delimiter}' (e.g. \"Usual Suspects, The\").")
    return rows


def parse_text(text: str, suffix: str = ".csv", notices: list[str] | None = None) -> list[Row]:
    """File text -> rows (line, title, timestamp) in chronological order; raises UploadError."""
    notices = notices if notices is not None else []
    check_text(text, "file")
    if not text.strip():
        raise UploadError("The file is empty. Fix: a header row 'title' and one title per row (see the template).")
    if "\r" in text:  # Windows (CR LF) and old Mac (CR only) line endings read like Unix ones
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    suffix = suffix.lower()
    stripped = text.lstrip()
    if suffix == ".jsonl" or (suffix not in (".json", ".csv", ".tsv", ".txt") and stripped.startswith("{")
                              and "\n{" in stripped):
        rows = _parse_jsonl(text, notices)
    elif suffix == ".json" or (suffix != ".csv" and stripped[:1] in "[{"):
        rows = _parse_json(text, notices)
    elif suffix == ".txt":
        rows = pasted_rows(text)
    else:
        rows = _parse_csv(text, notices)
    if not rows:
        raise UploadError("The file has a header but no titles. Fix: add one title per row below the header.")
    return order_rows(rows, notices)


def order_rows(rows: list[Row], notices: list[str]) -> list[Row]:
    """Sort by timestamp when every row has a readable one, else keep the file order and say which rows
    had none (``TIMESTAMP_RULE``): the order never depends on where an unreadable value sits."""
    if all(r[2] is None for r in rows):
        return rows  # no timestamp column or field: the file order is the order
    bad = [r[0] for r in rows if r[2] is None or math.isnan(r[2])]
    if not bad:
        return sorted(rows, key=lambda r: r[2])  # stable: equal timestamps keep file order
    which = ", ".join(map(str, bad[:8])) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
    notices.append(f"{len(bad)} of {len(rows)} row(s) have no readable timestamp (row(s) {which}), so the "
                   f"timestamps were ignored and the file order was used: {TIMESTAMP_RULE}. Fix: give every row "
                   "a timestamp, or remove the column.")
    return rows


def pasted_rows(text: str) -> list[Row]:
    """One title per line, oldest first; blank lines skipped."""
    return [(n, line, None) for n, line in enumerate(str(text).splitlines(), 1) if line.strip()]


def read_upload(path: str | Path, notices: list[str] | None = None) -> list[Row]:
    """An uploaded file -> rows; size, encoding and format are checked here."""
    path = Path(path)
    notices = notices if notices is not None else []
    try:
        size = path.stat().st_size
    except OSError:
        raise UploadError("The uploaded file could not be read; please upload it again.") from None
    if size > MAX_UPLOAD_BYTES:
        raise UploadError(f"The file is {size / 1e6:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 1e6:.0f} MB. "
                          f"Fix: keep the most recent titles (only the last {MAX_HISTORY} are used anyway).")
    if path.suffix.lower() not in (".csv", ".tsv", ".json", ".jsonl", ".txt"):
        raise UploadError(f"Unsupported file type '{path.suffix or '(none)'}'. Fix: upload .csv, .json or .jsonl "
                          "(or paste titles one per line).")
    text = decode_bytes(path.read_bytes(), notices)
    return parse_text(text, path.suffix, notices)


# ---------------------------------------------------------------------------------------
# rows -> history
# ---------------------------------------------------------------------------------------

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
    rows = order_rows(_rows_from_records(list(titles), 1, notices, one_per_line=False), notices)
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


def write_template(path: str | Path, examples: Sequence[tuple[str, str]] | None = None) -> Path:
    """The downloadable template: header ``title,timestamp`` and a few ML-100K rows."""
    path = Path(path)
    examples = examples or [("Toy Story", "2024-01-05"), ("GoldenEye", "2024-01-09"),
                            ("Usual Suspects, The", "2024-02-01"), ("Star Wars", "2024-02-14"),
                            ("Fargo", "2024-03-02")]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(TEMPLATE_COLUMNS)
        w.writerows(examples)
    return path
