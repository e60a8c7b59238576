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
from slim.lm.prompts import DEFAULT_MAX_HISTORY

STEP2_MODES = ("free", "categories")
_KINDS = {"genre": "Genres", "category": "Categories"}
STEP2_MARK = ("Step 2", "**Step 2", "### Step 2")


def step2_choices(dataset, history: Sequence[int], cfg) -> tuple[list[str], str]:
    """``(categories, lead)`` a grounded Step 2 chooses from for this history, or ``([], "")`` when
    ``cfg.step2`` is free or the catalogue has no categories: the ``cfg.step2_candidates`` most frequent
    among the items the prompt shows (the last DEFAULT_MAX_HISTORY), which never include the target's
    unless the history has them too."""
    if cfg.step2 != "categories":
        return [], ""
    categories = history_categories(dataset, list(history)[-DEFAULT_MAX_HISTORY:], cfg.step2_candidates)
    return categories, (step2_lead(dataset) if categories else "")


def step2_lead(dataset) -> str:
    """``"\nStep 2: Genres to look for next: "``: the fixed words before the chosen categories."""
    return f"\nStep 2: {_KINDS.get(category_column(dataset) or '', 'Categories')} to look for next: "


def grounded_step2(reasoner, messages, head: str, lead: str, categories: Sequence[str], k: int, params):
    """Append Step 2 to ``head`` (Step 1): ``lead`` + up to ``k`` distinct ``categories`` + ``"."``.

    Returns ``(text, chosen, completion tokens, seconds)``; each category is one grammar-bound
    completion after the text so far (slim.lm.grounding.choose_under_grammar, the loop Step 3 uses).
    """
    from slim.lm.grounding import choose_under_grammar

    text = head.rstrip().rstrip("*#").rstrip() + lead

    def written(picked: list[int]) -> str:
        return ", ".join(categories[j] for j in picked)

    picked, tokens, seconds = choose_under_grammar(
        reasoner, messages, categories, k, params, lambda picked: text + written(picked) + (", " if picked else ""))
    return text + written(picked) + ".", [categories[j] for j in picked], tokens, seconds
