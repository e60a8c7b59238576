"""Grounded Step 2: the rationale names categories the catalogue has, taken from the user's own history.

Why (ours; the paper lets Step 2 be free text): the distilled student's free Step 2 collapsed into
one stock sentence ("They may want to watch movies with a strong emotional impact or a unique blend
of genres." in 1,248 of 1,886 ML-100K rows) that names no genre at all, so the step that should say
*which* kinds of item come next says nothing a recommender can use, and reads the same for every
visitor. Here Step 2 is written as ``<Kinds> to look for next: A, B.``, each category forced by a
grammar over the catalogue's categories (slim.data.categories) that are most frequent among the
items the prompt shows, minus those already chosen: the model still decides which and in what order;
the catalogue and the history decide what it may say. Catalogues without categories keep a free Step 2.
"""
from __future__ import annotations

from typing import Sequence

from slim.data.categories import category_column, history_categories

STEP2_MODES = ("free", "categories")
_KINDS = {"genre": "Genres", "category": "Categories"}
STEP2_MARK = ("Step 2", "**Step 2", "### Step 2")


def step2_candidates(dataset, history: Sequence[int], n: int, shown: int) -> list[str]:
    """The categories Step 2 may name: the ``n`` most frequent among the last ``shown`` history items
    (the items the prompt shows), never the target's unless the history has it too."""
    return history_categories(dataset, list(history)[-shown:], n)


def step2_lead(dataset) -> str:
    """``"\\nStep 2: Genres to look for next: "``: the fixed words before the chosen categories."""
    return f"\nStep 2: {_KINDS.get(category_column(dataset) or '', 'Categories')} to look for next: "


def grounded_step2(reasoner, messages, head: str, lead: str, categories: Sequence[str], k: int, params):
    """Append Step 2 to ``head`` (Step 1): ``lead`` + up to ``k`` distinct ``categories`` + ``"."``.

    Returns ``(text, chosen, completion tokens, seconds)``; each category is one grammar-bound
    completion after the text so far (slim.lm.grounding.title_grammar, so a category is data, not syntax).
    """
    from slim.lm.grounding import match_candidate, title_grammar

    text = head.rstrip().rstrip("*#").rstrip() + lead
    chosen: list[str] = []
    tokens, seconds = 0, 0.0
    for _ in range(min(k, len(categories))):
        left = [c for c in categories if c not in chosen]
        gen = reasoner.complete(messages, text + ", ".join(chosen) + (", " if chosen else ""), params,
                                stop=["\n"], grammar=title_grammar(left))
        tokens, seconds = tokens + gen.completion_tokens, seconds + gen.seconds
        j = match_candidate(gen.text, left)
        if j is None:
            break
        chosen.append(left[j])
    return text + ", ".join(chosen) + ".", chosen, tokens, seconds
