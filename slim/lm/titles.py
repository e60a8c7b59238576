"""Catalogue title matching: the one place that decides which item a written title names.

Three callers need different tolerances, so there is one matcher with named rules rather than
one matcher per caller:

==========  =========================================  ==================================  ======
rule        caller                                     key / scorer (rapidfuzz)            cutoff
==========  =========================================  ==================================  ======
upload      a user's typed or uploaded history         :func:`normalise_title`, exact key  88
            (``slim.demo.uploads``)                    first, then ``token_sort_ratio``
rationale   names in a rationale's Step 3              ``default_process``, ``WRatio``     90
            (groundedness, the Step-3 post-filter)
shortlist   an endpoint's free Step 3 snapped onto     :func:`title_match`: ``ratio`` on   85
            its numbered shortlist (grounding)         year-less titles, year breaks ties
==========  =========================================  ==================================  ======

Why they differ: an upload is typed by a person (typos, word order, no year), so a lenient
token-sort score on a normalised key is right; a rationale's names come from a model that also
invents titles, so the bar is higher; a shortlist is a dozen known titles, where Levenshtein on
the year-less form separates "Sabrina (1995)" from "(1954)" and WRatio's partial matching would
take "Star Wars" for "Star Trek: First Contact". The cutoffs are part of the reported numbers
(the ``clean`` variants and groundedness use the ``rationale`` rule): change them only with a rerun.
"""
from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

from slim.lm.prompts import sanitize_title

# ---------------------------------------------------------------------------------------
# title forms
# ---------------------------------------------------------------------------------------
_ARTICLE = re.compile(r"^(?P<body>.+?), (?P<article>The|A|An|Il|La|Le|Les|L'|El|Los|Las|Das|Der|Die)"
                      r"(?P<tail>\s*\(.*\))?$")
_YEAR = re.compile(r"\s*\((?:\d{4}|\d{4}\s*[-–]\s*\d{0,4})\)\s*$")
_ARTICLE_SUFFIX = re.compile(r"^(.*),\s*(the|a|an|les|la|le|il|el|der|die|das|l')$", re.IGNORECASE)
_NON_WORD = re.compile(r"[^\w\s]", re.UNICODE)
_LEADING_ARTICLE = re.compile(r"^(?:the|a|an) ")


def display_title(title: str) -> str:
    """``"Remains of the Day, The (1993)"`` -> ``"The Remains of the Day (1993)"``, sanitised.

    ML-100K stores articles at the end; a model writes them first, so the grammar must offer the
    form the model would write.
    """
    return _article_first(sanitize_title(title))


def _article_first(title: str) -> str:
    m = _ARTICLE.match(title)
    if not m:
        return title
    article = m.group("article")
    sep = "" if article.endswith("'") else " "
    return f"{article}{sep}{m.group('body')}{m.group('tail') or ''}"


def readable_title(title: str) -> str:
    """``"Marvel&rsquo;s Spider-Man"`` -> ``"Marvel’s Spider-Man"``, ``"Usual Suspects, The (1995)"`` ->
    ``"The Usual Suspects (1995)"``: a title as a person reads it, whole (no sanitising or truncation).

    Amazon's metadata carries HTML entities (721 of the Games titles) and ML-100K stores articles at the
    end. Only what the Space shows a visitor (tables, pickers) and the upload key use this form: prompts,
    grammars and item-text vectors keep the stored text, because fits and rationale rows are keyed by it.
    """
    return _article_first(html.unescape(str(title)))


def normalise_title(title: str) -> str:
    """Key used for matching: casefolded, year and article inversion removed, punctuation dropped."""
    t = unicodedata.normalize("NFKC", html.unescape(str(title))).strip()  # the article is handled below
    t = _YEAR.sub("", t).strip()
    m = _ARTICLE_SUFFIX.match(t)
    if m:  # "Usual Suspects, The" -> "The Usual Suspects"
        t = f"{m.group(2)} {m.group(1)}"
    t = _NON_WORD.sub(" ", t.casefold())
    return re.sub(r"\s+", " ", t).strip()


# what separates two editions of one product in a catalogue title: a platform tail (" - Wii U"), a
# bracketed note ("(Nintendo Selects)") or an edition phrase ("Game of the Year Edition", "HD")
_EDITION_TAIL = re.compile(
    r"(?:\s+-\s+[^-]*\b(?:playstation|ps[1-5]|psp|vita|xbox|wii|nintendo|3ds|ds|switch|gamecube|game ?boy|pc|mac|"
    r"windows|sega|steam|digital|download|code|edition|version|import|bundle)\b[^-]*"
    r"|\s*\((?!\d{4}\))[^()]*\)"  # a bracketed note, but not a film's year
    r"|\s*[:,-]?\s*(?:\b(?:hd|remastered|remaster|game of the year(?: edition)?|goty"
    r"(?: edition)?|complete edition|definitive edition|greatest hits|player'?s choice|nintendo selects|"
    r"platinum hits|collector'?s edition|limited edition|standard edition|deluxe edition|special edition)))\s*$",
    re.IGNORECASE)


