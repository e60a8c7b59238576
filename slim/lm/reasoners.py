"""Reasoner interface and the endpoint backends: anything that turns chat messages into a rationale.

* :class:`Reasoner`, :class:`GenerationParams`, :class:`Generation`: what every backend takes and returns.
* :class:`OpenAIChatReasoner`: any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama,
  ``python -m llama_cpp.server``) through the ``openai`` client. The teacher runs behind this
  interface even locally, so swapping in a bigger teacher is a ``--base-url`` away.
* :class:`MultiEndpointReasoner`: several such endpoints as one (round-robin, per-endpoint concurrency,
  failover); :func:`endpoint_reasoner` picks it for a comma-separated ``--base-url``.

The local backends live beside it: :mod:`slim.lm.llama_reasoner` (in-process llama.cpp, the fast
path for the student on a CPU, and :class:`~slim.lm.llama_reasoner.LlamaCppServer`, a local
OpenAI-compatible llama.cpp server) and :mod:`slim.lm.hf_reasoner` (transformers + peft: the
reference path the fast path is checked against, and the one that runs on GPUs).

All backends decode greedily by default (temperature 0) so rationales are reproducible.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Iterator, Protocol, Sequence

from slim.lm.prompts import Messages


@dataclass
class GenerationParams:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    # None: the engine's own default. llama.cpp's server applies 1.1 unless told otherwise, the
    # in-process Llama 1.0; spelling it out is what makes the two write the same text
    repeat_penalty: float | None = None

    def as_dict(self) -> dict:
        # rows written before repeat_penalty existed carry no such key: keep it out when unset
        return {k: v for k, v in asdict(self).items() if k != "repeat_penalty" or v is not None}


@dataclass
class Generation:
    text: str
    completion_tokens: int
    prompt_tokens: int
    seconds: float
    model: str
    finish_reason: str = "stop"
    error: str | None = None


class Reasoner(Protocol):
    model_name: str

    def generate(self, batch: Sequence[Messages], params: GenerationParams | None = None) -> list[Generation]: ...

    def stream(self, messages: Messages, params: GenerationParams | None = None) -> Iterator[str]: ...


# ---------------------------------------------------------------------------------------
# OpenAI-compatible endpoint
# ---------------------------------------------------------------------------------------
@dataclass
class OpenAIChatReasoner:
    """Chat completions against ``base_url``; ``concurrency`` requests in flight at most.

    Retries and timeouts are the openai client's own (exponential back-off on 429/5xx and
    connection errors). The API key comes from the argument or ``OPENAI_API_KEY`` and is
    never logged or stored in an artefact.
    """

    base_url: str
    model_name: str
    api_key: str | None = None
    concurrency: int = 1
    timeout: float = 300.0
    max_retries: int = 3
    _client: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from openai import OpenAI

        key = self.api_key or os.environ.get("OPENAI_API_KEY") or "not-needed-for-local-servers"
        self._client = OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout,
                              max_retries=self.max_retries)

    def _one(self, messages: Messages, params: GenerationParams) -> Generation:
        t0 = time.perf_counter()
        try:
            resp = self._client.chat.completions.create(
                model=self.model_name, messages=messages, max_tokens=params.max_tokens,
                temperature=params.temperature, top_p=params.top_p, seed=params.seed, **_extra_body(params),
            )
        except Exception as e:  # noqa: BLE001 - one failed user must not stop a batch
            return Generation("", 0, 0, time.perf_counter() - t0, self.model_name, "error",
                              f"{self.base_url}: {type(e).__name__}: {e}")
        choice = resp.choices[0]
        usage = resp.usage
        return Generation(
            choice.message.content or "",
            usage.completion_tokens if usage else 0,
            usage.prompt_tokens if usage else 0,
            time.perf_counter() - t0,
            resp.model or self.model_name,
            choice.finish_reason or "stop",
        )

    def generate(self, batch: Sequence[Messages], params: GenerationParams | None = None) -> list[Generation]:
        params = params or GenerationParams()
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(lambda m: self._one(m, params), batch))

    def stream(self, messages: Messages, params: GenerationParams | None = None) -> Iterator[str]:
        params = params or GenerationParams()
        chunks = self._client.chat.completions.create(
            model=self.model_name, messages=messages, max_tokens=params.max_tokens,
            temperature=params.temperature, top_p=params.top_p, seed=params.seed, stream=True, **_extra_body(params),
        )
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


class MultiEndpointReasoner:
    """Several OpenAI-compatible endpoints serving the same model, as one reasoner.

    Requests go round-robin, ``concurrency`` in flight per endpoint. A request that fails on its
    endpoint (after the openai client's own retries) is retried once on each other endpoint; if all
    fail, its error names every endpoint and what each said. An endpoint that fails
    ``max_failures`` requests in a row is taken out of the rotation (and named on stderr).
    """

    def __init__(self, base_urls: Sequence[str], model_name: str, api_key: str | None = None, concurrency: int = 1,
                 timeout: float = 300.0, max_retries: int = 3, max_failures: int = 3):
        if not base_urls:
            raise ValueError("no endpoint given")
        self.endpoints = [OpenAIChatReasoner(u, model_name, api_key=api_key, concurrency=concurrency,
                                             timeout=timeout, max_retries=max_retries) for u in base_urls]
        self.model_name, self.concurrency, self.max_failures = model_name, max(1, concurrency), max_failures
        self._failures = [0] * len(self.endpoints)
        self._next = 0
        self._lock = threading.Lock()

    @property
    def base_urls(self) -> list[str]:
        return [e.base_url for e in self.endpoints]

    def _alive(self) -> list[int]:
        alive = [i for i, f in enumerate(self._failures) if f < self.max_failures]
        return alive or list(range(len(self.endpoints)))  # all down: keep trying, each error says why

    def _record(self, i: int, ok: bool) -> None:
        with self._lock:
            was_up = self._failures[i] < self.max_failures
            self._failures[i] = 0 if ok else self._failures[i] + 1
            if was_up and self._failures[i] >= self.max_failures:
                print(f"endpoint {self.endpoints[i].base_url} failed {self._failures[i]} requests in a row: "
                      "taken out of the rotation", file=sys.stderr)

    def _one(self, first: int, messages: Messages, params: GenerationParams) -> Generation:
        order = [first] + [i for i in self._alive() if i != first]
        errors = []
        for i in order:
            gen = self.endpoints[i]._one(messages, params)
            self._record(i, gen.error is None)
            if gen.error is None:
                return gen
            errors.append(gen.error)  # "<base_url>: <what it said>"
        gen.error = errors[0] if len(errors) == 1 else "every endpoint failed: " + "; ".join(errors)
        return gen

    def generate(self, batch: Sequence[Messages], params: GenerationParams | None = None) -> list[Generation]:
        params = params or GenerationParams()
        alive = self._alive()
        firsts = []
        with self._lock:
            for _ in batch:
                firsts.append(alive[self._next % len(alive)])
                self._next += 1
        # one pool per endpoint, so each keeps its own concurrency
        pools = {i: ThreadPoolExecutor(max_workers=self.concurrency) for i in set(firsts)}
        try:
            futures = [pools[i].submit(self._one, i, m, params) for i, m in zip(firsts, batch)]
            return [f.result() for f in futures]
        finally:
            for pool in pools.values():
                pool.shutdown(wait=True)

    def stream(self, messages: Messages, params: GenerationParams | None = None) -> Iterator[str]:
        yield from self.endpoints[self._alive()[0]].stream(messages, params)


def endpoint_reasoner(base_url: str, model_name: str, concurrency: int = 1, **kw):
    """``base_url`` may be a comma-separated list: one endpoint -> OpenAIChatReasoner, several ->
    MultiEndpointReasoner (round-robin, ``concurrency`` per endpoint)."""
    urls = [u.strip() for u in base_url.split(",") if u.strip()]
    if len(urls) == 1:
        return OpenAIChatReasoner(urls[0], model_name, concurrency=concurrency, **kw)
    return MultiEndpointReasoner(urls, model_name, concurrency=concurrency, **kw)


def _extra_body(params: GenerationParams) -> dict:
    """Non-OpenAI sampling fields, sent only when set: llama.cpp's server reads ``repeat_penalty``."""
    return {"extra_body": {"repeat_penalty": params.repeat_penalty}} if params.repeat_penalty is not None else {}


# ``python -m llama_cpp.server`` applies this repeat penalty unless a request sets one, so every
# local teacher row written through it has it; the in-process paths set it explicitly to match
LLAMA_SERVER_REPEAT_PENALTY = 1.1


def _penalty(params: GenerationParams) -> float:
    return 1.0 if params.repeat_penalty is None else params.repeat_penalty
