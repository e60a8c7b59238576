"""Uploaded files and pasted text -> rows ``(line, title text, timestamp)`` in chronological order.

Size, encoding and format are checked here, before any matching; every failure is an
:class:`~slim.demo.uploads.limits.UploadError` that says what is wrong and how to fix it.
"""
from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from .limits import (CONTROL_CHARS, MAX_HISTORY, MAX_ROWS, MAX_UPLOAD_BYTES, UploadError, check_rows, check_text,
                     shown)

TEMPLATE_COLUMNS = ("title", "timestamp")
TITLE_COLUMN_ALIASES = ("title", "titles", "item", "item_title", "name", "movie_title", "movie", "game")


def _binary_share(text: str) -> float:
    """Share of control characters (tab and line breaks excepted) in the first 4,096 characters."""
    head = text[:4096]
    return len(CONTROL_CHARS.findall(head)) / max(len(head), 1)


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


def rows_from_records(records: list[Any], first_line: int, notices: list[str], one_per_line: bool) -> list[Row]:
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
    return rows_from_records(json_list(data), 1, notices, one_per_line=False)


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
    rows = rows_from_records(records, 1, notices, one_per_line=True)
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
