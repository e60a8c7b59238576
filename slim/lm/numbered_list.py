"""The endpoint path of the grounded Step 3: the shortlist shown numbered, the free answer snapped to it.

Endpoints that take no grammar (OpenAI, vLLM, llama.cpp's server) cannot be forced into the candidate
titles, so the prompt numbers them and whatever the model answers ("#7", "1. Heat", a sentence with
quoted titles) is mapped back to candidates; a name that matches none snaps to nothing rather than to
an invented item (slim.lm.rationales.numbered_list_row writes the row).
"""
from __future__ import annotations

import re
from typing import Sequence

from slim.lm.titles import SNAP_CUTOFF, title_match

_NUMBER_ONLY = re.compile(r"^#?(\d{1,3})[.):]?$")  # "7", "#7", "7."
_HASH_NUMBER = re.compile(r"^#(\d{1,3})\b[.):]?\s*")  # "#7 Heat (1995)"
_LIST_LEAD = re.compile(r"^(?:[-*•]\s*|\d{1,3}[.)]\s+)")  # the answer's own bullet or "1. "
_EXPLANATION = re.compile(r"\s+[-–—]\s+")


_QUOTED = re.compile(r'["“]([^"”\n]{2,150})["”]')
_CONJUNCTION = re.compile(r"^(?:and|or)\s+", re.I)


def snap_to_candidates(step3: str, titles: Sequence[str], k: int, cutoff: float = SNAP_CUTOFF) -> list[int]:
    """Candidates an endpoint's free Step 3 named (by number or by title), in order, distinct, <= k.

    A list line ("1. Heat", "- #7", "#7 Heat") is one pick: its title is matched first
    (:func:`title_match`), since titles may start with numbers ("12 Monkeys") and the answer's own
    numbering ("1. Heat") is not a pick; its number counts only when it stands alone ("7", "1. 7") or
    is marked ``#7`` and the line names no candidate. A prose line names its quoted titles ('The 3
    titles are "Heat", "Fargo" and "Sabrina"'), else is itself a title, else its comma-separated parts
    are. A number outside the list, or a name that matches no candidate, snaps to nothing.
    """
    from slim.lm.prompts import step3_items

    chosen: list[int] = []

    def take(j: int | None) -> None:
        if j is not None and j not in chosen and len(chosen) < k:
            chosen.append(j)

    for line in (line.strip() for line in re.split(r"\n|;", step3)):
        bare = line.strip("*_ ")
        if not bare:
            continue
        if _LIST_LEAD.match(bare) or bare.startswith("#") or _NUMBER_ONLY.match(bare):
            text = _LIST_LEAD.sub("", bare, count=1).strip().strip('*_"“”').strip()
            number, rest = None, text
            if m := _NUMBER_ONLY.match(text):
                number, rest = int(m.group(1)), ""
            elif m := _HASH_NUMBER.match(text):
                number, rest = int(m.group(1)), text[m.end():]
            j = None
            names = step3_items(rest) if rest else []  # drops headers ("Recommended:") and lead-ins
            if names:
                # the title with its year first (two candidates may differ by year only), then the bare name
                j = title_match(_EXPLANATION.split(rest)[0].strip('*_"“”\' '), titles, cutoff)
                j = title_match(names[0], titles, cutoff) if j is None else j
            if j is None and number is not None and 1 <= number <= len(titles):
                j = number - 1
            take(j)
        elif quoted := _QUOTED.findall(line):
            for q in quoted:
                take(title_match(q, titles, cutoff))
        elif (j := title_match(bare, titles, cutoff)) is not None:
            take(j)
        elif "," in bare:
            for part in (_CONJUNCTION.sub("", p.strip()).strip() for p in bare.split(",")):
                m = _NUMBER_ONLY.match(part)
                take(int(m.group(1)) - 1 if m and 1 <= int(m.group(1)) <= len(titles)
                     else title_match(part.rstrip("."), titles, cutoff))
        if len(chosen) == k:
            break
    return chosen


def numbered_list(titles: Sequence[str]) -> str:
    """The shortlist as the endpoint path shows it in the prompt."""
    return "\n".join(f"{j}. {t}" for j, t in enumerate(titles, 1))


def number_the_candidates(messages, titles: Sequence[str], k: int):
    """The prompt with its candidates block (slim.lm.prompts.format_candidates) numbered, and Step 3 told
    it may answer ``#<number> <title>``: the endpoint path, whose free answer is snapped to the list.

    A copy; raises if the prompt shows no such block (the candidates must be the ones snapped to).
    """
    from slim.lm.prompts import format_candidates, sanitize_title

    block = format_candidates(titles)
    numbered = "<candidates>\n" + numbered_list([sanitize_title(t) for t in titles]) + "\n</candidates>"
    out, found = [], False
    for m in messages:
        if not found and m["role"] == "user" and block in m["content"]:
            content = m["content"].replace(block, numbered, 1).rstrip()
            content += (f"\nThe candidates are numbered: in Step 3, write each of the {k} on its own line as "
                        '"#<number> <title>".')
            m, found = {**m, "content": content}, True
        out.append(m)
    if not found:
        raise ValueError("the prompt has no candidates block to number")
    return out
