"""How SLIM fuses the rationale into a backbone, chosen per backbone on the validation split only.

SLIM concatenates the rationale vector to the backbone's user state (the paper, Eq. 6: variant
``slim``). The zero-initialised gate (``slim-gated``, ours: s_u = h_t + g * g_l'(r), g = 0 at the
start) begins as X+ and lets the rationale in only as far as training finds it useful, so a rationale
that carries little cannot pull SLIM below X+. Which of the two a dataset should use is a model
choice like any other: it is made on the fits' validation NDCG@10 (full ranking, the score that also
picks each fit's epoch), averaged over seeds; the test columns are read only to report the choice.
A tie keeps the paper's concatenation.
"""
from __future__ import annotations

from .rows import BACKBONE_LABELS, PROTOCOL_TITLES, find_row
from .tables import fmt, improvement, render

FUSIONS = {"slim": "concatenation (paper)", "slim-gated": "zero-initialised gate (ours)"}
VALID_KEY = "valid_NDCG@10"


def validation_scores(report: dict, backbone: str) -> dict[str, dict] | None:
    """Each fusion's validation NDCG@10 (mean/std over seeds) for ``backbone``; None unless every
    fusion was fitted with the same seeds and its rows carry their validation score."""
    scores, seeds = {}, None
    for variant in FUSIONS:
        row = next((r for r in report["results"] if r["backbone"] == backbone and r["variant"] == variant
                    and VALID_KEY in r), None)
        if row is None or (seeds is not None and row["seeds"] != seeds):
            return None
        scores[variant], seeds = row[VALID_KEY], row["seeds"]
    return scores


def chosen_fusion(report: dict, backbone: str) -> str | None:
    """The fusion variant with the higher mean validation NDCG@10 (``slim`` on a tie); None when not both were fitted."""
    scores = validation_scores(report, backbone)
    if scores is None:
        return None
    return max(FUSIONS, key=lambda v: (scores[v]["mean"], v == "slim"))


def fusion_choice_table(report: dict, markdown: bool = True) -> str | None:
    """Per backbone: both fusions' validation scores, the one they choose, and the chosen one's test
    NDCG@10 and Improv. (on the means) under each protocol; None when no backbone has both fusions."""
    rows = []
    for backbone in ("sasrec", "gru4rec", "srgnn"):
        scores = validation_scores(report, backbone)
        if scores is None:
            continue
        choice = chosen_fusion(report, backbone)
        cells = [BACKBONE_LABELS[backbone], *(fmt(scores[v]) for v in FUSIONS), FUSIONS[choice]]
        for protocol in report["protocols"]:
            row = find_row(report, backbone, choice, protocol)
            imp = improvement(report, backbone, protocol, "NDCG@10", choice)
            cells += [fmt(row["metrics"]["NDCG@10"] if row else None), "-" if imp is None else f"{100 * imp:+.2f}%"]
        rows.append(cells)
    if not rows:
        return None
    header = ["backbone", "valid NDCG@10: concatenation", "valid NDCG@10: gate", "chosen on validation"]
    for protocol in report["protocols"]:
        header += [f"test NDCG@10 of the chosen, {PROTOCOL_TITLES[protocol]}", f"Improv., {PROTOCOL_TITLES[protocol]}"]
    return ("SLIM's fusion chosen on validation (x100, mean ± std over seeds; validation = full ranking, the "
            "split that selects every fit's epoch; Improv. = chosen / max(X, X+) - 1 on the test means)\n\n"
            + render(header, rows, markdown))
