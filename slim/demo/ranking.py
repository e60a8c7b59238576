"""Turning a rationale into ranked lists with the fitted checkpoints (and the untrained fallback)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from slim.demo.checkpoints import Checkpoint, CheckpointRefused, find_checkpoints, load_module
from slim.demo.config import DEFAULT_DATASET, TOP_K
from slim.demo.display import _rel, _slim_label, MATCH_LABEL, Ranked, UNTRAINED_LABEL
from slim.demo.requests import Request
from slim.lm.prompts import parse_steps
from slim.lm.titles import readable_title

log = logging.getLogger("slim.demo")  # one logger for the Space's service
# the tags of SLIM's fusions that validation chooses between (untagged: concatenation)
SLIM_FUSION_TAGS = ("", "gated")


def rationale_text(text: str) -> str:
    """The text encoded as the user's rationale vector, built exactly as for the fitted models."""
    from slim.lm.rationales import rationale_text as row_text

    parsed = parse_steps(text)
    return row_text({"status": "ok", "steps": parsed.steps, "rationale": text}) or ""


class RankingMixin:
    """Ranking the catalogue from a rationale, and the tables shown beside it."""

    def _module(self, name: str, ck: Checkpoint, item_text: np.ndarray | None):
        """The fitted module of ``ck``, loaded once; a refusal is remembered and logged once, with why."""
        key = (name, str(ck.path))
        with self._lock:
            if key not in self._modules:
                try:
                    self._modules[key] = load_module(ck, self.dataset(name), item_text)
                except (ValueError, RuntimeError, KeyError, OSError) as e:
                    why = " ".join(f"{type(e).__name__}: {e}".split())
                    self._modules[key] = CheckpointRefused(why)
                    self.refused[str(ck.path)] = why
                    log.warning("checkpoint %s not used: %s", _rel(ck.path, self.root), why)
            module = self._modules[key]
        if isinstance(module, CheckpointRefused):
            raise module
        return module

    def checkpoints(self, name: str) -> list[Checkpoint]:
        return find_checkpoints([d / "checkpoints" for d in self.run_dirs(name)])

    def refused_for(self, name: str) -> dict[str, str]:
        """Checkpoints of ``name`` refused so far: path -> why."""
        dirs = [str(d / "checkpoints") for d in self.run_dirs(name)]
        return {p: w for p, w in self.refused.items() if any(p.startswith(d) for d in dirs)}

    @staticmethod
    def _best(cks: Sequence[Checkpoint], variant: str, untagged_only: bool = False) -> list[Checkpoint]:
        """Checkpoints of one variant, best validation NDCG@10 first (untagged before tagged runs).

        SLIM's two fusions (concatenation, untagged, and the zero-initialised gate, tag ``gated``)
        compete on validation alone, as in the reports (slim_eval.report.fusion_choice): the Space
        serves one checkpoint, so its own validation score decides; other tagged SLIM runs (ablations
        such as ``noleak``) come after both."""
        pool = [c for c in cks if c.variant == variant and not (untagged_only and c.tag)]
        peers = SLIM_FUSION_TAGS if variant == "slim" else ("",)
        return sorted(pool, key=lambda c: (c.tag not in peers, -c.valid_ndcg10))

    def warm_up_rankers(self, name: str = DEFAULT_DATASET) -> None:
        """Load (or refuse, with a log line) the checkpoints the first request would try."""
        cks = self.checkpoints(name)
        for variant in ("slim", "id", "match"):
            for ck in self._best(cks, variant, untagged_only=variant == "match"):
                try:
                    self._module(name, ck, None if variant == "id" else self.item_text(name))
                    break
                except CheckpointRefused:
                    continue

    def rank(self, req: Request, rationale: str) -> list[Ranked]:
        """Top-K lists: the fitted SLIM checkpoint + its plain backbone (dataset users), fitted text
        matching (custom histories); cosine similarity only where no fitted checkpoint can be used."""
        import torch

        ds = self.dataset(req.dataset)
        item_text = self.item_text(req.dataset)
        uvec = self.encoder().encode([rationale_text(rationale) or " ".join(req.titles)])[0]
        cks = self.checkpoints(req.dataset)
        out: list[Ranked] = []
        if req.is_dataset_user:
            from slim.recommenders.batches import history_matrix

            def backbone_scores(ck: Checkpoint, text: np.ndarray | None, user_vec) -> np.ndarray | None:
                try:
                    model = self._module(req.dataset, ck, text)
                except CheckpointRefused:
                    return None  # stale or foreign checkpoint (logged once): the next best one is tried
                max_len = ck.record["key"]["config"]["max_len"]
                seq = torch.as_tensor(history_matrix(ds, np.array([req.user_idx]), "test", max_len))
                with torch.no_grad():
                    return model.score_last(seq, user_vec).numpy()[0]

            plain_all = self._best(cks, "id")
            for ck in self._best(cks, "slim"):
                s = backbone_scores(ck, item_text, torch.as_tensor(uvec)[None])
                if s is not None:
                    out.append(self._top(s, req, ck.label, (
                        f"fitted SLIM checkpoint `{ck.path.name}` (the best by validation NDCG@10, "
                        f"{ck.valid_ndcg10:.3f}): {ck.backbone} item IDs fused with the item texts and the "
                        f"student's rationale{' through the zero-initialised gate' if ck.tag == 'gated' else ''}")))
                    plain_all = [c for c in plain_all if c.backbone == ck.backbone] or plain_all
                    break
            for ck in plain_all:
                s = backbone_scores(ck, None, None)
                if s is not None:
                    out.append(self._top(s, req, f"{ck.label} (plain backbone)", (
                        f"fitted checkpoint `{ck.path.name}`: item IDs only, no rationale "
                        f"(validation NDCG@10 {ck.valid_ndcg10:.3f})")))
                    break
        if not out or out[0].variant != _slim_label(out[0]):
            out.insert(0, self._match(req, cks, item_text, uvec))
        return out

    def _match(self, req: Request, cks: list[Checkpoint], item_text: np.ndarray, uvec: np.ndarray) -> Ranked:
        import torch

        for ck in self._best(cks, "match", untagged_only=True):
            try:
                model = self._module(req.dataset, ck, item_text)
            except CheckpointRefused:
                continue
            with torch.no_grad():
                s = model.score_last(None, torch.as_tensor(uvec)[None]).numpy()[0]
            why = "" if not req.is_dataset_user else "; no fitted SLIM backbone checkpoint could be used"
            return self._top(s, req, MATCH_LABEL, (
                f"fitted text-matching checkpoint `{ck.path.name}` (learned projection g_t, validation NDCG@10 "
                f"{ck.valid_ndcg10:.3f}): the rationale and the item texts, no item IDs{why}"))
        s = item_text @ uvec
        refused = self.refused_for(req.dataset)
        why = (f"{len(refused)} fitted checkpoint(s) were refused (their inputs differ; see the log)" if refused
               else f"no fitted checkpoint for {req.dataset}")
        return self._top(s, req, UNTRAINED_LABEL,
                         f"{why}: cosine similarity of MiniLM vectors of the student rationale and the item "
                         "texts, without the learned projection g_t")

    def _top(self, scores: np.ndarray, req: Request, variant: str, note: str) -> Ranked:
        s = np.asarray(scores, dtype=np.float64).copy()
        s[0] = -np.inf
        s[np.asarray(req.full_history, dtype=np.int64)] = -np.inf
        order = np.argsort(-s, kind="stable")
        top = [int(i) for i in order[:TOP_K] if np.isfinite(s[i])]
        target_rank = None
        if req.target is not None:
            target_rank = int(np.sum(s > s[req.target])) + 1
        return Ranked(variant, top, [float(s[i]) for i in top], note, target_rank)

    # ---- tables and text -------------------------------------------------------------------
    def table(self, req: Request, ranked: Sequence[Ranked]) -> pd.DataFrame:
        """Long format: rank, variant, title, score, next_item (the held-out item, dataset users)."""
        ds = self.dataset(req.dataset)
        rows = []
        for r in ranked:
            for k, (i, sc) in enumerate(zip(r.item_idx, r.scores), 1):
                rows.append({"rank": k, "variant": r.variant, "title": readable_title(ds.items.at[i, "title"]),
                             "score": round(sc, 4), "next_item": "★ held-out next item" if i == req.target else ""})
        return pd.DataFrame(rows, columns=["rank", "variant", "title", "score", "next_item"])

    def describe(self, req: Request, ranked: Sequence[Ranked] = ()) -> str:
        ds = self.dataset(req.dataset)
        lines = []
        if req.is_dataset_user:
            n = len(req.full_history)
            lines.append(f"User **{req.user_id}** of {req.dataset}: {n} items before the held-out one"
                         + (f" (the prompt shows the last {len(req.titles)})" if n > len(req.titles) else "")
                         + f". Held-out next item: **{readable_title(ds.items.at[req.target, 'title'])}**.")
        else:
            lines.append(f"Custom history: {len(req.titles)} catalogue items.")
        for r in ranked:
            hit = ""
            if r.target_rank is not None:
                hit = (f" The held-out item is ranked **#{r.target_rank}**" + (" (in the top 10 ★)." if r.target_rank <= TOP_K else "."))
            lines.append(f"- **{r.variant}**: {r.note}.{hit}")
        if ranked:
            for path, why in list(self.refused_for(req.dataset).items())[:3]:
                lines.append(f"- _not used:_ `{Path(path).name}`: {why[:240]}")
        return "\n".join(lines)
