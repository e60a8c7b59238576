"""A request: a dataset user or a custom history, resolved into catalogue items before any model runs."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from slim.demo.display import Column, Ranked
from slim.demo.uploads.history import (History, history_from_file, history_from_picks, history_from_text,
                                      history_from_titles)
from slim.demo.uploads.limits import UploadError, check_text, shown
from slim.demo.uploads.parsing import loads_json


@dataclass
class Request:
    dataset: str
    titles: list[str]  # history titles, oldest first (catalogue titles only)
    item_idx: list[int]
    user_id: str | None = None  # set for dataset users
    user_idx: int | None = None
    target: int | None = None  # the held-out next item (dataset users)
    history: History | None = None  # set for custom histories (matched/dropped/notices)
    full_history: list[int] = field(default_factory=list)  # items never recommended

    @property
    def is_dataset_user(self) -> bool:
        return self.user_idx is not None


@dataclass
class Update:
    """What the page shows at one moment of a request."""

    teacher: Column
    student: Column
    ranked: list[Ranked] = field(default_factory=list)
    info: str = ""
    done: bool = False


class RequestsMixin:
    """Resolving what a visitor sent into a Request."""

    def request_for_user(self, name: str, user_id: str) -> Request:
        ds = self.dataset(name)
        if isinstance(user_id, int) and not isinstance(user_id, bool):
            user_id = str(user_id)
        if user_id is not None and not isinstance(user_id, str):
            raise UploadError(f"The user id must be text, not {type(user_id).__name__}. Fix: a user id such as "
                              f"{self.user_ids(name)[0]!r}.")
        uid = (user_id or "").strip()
        if not uid:
            raise UploadError("No user chosen. Fix: pick a user id (or press Random user).")
        where = np.flatnonzero(ds.user_ids.astype(str) == uid) if len(uid) <= 64 else []
        if len(where) == 0:
            raise UploadError(f"User {shown(uid, 40)} is not in {name}. Fix: pick an id from the list "
                              f"(ids look like {', '.join(self.user_ids(name)[:3])}).")
        u = int(where[0])
        hist = [int(i) for i in ds.history(u, "test")]
        return Request(name, ds.titles(hist[-20:]), hist[-20:], uid, u, ds.target(u, "test"), None, hist)

    def request_for_history(self, name: str, history: History) -> Request:
        return Request(name, history.titles, history.item_idx, history=history, full_history=history.item_idx)

    def parse_custom(self, name: str, file_path: str | None = None, pasted: str | None = None,
                     picked: Sequence[str] | None = None) -> History:
        """The one custom input the visitor gave (file, else pasted text, else picked titles)."""
        cat = self.catalogue(name)
        if file_path:
            if not isinstance(file_path, str):
                raise UploadError("The upload did not arrive as a file. Fix: upload the file again.")
            return history_from_file(file_path, cat)
        if pasted is not None and not isinstance(pasted, str):
            check_text(pasted, "pasted text")
        if pasted and pasted.strip():
            return history_from_text(pasted, cat)
        if picked:
            return history_from_picks(picked, cat)
        raise UploadError("No history given. Fix: upload a CSV/JSON file, paste titles (one per line) "
                          "or pick titles from the list.")

    def resolve(self, name: Any, user_or_titles: Any) -> Request:
        """The API's input: a dataset user id (text, or an integer) or a history: a list of titles (oldest
        first), the same as JSON text, or ``{"titles": [...]}`` as a JSON upload may hold."""
        name = self.check_dataset(name)
        value = user_or_titles
        if isinstance(value, bool) or value is None:
            raise UploadError("Give a dataset user id or a list of titles (oldest first). "
                              "Fix: \"196\" or [\"Toy Story\", \"Fargo\", \"Babe\"].")
        if isinstance(value, int):
            return self.request_for_user(name, str(value))
        if isinstance(value, str):
            s = check_text(value, "input").strip()
            if "\n" in s or "\r" in s:
                return self.request_for_history(name, history_from_text(s, self.catalogue(name)))
            if s and s[0] in "[{":
                try:
                    parsed = loads_json(s)
                except json.JSONDecodeError:
                    raise UploadError(f"The input starts with {s[0]!r} but is not a JSON list of titles. "
                                      "Fix: [\"Toy Story\", \"Fargo\", \"Babe\"].") from None
                if isinstance(parsed, str):
                    parsed = [parsed]
                return self.request_for_history(name, history_from_titles(parsed, self.catalogue(name)))
            return self.request_for_user(name, s)
        if isinstance(value, (list, tuple, dict)):
            return self.request_for_history(name, history_from_titles(value, self.catalogue(name)))
        raise UploadError(f"Expected a user id or a list of titles, not {type(value).__name__}. "
                          "Fix: \"196\" or [\"Toy Story\", \"Fargo\", \"Babe\"].")
