"""slim.recommenders on real ML-100K user slices and real MiniLM item vectors.

What must hold for the paper's comparisons to mean anything: every backbone is causal (training
on all positions would otherwise read the answer), the fusion plugs into each backbone without
changing it, training beats random ranking under the full protocol, and a checkpoint reloads,
is reused and resumes to exactly the weights of an uninterrupted run.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slim.lm.encoders import TextEncoder, item_text_matrix
from slim.eval.metrics import evaluate
from slim.recommenders import BACKBONES, build_model
from slim.recommenders import train as train_mod
from slim.recommenders.batches import NegativeSampler, history_matrix, training_arrays
from slim.recommenders.checkpoint import load_fitted
from slim.recommenders.fit_config import FitConfig
from slim.recommenders.train import fit

FAST = dict(dim=32, max_len=30, batch_size=16, lr=5e-3)


@pytest.fixture(scope="module")
def small(ml100k):
    """200 real users (all 1682 items stay in the catalogue)."""
    return ml100k.subset_users(np.arange(200), name="ml-100k-200u")


@pytest.fixture(scope="module")
def item_text(small):
    """Real all-MiniLM-L6-v2 vectors of the ML-100K item texts (disk-cached across runs)."""
    return item_text_matrix(small, TextEncoder())


@pytest.fixture(scope="module")
def user_text(small, item_text):
    """Stand-in rationale vectors: the normalised mean text vector of the user's visible history.

    Real rationales come from the reasoners; these have the same shape, the same split rule
    (valid from seq[:-2], test from seq[:-1]) and carry real signal, which is all fit() sees.
    """
    out = {}
    for split in ("valid", "test"):
        v = np.stack([item_text[small.history(u, split)].mean(0) for u in range(small.n_users)])
        out[split] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


def _random_metrics(ds, split="valid"):
    """Expected HR@10 / NDCG@10 of uniformly random scores under the full protocol (exact, no noise)."""
    n_cand = np.array([ds.n_items - len(set(ds.history(u, split)) - {ds.target(u, split)}) for u in range(ds.n_users)])
    gain10 = (1 / np.log2(np.arange(2, 12))).sum()
    return {"HR@10": float(np.mean(np.minimum(10, n_cand) / n_cand)), "NDCG@10": float(np.mean(gain10 / n_cand))}


def _model(backbone, variant, ds, item_text=None, udim=None, **kw):
    torch.manual_seed(0)
    m = build_model(backbone, variant, ds.n_items, dim=16, max_len=20, dropout=0.0,
                    item_text=item_text, user_text_dim=udim, **kw)
    return m.eval()


# ---- structure ----------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("variant", ["id", "text", "slim"])
def test_shapes(small, item_text, user_text, backbone, variant):
    m = _model(backbone, variant, small, item_text if variant != "id" else None, 384 if variant == "slim" else None)
    seq = torch.as_tensor(history_matrix(small, np.arange(5), "valid", 20))
    uvec = torch.as_tensor(user_text["valid"][:5]) if variant == "slim" else None
    assert m.hidden(seq, uvec).shape == (5, 20, 16)
    assert m.score_last(seq, uvec).shape == (5, small.n_items + 1)
    pl, nl = m.pair_logits(seq, seq, seq, uvec)
    assert pl.shape == nl.shape == (5, 20)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("variant", ["id", "slim"])
def test_no_future_item_leaks(small, item_text, user_text, backbone, variant):
    """Output at position t is unchanged when any item after t changes (causal masking)."""
    m = _model(backbone, variant, small, item_text if variant == "slim" else None, 384 if variant == "slim" else None)
    seq = torch.as_tensor(history_matrix(small, np.arange(8), "test", 20))
    uvec = torch.as_tensor(user_text["test"][:8]) if variant == "slim" else None
    base = m.hidden(seq, uvec)
    for t in (3, 10, 18):
        changed = seq.clone()
        changed[:, t + 1 :] = torch.randint(1, small.n_items + 1, changed[:, t + 1 :].shape, generator=torch.Generator().manual_seed(t))
        out = m.hidden(changed, uvec)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])  # the future does reach later positions


def test_srgnn_positions_equal_separate_prefix_graphs(small):
    """The vectorised all-position SR-GNN equals running SR-GNN on each prefix graph alone."""
    m = _model("srgnn", "id", small)
    seq = torch.as_tensor(history_matrix(small, np.arange(6), "test", 20))
    full = m.hidden(seq)
    for t in (0, 7, 19):
        prefix = torch.zeros_like(seq)
        prefix[:, 19 - t :] = seq[:, : t + 1]
        torch.testing.assert_close(m.hidden(prefix)[:, -1], full[:, t], rtol=0, atol=1e-5)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fusion_wraps_the_unchanged_backbone(small, item_text, user_text, backbone):
    plain = _model(backbone, "id", small)
    fused = _model(backbone, "slim", small, item_text, 384)
    assert type(fused.backbone) is type(plain.backbone)
    assert plain.backbone.state_dict().keys() == fused.backbone.state_dict().keys()
    seq = torch.as_tensor(history_matrix(small, np.arange(4), "valid", 20))
    a = fused.score_last(seq, torch.as_tensor(user_text["valid"][:4]))
    b = fused.score_last(seq, torch.as_tensor(user_text["valid"][4:8]))
    assert not torch.allclose(a, b), "the rationale vector must change the scores"
    with pytest.raises(ValueError, match="user_vec"):
        fused.score_last(seq)


# ---- training -----------------------------------------------------------------------------

def test_training_arrays_use_only_the_train_prefix(small):
    users, inp, pos = training_arrays(small, max_len=400)
    for u in (0, 7):
        prefix = small.train_prefix(u)
        np.testing.assert_array_equal(inp[u][inp[u] > 0], prefix[:-1])
        np.testing.assert_array_equal(pos[u][pos[u] > 0], prefix[1:])
    sampler = NegativeSampler(small)
    neg = sampler.sample(users, pos, np.random.default_rng(0))
    for u in range(len(users)):
        assert not np.isin(neg[u][neg[u] > 0], small.train_prefix(users[u])).any()
    assert ((neg > 0) == (pos > 0)).all()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_short_training_beats_random(small, backbone, tmp_path):
    cfg = FitConfig(backbone=backbone, variant="id", epochs=10, eval_every=5, patience=5, **FAST)
    fm = fit(small, cfg, tmp_path, progress=False)
    rand = _random_metrics(small)  # HR@10 ~0.0065 on this slice
    test = evaluate(fm.score, small, "test", "full", users=np.arange(small.n_users))
    assert fm.valid_metrics["HR@10"] >= 4 * rand["HR@10"], (fm.valid_metrics, rand)
    assert test["NDCG@10"] >= 2 * rand["NDCG@10"], (test, rand)


def test_text_matching_beats_random(small, item_text, user_text, tmp_path):
    cfg = FitConfig(variant="match", epochs=6, eval_every=3, **FAST)
    fm = fit(small, cfg, tmp_path, item_text=item_text, user_text=user_text, progress=False)
    assert fm.checkpoint_dir.name.startswith("none-match-seed0-")
    assert fm.valid_metrics["HR@10"] > 2 * _random_metrics(small)["HR@10"]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_slim_variant_trains_on_every_backbone(small, item_text, user_text, backbone, tmp_path):
    cfg = FitConfig(backbone=backbone, variant="slim", epochs=2, eval_every=1, **FAST)
    fm = fit(small, cfg, tmp_path, item_text=item_text, user_text=user_text, progress=False)
    s = fm.score(torch.arange(10), "test")
    assert s.shape == (10, small.n_items + 1) and torch.isfinite(s).all()


def test_checkpoint_round_trip_and_reuse(small, item_text, tmp_path, monkeypatch):
    cfg = FitConfig(backbone="sasrec", variant="text", epochs=3, eval_every=1, **FAST)
    fm = fit(small, cfg, tmp_path, item_text=item_text, progress=False)
    d = fm.checkpoint_dir
    assert (d / "model.safetensors").exists() and not (d / "train_state.pt").exists()
    rec = json.loads((d / "config.json").read_text())
    assert rec["complete"] and rec["best_epoch"] == fm.best_epoch and rec["valid_metrics"] == fm.valid_metrics
    assert rec["key"]["dataset"]["fingerprint"] and rec["key"]["item_text"] and rec["code_version"]
    assert rec["key"]["config"]["backbone"] == "sasrec" and len(rec["history"]) == 3

    users = torch.arange(small.n_users)
    loaded = load_fitted(d, small, item_text=item_text)
    assert torch.equal(loaded.score(users, "test"), fm.score(users, "test"))

    # reuse: a matching record returns the stored model without training or evaluating
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: pytest.fail("retrained a reusable run"))
    again = fit(small, cfg, tmp_path, item_text=item_text, progress=False)
    assert again.checkpoint_dir == d and torch.equal(again.score(users, "valid"), fm.score(users, "valid"))

    # different inputs never reuse (and loading with them is refused)
    with pytest.raises(ValueError, match="item_text"):
        load_fitted(d, small, item_text=item_text * 0.5)


def test_resume_ends_like_an_uninterrupted_run(small, tmp_path, monkeypatch):
    cfg = FitConfig(backbone="gru4rec", variant="id", epochs=4, eval_every=1, patience=10, **FAST)
    whole = fit(small, cfg, tmp_path / "a", progress=False)

    real_eval, calls = train_mod.evaluate, {"n": 0}

    def dies_at_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process is stopped during epoch 3's evaluation
        return real_eval(*a, **k)

    monkeypatch.setattr(train_mod, "evaluate", dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        fit(small, cfg, tmp_path / "b", progress=False)
    state = next((tmp_path / "b").glob("*/train_state.pt"))
    assert torch.load(state, weights_only=True)["epoch"] == 2
    monkeypatch.setattr(train_mod, "evaluate", real_eval)
    resumed = fit(small, cfg, tmp_path / "b", progress=False)
    assert [r["epoch"] for r in resumed.record["history"]] == [1, 2, 3, 4]
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.valid_metrics == whole.valid_metrics


@pytest.mark.parametrize("variant", ["id", "slim"])
def test_srgnn_fast_last_position_equals_full_forward(small, item_text, user_text, variant):
    m = _model("srgnn", variant, small, item_text if variant == "slim" else None, 384 if variant == "slim" else None)
    seq = torch.as_tensor(history_matrix(small, np.arange(9), "test", 20))
    uvec = torch.as_tensor(user_text["test"][:9]) if variant == "slim" else None
    torch.testing.assert_close(m.last_hidden(seq, uvec), m.hidden(seq, uvec)[:, -1], rtol=0, atol=1e-5)


# ---- provenance: checkpoints are keyed by the texts and encoder, not by the float bits ------

def _item_texts(ds) -> list:
    """The (row -> text) list ``item_text_matrix`` names its vectors by (row 0: padding, no text)."""
    rows = [None] * (ds.n_items + 1)
    for idx, t in zip(ds.items.index.to_numpy(), ds.items["text"].astype(str)):
        rows[int(idx)] = t
    return rows


def _same_texts(vectors, ds, values=None, texts=None):
    """TextVectors with the provenance of ``vectors`` (same encoder, ``texts``) but other ``values``."""
    from slim.lm.encoders import TextVectors

    return TextVectors(np.asarray(vectors) if values is None else values, vectors.provenance["encoder"],
                       _item_texts(ds) if texts is None else texts)


@pytest.fixture(scope="module")
def text_fit(small, item_text, tmp_path_factory):
    """One real SASRec+ (item text) fit on MiniLM vectors, 2 epochs."""
    root = tmp_path_factory.mktemp("prov")
    cfg = FitConfig(backbone="sasrec", variant="text", epochs=2, eval_every=1, **FAST)
    return cfg, root, fit(small, cfg, root, item_text=item_text, progress=False)


def test_vectors_wobbling_in_the_last_bits_still_reuse_the_checkpoint(small, item_text, text_fit):
    """Another machine encodes the same titles 1e-6 apart: the checkpoint still loads and fit() reuses it."""
    cfg, root, fm = text_fit
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1e-6, 1e-6, size=item_text.shape).astype(np.float32)
    noise[0] = 0.0  # the padding row stays zeros, as item_text_matrix writes it
    wobbly = _same_texts(item_text, small, np.asarray(item_text) + noise)
    assert not np.array_equal(np.asarray(wobbly), np.asarray(item_text))  # the bytes differ
    record = json.loads((fm.checkpoint_dir / "config.json").read_text())
    loaded = load_fitted(fm.checkpoint_dir, small, item_text=wobbly)
    users = torch.arange(small.n_users)
    torch.testing.assert_close(loaded.score(users, "test"), fm.score(users, "test"), atol=1e-4, rtol=0)
    again = fit(small, cfg, root, item_text=wobbly, progress=False)
    assert again.checkpoint_dir == fm.checkpoint_dir  # same key: the same directory, not a new fit
    assert again.record["created"] == record["created"]  # and not retrained into it
    assert sorted(p.name for p in root.iterdir()) == [fm.checkpoint_dir.name]


def test_a_changed_item_title_is_refused_naming_the_item_row(small, item_text, text_fit):
    _, _, fm = text_fit
    texts = _item_texts(small)
    texts[7] = texts[7] + " (director's cut)"
    changed = _same_texts(item_text, small, texts=texts)  # same vectors, one title differs
    with pytest.raises(ValueError, match=r"item_text: the texts or encoder differ.*item rows: \[7\]"):
        load_fitted(fm.checkpoint_dir, small, item_text=changed)


def test_vectors_moved_beyond_the_tolerance_are_refused_by_the_probe(small, item_text, text_fit):
    """Same texts, same encoder name, but the numbers moved (another encoder build): refused, not reused."""
    from slim.artifacts.provenance import PROBE_ATOL

    cfg, root, fm = text_fit
    moved_values = np.asarray(item_text).copy()
    moved_values[1:] += 5 * PROBE_ATOL
    moved = _same_texts(item_text, small, moved_values)
    with pytest.raises(ValueError, match=r"item_text vectors are not the ones it was trained on: row \d+ differs"):
        load_fitted(fm.checkpoint_dir, small, item_text=moved)
    with pytest.raises(ValueError, match="refit"):  # fit() refuses too rather than loading wrong inputs
        fit(small, cfg, root, item_text=moved, progress=False)


def test_a_changed_rationale_is_refused_naming_the_split_and_the_user(small, item_text, tmp_path):
    """Real rationale file -> slim_eval.inputs.user_text (MiniLM) -> a match fit; one user's valid text edited."""
    from slim.lm.encoders import TextEncoder
    from slim_eval.inputs import user_text as encode_rationales

    rows = []
    for u, uid in enumerate(small.user_ids):
        for split in ("valid", "test"):
            steps = [f"enjoys {small.items.loc[small.history(u, split)[-1], 'title']}", "Drama", "Titanic (1997)"]
            rows.append({"user_id": str(uid), "split": split, "status": "ok", "steps": steps,
                         "rationale": "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(steps))})
    path = tmp_path / "student.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    enc = TextEncoder()
    ut = encode_rationales(small, path, enc)
    cfg = FitConfig(variant="match", epochs=1, eval_every=1, **FAST)
    fm = fit(small, cfg, tmp_path / "ck", item_text=item_text, user_text=ut.vectors, progress=False)
    load_fitted(fm.checkpoint_dir, small, item_text=item_text, user_text=ut.vectors)  # unchanged: loads

    k = 13
    edit = next(r for r in rows if r["user_id"] == str(small.user_ids[k]) and r["split"] == "valid")
    edit["steps"] = [edit["steps"][0] + " and westerns", *edit["steps"][1:]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    changed = encode_rationales(small, path, enc)
    with pytest.raises(ValueError, match=rf"user_text/valid: the texts or encoder differ.*user rows: \[{k}\]") as e:
        load_fitted(fm.checkpoint_dir, small, item_text=item_text, user_text=changed.vectors)
    assert "user_text/test" not in str(e.value)  # the test split's texts did not change


def test_gated_fusion_starts_as_the_item_text_model_and_learns_its_gate(small, item_text, user_text, tmp_path):
    """slim-gated: s_u = h_t + g * g_l'(r) with g = 0 at init, so before training the rationale changes
    nothing (the model is X+ with an unused branch); after training the gate has moved."""
    from slim.recommenders.fusion import GatedUserTextFusion

    torch.manual_seed(0)
    m = build_model("sasrec", "slim", small.n_items, dim=16, max_len=20, dropout=0.0, item_text=item_text,
                    user_text_dim=user_text["valid"].shape[1], fusion="gated")
    assert isinstance(m.user_fusion, GatedUserTextFusion)
    seq = torch.as_tensor(history_matrix(small, np.arange(4), "test", 20))
    uvec = torch.as_tensor(user_text["test"][:4])
    assert torch.equal(m.score_last(seq, uvec), m.score_last(seq, torch.zeros_like(uvec)))
    cfg = FitConfig(backbone="sasrec", variant="slim", fusion="gated", tag="gated", epochs=2, eval_every=1, **FAST)
    fm = fit(small, cfg, tmp_path, item_text=item_text, user_text=user_text, progress=False)
    assert fm.model.user_fusion.gate.abs().sum() > 0
    assert fm.record["key"]["config"]["fusion"] == "gated"
    reloaded = load_fitted(fm.checkpoint_dir, small, item_text=item_text, user_text=user_text)
    assert torch.equal(reloaded.score(torch.arange(3), "test"), fm.score(torch.arange(3), "test"))


def test_a_default_late_option_leaves_the_checkpoint_key_unchanged(small):
    """FitConfig fields added after checkpoints shipped (fusion) stay out of the key at their default,
    so a new option does not orphan every fitted model."""
    from slim.recommenders.checkpoint import checkpoint_key

    key = checkpoint_key(small, FitConfig(variant="id"), None, None)
    assert "fusion" not in key["config"]
    assert checkpoint_key(small, FitConfig(variant="slim", fusion="gated"), np.zeros((2, 2)), {})["config"]["fusion"] == "gated"


def test_leakage_free_training_zeroes_the_rationale_where_its_prompt_showed_the_target(small, item_text, user_text,
                                                                                        tmp_path):
    """slim-noleak: at the last `window` training positions (targets the training rationale's prompt
    showed) the fusion sees a zero vector; elsewhere and at scoring time, the rationale."""
    from slim.recommenders.batches import leakage_free

    uvec = torch.ones(2, 3)
    masked = leakage_free(uvec, 6, 4)
    assert masked.shape == (2, 6, 3)
    assert torch.equal(masked[:, :2], torch.ones(2, 2, 3)) and torch.equal(masked[:, 2:], torch.zeros(2, 4, 3))

    # the per-position rationale reaches the fusion: with the window over every position, training
    # never sees the rationale, so g_l' gets no gradient and stays at its initial weights
    cfg = FitConfig(backbone="sasrec", variant="slim", rationale_window=FAST["max_len"], tag="noleak", epochs=1,
                    eval_every=1, **FAST)
    torch.manual_seed(0)
    fm = fit(small, cfg, tmp_path / "all", item_text=item_text, user_text=user_text, progress=False)
    torch.manual_seed(0)
    init = build_model("sasrec", "slim", small.n_items, dim=FAST["dim"], max_len=FAST["max_len"],
                       item_text=item_text, user_text_dim=user_text["valid"].shape[1])
    assert torch.equal(fm.model.user_fusion.g_l.weight, init.user_fusion.g_l.weight)
    assert fm.record["key"]["config"]["rationale_window"] == FAST["max_len"]
    plain = fit(small, FitConfig(backbone="sasrec", variant="slim", epochs=1, eval_every=1, **FAST), tmp_path / "p",
                item_text=item_text, user_text=user_text, progress=False)
    assert not torch.equal(plain.model.user_fusion.g_l.weight, init.user_fusion.g_l.weight)
    assert "rationale_window" not in plain.record["key"]["config"]  # a default late field: key unchanged
