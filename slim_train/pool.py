"""Rationales from a pool of single-threaded llama.cpp processes (used by ``reason`` and ``teach``).

Why processes of one thread each, not one process with more threads: llama.cpp synchronises its
threads at every op of every token, which costs more on 2 cores than the second core brings to a
single greedy stream, while two 1-thread processes run side by side at nearly full speed each.
Measured with ``python bench/teacher_engines.py --users 12`` (Qwen2.5-Coder-1.5B, ML-100K, 2 cores,
2026-11-27): 2 workers 11.15 s/rationale aggregate vs 13.77 s for one 2-thread llama.cpp server,
1.23x, with 11 of 12 texts identical (the 12th splits at a near-tie: the thread count changes the
order of float sums).
"""
from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path
from typing import Iterable, Iterator

from slim.data.dataset import load_dataset
from slim.lm.prompts import prompt_builder as prompt_fn
from slim.lm.rationales import finished_row, grounded_row, prompt_for
from slim.lm.reasoners import Generation, GenerationParams

# one Llama per worker process; module-level so the pool's functions pickle
_WORKER: dict = {}


def _init_worker(model: str, adapter: str | None, dataset: str, data_dir: str | None, prompt: str,
                 role: str, model_name: str | None, n_ctx: int, grounding: dict | None = None,
                 domain: str | None = None) -> None:
    # an initializer that raises makes multiprocessing.Pool restart the worker forever and the caller
    # wait forever: keep the error and raise it from the first job instead
    try:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        from slim.lm.llama_reasoner import LlamaCppReasoner

        _WORKER["reasoner"] = LlamaCppReasoner(model, adapter, n_threads=1, n_ctx=n_ctx, model_name=model_name)
        _WORKER["ds"] = load_dataset(dataset, data_dir)
        _WORKER["prompt"], _WORKER["role"] = prompt_fn(prompt, dataset, domain), role
        if grounding is not None:
            from slim.lm.encoders import TextEncoder, item_text_matrix
            from slim.lm.grounding import CandidateIndex, GroundingConfig

            cfg = _WORKER["grounding"] = GroundingConfig(**grounding)
            _WORKER["candidates"] = CandidateIndex.for_config(_WORKER["ds"], item_text_matrix(_WORKER["ds"],
                                                                                        TextEncoder()), cfg)
    except Exception as e:  # noqa: BLE001 - re-raised in _work with its message
        _WORKER["error"] = f"{type(e).__name__}: {e}"


def stored_generation(row: dict) -> Generation:
    """A stored row back as the Generation that wrote it."""
    return Generation(row["rationale"], int(row["completion_tokens"]), int(row["prompt_tokens"]),
                      float(row["seconds"]), row["model"], row["finish_reason"])


def _work(job: tuple[int, str, dict, bool, dict | None]) -> dict:
    """One row; ``old``: a row that stopped before Step 3, continued instead of regenerated."""
    if "error" in _WORKER:
        raise RuntimeError(f"llama.cpp worker could not start: {_WORKER['error']}")
    user, split, params, finish, old = job
    ds, reasoner = _WORKER["ds"], _WORKER["reasoner"]
    p = GenerationParams(**params)
    if "grounding" in _WORKER:
        return grounded_row(reasoner, ds, user, split, _WORKER["prompt"], p, _WORKER["role"], _WORKER["grounding"],
                            _WORKER["candidates"])
    messages = prompt_for(ds, user, split, _WORKER["prompt"])
    # greedy decoding: a stored row's text is what generate() would write again
    gen = stored_generation(old) if old is not None else reasoner.generate([messages], p)[0]
    return finished_row(reasoner, ds, user, split, messages, gen, p, _WORKER["role"], finish)


def pool_rows(jobs: Iterable[tuple[int, str, dict | None]], *, model: str, adapter: str | None, dataset: str,
              data_dir: str | None, prompt: str, role: str, params: GenerationParams, workers: int,
              finish: bool = False, model_name: str | None = None, n_ctx: int = 2048,
              grounding: dict | None = None, domain: str | None = None) -> Iterator[dict]:
    """Rows for (user, split, old_row_or_None) jobs, in completion order; the caller stores them."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if not Path(model).is_file():
        raise FileNotFoundError(f"{model}: no such GGUF file (a local llama.cpp model path is needed here; "
                                "an endpoint's model name goes with --base-url)")
    work = [(u, s, params.as_dict(), finish, old) for u, s, old in jobs]
    ctx = mp.get_context("spawn")
    init = (model, adapter, dataset, data_dir, prompt, role, model_name, n_ctx, grounding, domain)
    with ctx.Pool(workers, _init_worker, init) as pool:
        yield from pool.imap_unordered(_work, work)