def edition_key(title: str) -> str:
    """The title with its edition and platform tails removed, as a matching key: two catalogue items
    with one key are editions of one product ("Far Cry 3" and "Far Cry 3 - Playstation 3"), while a
    sequel keeps its own ("Final Fantasy X-2"), and so does a film's year ("Sabrina (1954)" and its
    1995 remake are two films). A rationale that recommends another edition of an item the user has
    already bought names a new catalogue id, but not a new product."""
    t = html.unescape(str(title)).strip()
    while True:
        shorter = _EDITION_TAIL.sub("", t).strip()
        if shorter == t or not shorter:
            break
        t = shorter
    year = re.search(r"\((\d{4})\)", t)
    return normalise_title(t) + (f" {year.group(1)}" if year else "")


def _default_process(title: str) -> str:
    from rapidfuzz import utils

    return utils.default_process(title)


# ---------------------------------------------------------------------------------------
# the matcher
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """How a query and the catalogue titles are keyed and scored, and the score a match needs."""

    key: Callable[[str], str]
    scorer: str  # a rapidfuzz.fuzz function name
    cutoff: float
    exact_first: bool  # an identical key wins before any fuzzy scoring (and reports "exact")


RULES = {
    "upload": Rule(normalise_title, "token_sort_ratio", 88.0, exact_first=True),
    "rationale": Rule(_default_process, "WRatio", 90.0, exact_first=False),
}


class TitleMatch(NamedTuple):
    item_idx: int
    title: str  # the catalogue's title
    how: str  # "exact" | "fuzzy"
    score: float


class TitleMatcher:
    """Written title -> catalogue item under one of :data:`RULES` (first catalogue item wins ties)."""

    def __init__(self, titles: Sequence[str], item_idx: Sequence[int], rule: str):
        self.rule = RULES[rule]
        self.titles = [str(t) for t in titles]
        self.item_idx = [int(i) for i in item_idx]
        self.keys = [self.rule.key(t) for t in self.titles]
        self._exact: dict[str, int] = {}
        for pos, k in enumerate(self.keys):
            if k:
                self._exact.setdefault(k, pos)

    @classmethod
    def for_dataset(cls, dataset: Any, rule: str) -> "TitleMatcher":
        """``dataset``: a SequentialDataset (items indexed by item_idx, column title)."""
        return cls(dataset.items["title"].astype(str).tolist(), dataset.items.index.tolist(), rule)

    @property
    def cutoff(self) -> float:
        return self.rule.cutoff

    def exact(self, query: str) -> int | None:
        """The item whose key equals ``query``'s key, else None."""
        pos = self._exact.get(self.rule.key(query))
        return self.item_idx[pos] if pos is not None else None

    def match(self, query: str) -> TitleMatch | None:
        """The catalogue item ``query`` names, or None when no title scores >= the rule's cutoff."""
        key = self.rule.key(query)
        if not key:
            return None
        if self.rule.exact_first and (pos := self._exact.get(key)) is not None:
            return TitleMatch(self.item_idx[pos], self.titles[pos], "exact", 100.0)
        from rapidfuzz import fuzz, process

        best = process.extractOne(key, self.keys, scorer=getattr(fuzz, self.rule.scorer),
                                  score_cutoff=self.rule.cutoff, processor=None)
        if best is None:
            return None
        _, score, pos = best
        return TitleMatch(self.item_idx[pos], self.titles[pos], "fuzzy", float(score))

    def item(self, query: str) -> int | None:
        """:meth:`match`'s item index only."""
        hit = self.match(query)
        return hit.item_idx if hit else None


# ---------------------------------------------------------------------------------------
# the shortlist rule
# ---------------------------------------------------------------------------------------
SNAP_CUTOFF = 85.0


def _title_forms(title: str) -> tuple[str, str]:
    """(title without year or leading article, whole title), lower-case alphanumerics, article first."""
    t = display_title(title)  # "Lion King, The (1994)": the stored form a model copies from the history
    return _LEADING_ARTICLE.sub("", _default_process(_YEAR.sub("", t))), _default_process(t)


def title_match(name: str, titles: Sequence[str], cutoff: float = SNAP_CUTOFF) -> int | None:
    """The title ``name`` spells, up to small typos, article order and a missing or wrong year; else None.

    Levenshtein similarity (rapidfuzz ``ratio``, 0-100) of the titles without year and leading article
    must reach ``cutoff``; the whole title (with its year) breaks ties ("Sabrina (1995)" vs "(1954)").
    Not WRatio: its partial matching takes "Star Wars" for "Star Trek: First Contact" (86) and "The
    Godfather" for "The Usual Suspects" (86).
    """
    from rapidfuzz import fuzz

    core, whole = _title_forms(name)
    if len(core) < 2:
        return None
    best, key = None, (cutoff, -1.0)
    for j, t in enumerate(titles):
        t_core, t_whole = _title_forms(t)
        score = (fuzz.ratio(core, t_core), fuzz.ratio(whole, t_whole))
        if score[0] >= cutoff and score > key:
            best, key = j, score
    return best
