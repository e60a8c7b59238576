"""Catalogue-grounded Step 3: the rationale names K real, new catalogue items, by constrained decoding.

Why (ours; the paper lets Step 3 name anything): a rationale that recommends "The Dark Knight" to a
1998 movie catalogue, or a title the user already watched, carries no signal a recommender can use.
Here Step 3 is written one item at a time, each completion forced by a llama.cpp grammar (GBNF)
into the titles of a candidate list, rebuilt without the items already chosen, so every named item
is in the catalogue, not in the history, and distinct, by construction (the in-process llama.cpp model
makes the grammar's greedy choice itself, by masked logits and faster: LlamaCppReasoner.choose, through
choose_one). Step 1 stays free text; Step 2 is free, or names catalogue categories the same way
(slim.lm.grounded_step2).

The candidates are a relevance-ranked shortlist, never the whole catalogue: a grammar over ~1,600
titles lets the model's favourite first token decide, and both local models start titles with "The"
(three titles took 83% of the picks over 60 ML-100K users); the 50 items nearest to the user's
recent items, in display form ("The Remains of the Day", not "Remains of the Day, The"), spread the
picks (69 distinct of 180). A training-popularity prior raises how often the target is among them,
and concentrates every user's list on the same few popular items; the hubness correction (CSLS)
subtracts each item's closeness to many histories, which keeps the recall and spreads the lists
(SHORTLIST). Candidates come from the history the rationale is written from only, so they never
reveal the held-out target.

Endpoints that take no grammar (OpenAI, vLLM, llama.cpp's server) get the same candidates as a
numbered list and their free answer is snapped to it (slim.lm.numbered_list; the row, with Step 3
rewritten to the snapped titles: slim.lm.rationales.numbered_list_row); each row records which path
it took (``step3_path``: ``grammar`` or ``numbered-list``).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from slim.data.split import history_end
from slim.lm.grounded_step2 import STEP2_MARK, STEP2_MODES, grounded_step2
from slim.lm.titles import display_title

PICKS = ("grammar", "likelihood", "pmi")


@dataclass(frozen=True)
class GroundingConfig:
    """How Step 3 is grounded; recorded in every row it shapes (``row["grounding"]``)."""

    k: int = 3  # distinct catalogue items Step 3 names
    n_candidates: int = 20  # size of the relevance-ranked shortlist the prompt shows and the grammar allows
    recent: int = 5  # the last items of the history whose mean text vector ranks the candidates
    item_max_tokens: int = 48  # budget of one grammar-bound title
    # weight of the standardised log training popularity added to the cosine; None: the dataset's
    # value chosen on validation users (POPULARITY_WEIGHT)
    popularity_weight: float | None = None
    # weight of the hubness correction subtracted from the cosine (CSLS, Conneau et al. 2018): an
    # item's mean cosine to the ``hubness_k`` user histories nearest to it. 0: none (rows written
    # before it existed); GroundingConfig.for_dataset gives the dataset's validated value
    hubness_weight: float = 0.0
    hubness_k: int = 50
    # how the K items are chosen from the shortlist: "grammar" = greedy decoding under a grammar over
    # the titles not chosen yet; "likelihood" = the K titles of highest log p(title | prompt, Steps 1-2);
    # "pmi" = likelihood minus log p(title | the same prompt with an empty history), which discounts
    # the titles the model names whoever the user is (surface-form competition, Holtzman et al. 2021)
    pick: str = "grammar"
    # "free": Step 2 as the model writes it; "categories": ``step2_k`` distinct catalogue categories,
    # each chosen under a grammar from the ``step2_candidates`` most frequent in the history the prompt
    # shows (slim.lm.grounded_step2); a catalogue without categories keeps it free
    step2: str = "free"
    step2_k: int = 2
    step2_candidates: int = 3
    # leave out of the shortlist every other edition of a history item (slim.lm.titles.edition_key:
    # "Far Cry 3" after "Far Cry 3 - Playstation 3"), which the id-level exclusion lets through: 6.2%
    # of student v4's Games-3000 Step-3 picks were one. False: the rows written before it existed
    exclude_editions: bool = False

    def __post_init__(self) -> None:
        if self.k < 1 or self.n_candidates < self.k or self.recent < 1:
            raise ValueError(f"grounding needs 1 <= k <= n_candidates and recent >= 1, got {self}")
        if self.pick not in PICKS:
            raise ValueError(f"grounding pick must be one of {PICKS}, got {self.pick!r}")
        if self.step2 not in STEP2_MODES or self.step2_k < 1 or self.step2_candidates < self.step2_k:
            raise ValueError(f"grounding step2 must be one of {STEP2_MODES} with 1 <= step2_k <= step2_candidates, "
                             f"got {self.step2!r}, {self.step2_k}, {self.step2_candidates}")

    @classmethod
    def for_dataset(cls, name: str, **overrides) -> "GroundingConfig":
        """The dataset's validated shortlist (SHORTLIST) and Step 2 (STEP2), spelled out so that every row records the
        numbers it was made with; ``overrides`` (None values ignored) win."""
        popularity, hubness = SHORTLIST.get(name, DEFAULT_SHORTLIST)
        fields = {"popularity_weight": popularity, "hubness_weight": hubness, "step2": STEP2.get(name, "free"),
                  **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**fields)

    def record(self) -> dict:
        return {**asdict(self), "candidates": "MiniLM cosine to the mean of the last `recent` history items "
                "+ popularity_weight x standardised log popularity in the train prefixes - hubness_weight x "
                "mean cosine of the item to its hubness_k nearest train-prefix histories"}


def recorded_meaning(record: dict, dataset: str) -> dict:
    """A row's recorded grounding as the config it means: a field the row predates takes its default
    (its old meaning, as slim.student.sft rebuilds it), and ``popularity_weight=None`` the dataset's
    POPULARITY_WEIGHT, so that two spellings of one configuration compare equal."""
    fields = {k: v for k, v in record.items() if k in GroundingConfig.__dataclass_fields__}
    meaning = asdict(GroundingConfig(**fields))
    if meaning["popularity_weight"] is None:
        meaning["popularity_weight"] = POPULARITY_WEIGHT.get(dataset, DEFAULT_POPULARITY_WEIGHT)
    return meaning


def mixed_grounding(rows, cfg: GroundingConfig, dataset: str) -> dict[str, tuple]:
    """Fields in which ``cfg`` means another shortlist or Step 3 than the grounded ``rows`` already in a
    file: {field: (the rows' value, cfg's value)}; empty when a resumed file keeps one configuration."""
    new = recorded_meaning(asdict(cfg), dataset)
    seen: dict[str, tuple] = {}
    for row in rows:
        if row.get("grounding"):
            old = recorded_meaning(row["grounding"], dataset)
            seen.update({k: (old[k], new[k]) for k in new if old[k] != new[k]})
    return seen


# Chosen on validation targets only: share of 400 seeded users whose valid target is in the 20-item
# shortlist (`python bench/candidate_recall.py`): ML-100K cosine alone 5.5%, +0.2 x popularity 16.5%
# (popularity alone 12.8%); Games cosine alone 6.8%, +0.05 7.5%, +0.2 3.3%. Text similarity alone
# picks obscure items with the right genre words; popularity alone ignores the user.
# ``popularity_weight=None`` means these values (how rows written before SHORTLIST existed were made).
POPULARITY_WEIGHT = {"ml-100k": 0.2, "amazon-video-games": 0.05, "amazon-industrial-scientific": 0.05}
DEFAULT_POPULARITY_WEIGHT = 0.05

# (popularity_weight, hubness_weight) of new rows, chosen on validation targets only (`python
# bench/candidate_recall.py --dataset D --n 20,3 --recent 5 --weights 0,0.05,0.1,0.2 --hubness 0,0.5,1`,
# 400 seeded users, N = 20): the hubness correction keeps or raises the share whose target is in the
# shortlist and stops a few "hub" items from being offered to everyone. ML-100K 0.2/0 (the old
# default): 16.5% of targets in, the 3 most offered items fill 8.1% of the slots; 0.1/0.5: 17.0%, 4.9%.
# Games 0.05/0: 7.5%, 6.2%; 0.05/0.5: 9.8%, 2.7%. Scientific 0.05/0: 9.8%, 7.0%; 0.05/0.5: 11.0%, 5.5%.
SHORTLIST = {"ml-100k": (0.1, 0.5), "amazon-video-games": (0.05, 0.5), "amazon-industrial-scientific": (0.05, 0.5)}
DEFAULT_SHORTLIST = (0.05, 0.5)
# Step 2 of new rows (slim.lm.grounded_step2), chosen on validation users only (`python bench/step3_pick.py
# --dataset ml-100k --users 80 --runs grammar/validated,grammar/validated/categories,grammar/validated/categories3`,
# student v4, 80 held-out users): the valid target's genre named in Step 2 5.0% free, 45.0% choosing 2 of
# the history's 5 most frequent genres, 53.8% choosing 2 of 3; zero-shot NDCG@10 11.39, 11.21, 12.72. A
# dataset not listed (Games has no category column) keeps the free Step 2.
STEP2: dict[str, str] = {"ml-100k": "categories"}
HUBNESS_QUERIES = 5000  # train-prefix histories the hubness term is estimated from (a seeded sample)


def train_popularity(dataset) -> np.ndarray:
    """``[n_items + 1]`` standardised log(1 + count) of each item in every user's train prefix.

    Train prefixes only (seq[:-2]): no user's valid or test target is counted.
    """
    ends = history_end(dataset.offsets, np.arange(dataset.n_users), "valid")
    counts = np.zeros(dataset.n_items + 1)
    for lo, hi in zip(dataset.offsets[:-1], ends):
        np.add.at(counts, dataset.values[lo:max(lo, hi)], 1)
    lp = np.log1p(counts)
    return (lp - lp[1:].mean()) / max(float(lp[1:].std()), 1e-12)


def hubness(dataset, unit_vectors: np.ndarray, recent: int = 5, k: int = 50, max_queries: int = HUBNESS_QUERIES,
            chunk: int = 2048) -> np.ndarray:
    """``[n_items + 1]`` mean cosine of each item to the ``k`` train-prefix histories nearest to it.

    A history is the mean vector of its last ``recent`` train items (the shortlist's own query), so
    an item close to many histories, offered to everyone, gets a high value (CSLS's r_T term).
    Train prefixes only: no valid or test target is seen. Items are done in chunks to bound memory.
    """
    ends = history_end(dataset.offsets, np.arange(dataset.n_users), "valid")
    users = np.arange(dataset.n_users)
    if len(users) > max_queries:
        users = np.sort(np.random.default_rng(0).choice(users, max_queries, replace=False))
    queries = []
    for u in users:
        lo, hi = dataset.offsets[u], ends[u]
        if hi > lo:
            queries.append(unit_vectors[dataset.values[max(lo, hi - recent):hi]].mean(axis=0))
    out = np.zeros(len(unit_vectors), dtype=np.float32)
    if not queries:  # no train prefix at all (a catalogue without interactions): nothing is a hub
        return out
    q = np.asarray(queries, dtype=np.float32)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    k = min(k, len(q))
    for lo in range(0, len(unit_vectors), chunk):
        sims = q @ unit_vectors[lo:lo + chunk].T
        out[lo:lo + chunk] = np.partition(sims, len(q) - k, axis=0)[len(q) - k:].mean(axis=0)
    return out


class CandidateIndex:
    """Top-N catalogue items by text similarity to a history, in display form, history excluded."""

    def __init__(self, titles: Sequence[str], item_vectors: np.ndarray, prior: np.ndarray | None = None):
        """``titles[i]`` and ``item_vectors[i]`` for item index i (row 0 = padding, never offered);
        ``prior[i]``: added to the cosine (popularity_weight x train_popularity - hubness_weight x hubness)."""
        self.prior = None if prior is None else np.asarray(prior, dtype=np.float32)
        v = np.asarray(item_vectors, dtype=np.float32)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        self.vectors = v / np.maximum(norms, 1e-12)
        self.titles = list(titles)
        self._editions: np.ndarray | None = None  # edition-key id per item, built on first use
        self.display = [display_title(t) if i else "" for i, t in enumerate(titles)]
        # two items with one display title would make a grammar pick ambiguous: the first one wins
        first: dict[str, int] = {}
        for i, t in enumerate(self.display):
            if i and t not in first:
                first[t] = i
        self.canonical = np.array([first.get(t, 0) == i for i, t in enumerate(self.display)])

    @classmethod
    def for_dataset(cls, dataset, item_vectors: np.ndarray, popularity_weight: float | None = None,
                    hubness_weight: float = 0.0, hubness_k: int = 50, recent: int = 5) -> "CandidateIndex":
        titles = [""] * (dataset.n_items + 1)
        for i, t in zip(dataset.items.index, dataset.items["title"]):
            titles[int(i)] = str(t)
        w = (POPULARITY_WEIGHT.get(dataset.name, DEFAULT_POPULARITY_WEIGHT)
             if popularity_weight is None else popularity_weight)
        index = cls(titles, item_vectors)
        prior = w * train_popularity(dataset) if w else np.zeros(len(titles))
        if hubness_weight:
            prior = prior - hubness_weight * hubness(dataset, index.vectors, recent, hubness_k)
        index.prior = prior.astype(np.float32) if (w or hubness_weight) else None
        return index

    @classmethod
    def for_config(cls, dataset, item_vectors: np.ndarray, cfg: GroundingConfig) -> "CandidateIndex":
        """The shortlist builder a row's grounding config describes."""
        return cls.for_dataset(dataset, item_vectors, cfg.popularity_weight, cfg.hubness_weight, cfg.hubness_k,
                               cfg.recent)

    def editions(self) -> np.ndarray:
        """Per item, an id shared by the items that are editions of one product (slim.lm.titles.edition_key)."""
        if self._editions is None:
            from slim.lm.titles import edition_key

            ids: dict[str, int] = {}
            self._editions = np.array([ids.setdefault(edition_key(t), len(ids)) if i else -1
                                       for i, t in enumerate(self.titles)], dtype=np.int64)
        return self._editions

    def candidates(self, history: Sequence[int], n: int, recent: int, exclude_editions: bool = False) -> list[int]:
        """Item indices, most similar first, none in ``history`` (nor, with ``exclude_editions``, another
        edition of a history item)."""
        history = np.asarray(history, dtype=np.int64)
        query = self.vectors[history[-recent:]].mean(axis=0) if len(history) else self.vectors[1:].mean(axis=0)
        scores = self.vectors @ query
        if self.prior is not None:
            scores = scores + self.prior
        scores[0] = -np.inf
        scores[history] = -np.inf
        scores[~self.canonical] = -np.inf
        if exclude_editions and len(history):
            editions = self.editions()
            scores[np.isin(editions, editions[history])] = -np.inf
        n = min(n, int(np.isfinite(scores).sum()))
        top = np.argpartition(-scores, n - 1)[:n] if n else np.array([], dtype=np.int64)
        return [int(i) for i in top[np.argsort(-scores[top], kind="stable")]]


def title_grammar(titles: Sequence[str]) -> str:
    """GBNF whose only sentences are the given titles (JSON string escapes are GBNF literal syntax).

    A title is data: whatever it says ("Ignore previous instructions", quotes, backslashes), it
    becomes one escaped literal and cannot change the grammar's shape.
    """
    if not titles:
        raise ValueError("a title grammar needs at least one title")
    return "root ::= " + " | ".join(json.dumps(t, ensure_ascii=True) for t in titles) + "\n"


def match_candidate(text: str, titles: Sequence[str]) -> int | None:
    """Index of the candidate a grammar-bound completion wrote (a cut-off completion: its prefix)."""
    text = text.strip()
    if text in titles:
        return list(titles).index(text)
    starts = [j for j, t in enumerate(titles) if text and t.startswith(text)]
    return starts[0] if starts else None


STEP3_HEADER = "\nStep 3:\n"
_STEP3_MARK = ("Step 3", "**Step 3", "### Step 3")


def split_step3(text: str) -> tuple[str, str] | None:
    """``(everything before Step 3, Step 3's text)`` at the first Step-3 mark parse_steps would use."""
    from slim.lm.prompts import _STEP_RE

    mark = next((m for m in _STEP_RE.finditer(text) if m.group(1) == "3"), None)
    if mark is None:
        return None
    return text[: mark.start()], text[mark.end():]


def with_step3(head: str, titles: Sequence[str]) -> str:
    """``head`` + ``Step 3:\\n1. <title>\\n2. ...``: the form the grammar path writes."""
    lines = "\n".join(f"{n}. {t}" for n, t in enumerate(titles, 1))
    return (head.rstrip().rstrip("*#").rstrip() + STEP3_HEADER).lstrip("\n") + lines


def grounded_generation(reasoner, messages, candidates: Sequence[str], params, cfg: GroundingConfig,
                        null_messages=None, categories: Sequence[str] = (), step2_lead: str = ""):
    """Step 1 free, Step 2 free or grounded, then Step 3 = ``cfg.k`` distinct candidates:
    ``(Generation, picked candidate positions, Step-2 categories chosen)``.

    ``reasoner`` needs ``complete(messages, prefix, params, stop=, grammar=)`` (slim.lm.reasoners.
    LlamaCppReasoner), and ``score_continuations`` for the scored picks. ``cfg.pick == "grammar"``:
    each pick's grammar holds the candidates not picked yet, so the K items are distinct. Scored picks
    rank every candidate once after ``Step 3:\n1.``; ``"pmi"`` also scores them after ``null_messages``
    (the same prompt with an empty history). Either way the answer reads ``Step 3:\n1. <title>\n2. ...``.
    ``categories`` and ``step2_lead`` (slim.lm.grounded_step2.step2_choices; empty when Step 2 is free):
    the free text stops before Step 2, which becomes ``step2_lead`` + the categories the grammar let it choose.
    """
    from slim.lm.reasoners import Generation, GenerationParams

    stop = [*_STEP3_MARK, *(STEP2_MARK if categories else ())]
    head = reasoner.complete(messages, "", params, stop=stop, reset=True)
    if head.error:
        return head, [], []
    text, chosen = head.text, []
    tokens, seconds = head.completion_tokens, head.seconds
    if categories:
        text, chosen, n, s = grounded_step2(reasoner, messages, text, step2_lead, categories, cfg.step2_k, params)
        tokens, seconds = tokens + n, seconds + s
    body = text
    text = text.rstrip().rstrip("*#").rstrip() + STEP3_HEADER
    if cfg.pick != "grammar":
        t0 = time.perf_counter()
        picked = scored_picks(reasoner, messages, text, candidates, cfg, null_messages)
        seconds += time.perf_counter() - t0
        return Generation(with_step3(body, [candidates[j] for j in picked]), tokens, head.prompt_tokens, seconds,
                          head.model, "stop"), picked, chosen
    item_params = GenerationParams(**{**params.as_dict(), "max_tokens": cfg.item_max_tokens})

    def written(picked: list[int]) -> str:
        return "".join(f"{n}. {candidates[j]}\n" for n, j in enumerate(picked, 1))

    picked, n, s = choose_under_grammar(reasoner, messages, candidates, cfg.k, item_params,
                                        lambda picked: text + written(picked) + f"{len(picked) + 1}. ")
    text = (text + written(picked)).rstrip()
    return Generation(text, tokens + n, head.prompt_tokens, seconds + s, head.model, "stop"), picked, chosen


def choose_under_grammar(reasoner, messages, options: Sequence[str], k: int, params, prefix_of):
    """Up to ``k`` distinct positions of ``options``, one grammar-bound completion each: the completion
    after ``prefix_of(positions chosen so far)`` must be one of the options not chosen yet (a grammar
    rebuilt per call). Returns ``(positions, completion tokens, seconds)``; stops early only when a
    completion matches nothing (a budget that cut the option to nothing). Step 3's items and a grounded
    Step 2's categories are both chosen this way."""
    picked: list[int] = []
    tokens, seconds = 0, 0.0
    for _ in range(min(k, len(options))):
        left = [j for j in range(len(options)) if j not in picked]
        j, gen = choose_one(reasoner, messages, prefix_of(picked), [options[j] for j in left], params)
        tokens, seconds = tokens + gen.completion_tokens, seconds + gen.seconds
        if j is None:
            break
        picked.append(left[j])
    return picked, tokens, seconds


def choose_one(reasoner, messages, prefix: str, options: Sequence[str], params):
    """``(position in options or None, Generation)``: the completion after ``prefix`` bound to one of ``options``.

    A reasoner with ``choose`` (slim.lm.llama_reasoner.LlamaCppReasoner: the same greedy choice by masked
    logits, faster) decides itself; any other reasoner with ``complete(..., grammar=)`` gets the GBNF grammar."""
    if hasattr(reasoner, "choose"):
        return reasoner.choose(messages, prefix, options, params)
    return grammar_choice(reasoner, messages, prefix, options, params)


def grammar_choice(reasoner, messages, prefix: str, options: Sequence[str], params):
    """:func:`choose_one` through llama.cpp's GBNF grammar: one completion bound to ``options``, matched back."""
    gen = reasoner.complete(messages, prefix, params, stop=["\n"], grammar=title_grammar(options))
    return match_candidate(gen.text, options), gen


def scored_picks(reasoner, messages, answer: str, candidates: Sequence[str], cfg: GroundingConfig,
                 null_messages=None) -> list[int]:
    """The ``cfg.k`` candidates of highest score as the first Step-3 line after ``answer`` (ties: list order).

    A title is scored with its line break, so a title that is the prefix of a longer one is not
    favoured for being short.
    """
    continuations = [f" {t}\n" for t in candidates]
    scores = np.asarray(reasoner.score_continuations(messages, answer + "1.", continuations))
    if cfg.pick == "pmi":
        if null_messages is None:
            raise ValueError("pick 'pmi' needs null_messages: the prompt with an empty history")
        scores = scores - np.asarray(reasoner.score_continuations(null_messages, STEP3_HEADER.lstrip("\n") + "1.",
                                                                  continuations))
    return [int(j) for j in np.argsort(-scores, kind="stable")[: cfg.k]]
