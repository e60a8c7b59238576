"""How one rationale column and one ranked list are shown (markdown, labels)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from slim.lm.prompts import _STEP_RE


@dataclass
class Column:
    """One rationale column's state; ``markdown()`` is what the page shows."""

    role: str  # "teacher" | "student"
    model: str = ""
    text: str = ""
    status: str = "waiting"  # waiting | running | done | cached | unavailable | error
    note: str = ""  # persistent remark (cached, not distilled, error)
    waiting: str = ""  # transient remark while queued behind another request
    started: float | None = None
    first_token_s: float | None = None
    seconds: float = 0.0
    tokens: int = 0
    from_memory: bool = False  # replayed from the per-prompt memo: no timing to report
    step3_items: list[int] = field(default_factory=list)  # grounded Step 3: the catalogue items it names

    @property
    def tok_per_s(self) -> float | None:
        if self.from_memory:
            return None
        gen = self.seconds - (self.first_token_s or 0.0)
        return self.tokens / gen if self.tokens > 1 and gen > 0 else None

    def header(self) -> str:
        parts = [f"**{_md_escape(self.model)}**" if self.model else f"**{self.role}**"]
        if self.status in ("running", "done") and not self.from_memory:
            parts.append(f"{self.seconds:.1f} s")
            if self.first_token_s is not None:
                parts.append(f"first token {self.first_token_s:.2f} s")
            if self.tok_per_s:
                parts.append(f"{self.tok_per_s:.0f} tok/s")
            parts.append(f"{self.tokens} tokens")
        if self.status == "running":
            parts.append("streaming…")
        if self.waiting:
            parts.append(self.waiting)
        if self.note:  # may quote an endpoint's error text: shown as text
            parts.append(_md_escape(self.note))
        return " · ".join(parts)

    def markdown(self) -> str:
        body = format_steps(self.text) if self.text else ("_waiting…_" if self.status in ("waiting", "running") else "")
        return f"{self.header()}\n\n{body}".strip()


def format_steps(text: str) -> str:
    """Rationale text -> Markdown with each "Step k" on its own separated block (works on partial text)."""
    marks = list(_STEP_RE.finditer(text))
    if not marks:
        return _md_escape(text)
    out = []
    pre = text[: marks[0].start()].strip()
    if pre:
        out.append(_md_escape(pre))
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        body = text[m.end():end].strip().strip("*").strip()
        out.append(f"#### Step {m.group(1)}\n{_md_escape(body)}")
    return "\n\n---\n\n".join(out)


def _md_escape(text: str) -> str:
    """Model text is shown as text: no raw HTML, no headings that could mimic the page."""
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"(?m)^(\s*)#", r"\1\\#", text)


@dataclass
class Ranked:
    """One top-K list and where it came from."""

    variant: str  # label shown in the table
    item_idx: list[int]
    scores: list[float]
    note: str = ""
    target_rank: int | None = None  # 1-based rank of the held-out item in the full (filtered) ranking


MATCH_LABEL = "SLIM text matching (ID-agnostic)"  # the fitted `match` projection


UNTRAINED_LABEL = "SLIM text matching (untrained: cosine)"  # no usable fitted checkpoint


def _slim_label(r: Ranked) -> str:
    """``r.variant`` when it is a fitted SLIM backbone's label ("SLIM (SASRec)"), else ""."""
    return r.variant if re.fullmatch(r"SLIM \(\w+\)", r.variant) else ""


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
