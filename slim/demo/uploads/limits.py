"""The bounds every input path shares (file, paste, picks, API), the error a visitor sees, and how
their text is quoted back in a message (one line, cut, invalid characters replaced)."""
from __future__ import annotations

import re
from typing import Any

from slim.lm.prompts import DEFAULT_MAX_HISTORY
from slim.lm.titles import RULES

# Checked BEFORE any matching, the same for every input path:
# fuzzy matching costs ~0.3 ms per unknown title on 2 cores (50,000 unknown pasted lines took 14.7 s)
MAX_UPLOAD_BYTES = 1_000_000  # 1 MB of text in total: anything bigger is not a personal history
MAX_ROWS = 5_000  # titles per input: at most ~1.5 s of fuzzy matching, however hostile the input
MIN_HISTORY = 3  # fewer recognised items give the reasoner nothing to generalise from
MAX_HISTORY = DEFAULT_MAX_HISTORY  # the prompt shows the most recent 20; longer histories are truncated
FUZZY_THRESHOLD = RULES["upload"].cutoff  # rapidfuzz token_sort_ratio on normalised titles, 0-100
MAX_QUERY_CHARS = 300  # a "title" longer than this is not a title (dropped unread)
SHOWN_CHARS = 60  # user text quoted back in a message is cut to this


class UploadError(ValueError):
    """An input that cannot become a history; the message says what is wrong and how to fix it."""


LIMITS = (f"at most {MAX_ROWS:,} titles, {MAX_QUERY_CHARS} characters per title and "
          f"{MAX_UPLOAD_BYTES // 1_000_000} MB in total")

SURROGATE = re.compile("[\ud800-\udfff]")
CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def has_surrogate(text: str) -> bool:
    """A lone UTF-16 surrogate (a broken ``\\ud800`` escape): no valid UTF-8 text contains one."""
    return SURROGATE.search(text) is not None


def shown(text: Any, n: int = SHOWN_CHARS) -> str:
    """User text as a message quotes it: one line, cut to ``n`` characters, invalid characters replaced.

    Plain text: whoever renders it (Markdown, HTML) escapes it (app.py does).
    """
    s = text if isinstance(text, str) else repr(text)
    cut = len(s) > n
    s = SURROGATE.sub("\ufffd", s[: n + 1])
    s = re.sub(r"\s+", " ", CONTROL_CHARS.sub(" ", s)).strip()
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
    """At most ``MAX_ROWS`` titles per input, counted before any of them is matched."""
    if n > MAX_ROWS:
        raise UploadError(f"The {what} has {n:,} titles; the limit is {MAX_ROWS:,} ({LIMITS}). "
                          f"Fix: keep the most recent titles (only the last {MAX_HISTORY} matched are used).")



def short(text: str, n: int = 80) -> str:
    """User text for a table cell: one line, cut to ``n`` characters, invalid characters replaced."""
    text = str(text)[: n + 1]
    text = re.sub(r"\s+", " ", CONTROL_CHARS.sub(" ", SURROGATE.sub("\ufffd", text))).strip()
    return text if len(text) <= n else text[: n - 1] + "…"


