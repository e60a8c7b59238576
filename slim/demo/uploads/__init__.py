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

By job: ``limits`` (the bounds every input path shares, the error type and how user text is quoted
back), ``parsing`` (files and pasted text -> rows of (line, title, timestamp)) and ``history``
(rows -> catalogue items: matching, dropping with a reason, bounding the length).
"""
