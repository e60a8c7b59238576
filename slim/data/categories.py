"""The categories an item has in its catalogue: ML-100K's genres, Amazon's leaf category.

One reader for every place that names them: the grounded Step 2 (slim.lm.grounded_step2) offers them
to the model, and rationale quality (slim.lm.rationale_quality) checks whether Step 2 named the
held-out item's. A catalogue with neither column (Amazon Video Games as shipped) has no categories.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

# column -> how one cell lists categories: ML-100K joins its genres with spaces ("Action Sci-Fi"),
# Amazon has a single leaf category per item ("3D Printing Filament")
CATEGORY_COLUMNS = {"genre": str.split, "category": lambda value: [value]}
NOT_A_CATEGORY = {"", "unknown", "nan", "none"}


def category_column(dataset) -> str | None:
    """The catalogue's category column, or None when it has none."""
    return next((c for c in CATEGORY_COLUMNS if c in dataset.items.columns), None)


def item_categories(dataset, item: int) -> list[str]:
    """The categories of one item, as the catalogue spells them; [] without a category column."""
    column = category_column(dataset)
    if column is None:
        return []
    value = dataset.items.at[item, column]
    parts = CATEGORY_COLUMNS[column](str(value if value is not None else ""))
    return [p.strip() for p in parts if p.strip().lower() not in NOT_A_CATEGORY]


def history_categories(dataset, history: Sequence[int], n: int) -> list[str]:
    """The ``n`` categories most frequent in ``history`` (ties: the most recently seen first)."""
    counts: Counter[str] = Counter()
    last_seen: dict[str, int] = {}
    for position, item in enumerate(history):
        for category in item_categories(dataset, int(item)):
            counts[category] += 1
            last_seen[category] = position
    return sorted(counts, key=lambda c: (-counts[c], -last_seen[c]))[:n]
