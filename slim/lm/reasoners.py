"""Reasoner backends: anything that turns chat messages into a rationale.

* :class:`OpenAIChatReasoner`: any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama,
  ``python -m llama_cpp.server``) through the ``openai`` client. The teacher runs behind this
  interface even locally, so swapping in a bigger teacher is a ``--base-url`` away.
* :class:`LlamaCppReasoner`: in-process llama.cpp on a GGUF file (+ optional GGUF LoRA): the fast
  path for the student on a CPU.
* :class:`TransformersReasoner`: base model + peft LoRA adapter in transformers: the reference path
  the fast path is checked against, and the one that runs on GPUs.
* :class:`MultiEndpointReasoner`: several such endpoints as one (round-robin, per-endpoint concurrency,
  failover); :func:`endpoint_reasoner` picks it for a comma-separated ``--base-url``.
* :class:`LlamaCppServer`: starts/stops a local OpenAI-compatible llama.cpp server.

All backends decode greedily by default (temperature 0) so rationales are reproducible.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

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


# ---------------------------------------------------------------------------------------
# in-process llama.cpp
# ---------------------------------------------------------------------------------------
# ``python -m llama_cpp.server`` applies this repeat penalty unless a request sets one, so every
# local teacher row written through it has it; the in-process paths set it explicitly to match
LLAMA_SERVER_REPEAT_PENALTY = 1.1


def _penalty(params: GenerationParams) -> float:
    return 1.0 if params.repeat_penalty is None else params.repeat_penalty


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of logits (float64: sums of a dozen token log-probs must not drift)."""
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class LlamaCppReasoner:
    """llama.cpp in this process. One context is not thread-safe, so calls are serialised."""

    def __init__(self, model_path: str | Path, lora_path: str | Path | None = None, n_ctx: int = 2048,
                 n_threads: int | None = None, model_name: str | None = None,
                 n_threads_batch: int | None = None):
        from llama_cpp import Llama

        from slim.lm.llama_runtime import without_amx_kernels

        without_amx_kernels()
        self.model_path, self.lora_path = str(model_path), str(lora_path) if lora_path else None
        self.model_name = model_name or Path(model_path).name + (f"+{Path(lora_path).name}" if lora_path else "")
        # default 1 thread: on the 2-vCPU reference box one thread generated 2.6x faster than two
        # (SmolLM2, 210-token prompt + 80 tokens: 2.6 s vs 7.1 s, measured 2026-11-26); use more
        # processes, not more threads, for throughput (see slim_train reason --workers)
        # ``n_threads_batch``: threads for the prompt (one batched pass, compute-bound, so it scales
        # with cores when nothing else runs): what the time to the first token depends on
        self._llm = Llama(model_path=self.model_path, lora_path=self.lora_path, n_ctx=n_ctx,
                          n_threads=n_threads or 1, n_threads_batch=n_threads_batch or n_threads or 1,
                          verbose=False, seed=0)
        self._lock = threading.Lock()
        self._formatter = None  # continue_answer's chat template, built on first use

    def _complete(self, messages: Messages, params: GenerationParams, stream: bool):
        return self._llm.create_chat_completion(
            messages=messages, max_tokens=params.max_tokens, temperature=params.temperature,
            top_p=params.top_p, seed=params.seed, stream=stream, repeat_penalty=_penalty(params),
        )

    def generate(self, batch: Sequence[Messages], params: GenerationParams | None = None) -> list[Generation]:
        params = params or GenerationParams()
        out = []
        for messages in batch:
            t0 = time.perf_counter()
            with self._lock:
                self._llm.reset()
                resp = self._complete(messages, params, stream=False)
            choice, usage = resp["choices"][0], resp["usage"]
            out.append(Generation(choice["message"]["content"] or "", usage["completion_tokens"],
                                  usage["prompt_tokens"], time.perf_counter() - t0, self.model_name,
                                  choice.get("finish_reason") or "stop"))
        return out

    def _chat_formatter(self):
        """The GGUF's chat template as llama-cpp-python builds it for its chat handler (compiled once)."""
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            llm = self._llm
            eos_id, bos_id = llm.token_eos(), llm.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=llm.metadata["tokenizer.chat_template"], stop_token_ids=[eos_id],
                eos_token=llm._model.token_get_text(eos_id) if eos_id != -1 else "",
                bos_token=llm._model.token_get_text(bos_id) if bos_id != -1 else "")
        return self._formatter

    def continue_answer(self, messages: Messages, prefix: str, params: GenerationParams | None = None) -> Generation:
        """Greedy continuation of an assistant answer forced to begin with ``prefix`` (assistant prefill).

        ``create_chat_completion`` has no prefill, so the prompt is rendered with the GGUF's own chat
        template and tokenised exactly as llama-cpp-python's chat handler does it; with ``prefix=""``
        the text equals :meth:`generate`'s (tests/test_reasoners.py). ``text`` is the continuation only.
        """
        return self.complete(messages, prefix, params, reset=True)

    def complete(self, messages: Messages, prefix: str, params: GenerationParams | None = None,
                 stop: Sequence[str] = (), grammar: str | None = None, reset: bool = False) -> Generation:
        """Greedy continuation of the answer ``prefix``, optionally stopped early or bound by a GBNF grammar.

        ``reset=False`` keeps llama.cpp's evaluated tokens, so a call whose prompt extends the
        previous one (the same answer, one more Step-3 item) only evaluates the new tokens: that
        is what makes K grammar-bound completions per rationale affordable.
        """
        params = params or GenerationParams()
        llm = self._llm
        rendered = self._chat_formatter()(messages=messages)
        t0 = time.perf_counter()
        with self._lock:
            if reset:
                llm.reset()
            tokens = llm.tokenize((rendered.prompt + prefix).encode("utf-8"), add_bos=not rendered.added_special,
                                  special=True)
            extra = {}
            if grammar is not None:
                from llama_cpp import LlamaGrammar

                extra["grammar"] = LlamaGrammar.from_string(grammar, verbose=False)
            stops = [*(rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []),
                     *stop]
            resp = llm.create_completion(prompt=tokens, max_tokens=params.max_tokens, temperature=params.temperature,
                                         top_p=params.top_p, seed=params.seed, stop=stops or None,
                                         repeat_penalty=_penalty(params), **extra)
        choice, usage = resp["choices"][0], resp["usage"]
        return Generation(choice["text"] or "", usage["completion_tokens"], usage["prompt_tokens"],
                          time.perf_counter() - t0, self.model_name, choice.get("finish_reason") or "stop")

    def score_continuations(self, messages: Messages, prefix: str, continuations: Sequence[str]) -> list[float]:
        """Sum of the token log-probabilities of each continuation after the answer ``prefix``.

        One pass per continuation over a shared, evaluated prefix (LlamaRec's verbalizer scoring): the
        prefix is decoded once, each continuation is decoded as one batch with logits on every token,
        then dropped from the KV cache. llama-cpp-python keeps no per-token logits unless the whole
        context is built with ``logits_all`` (every prompt token pays for the vocabulary projection),
        so the batch is flagged here through its own ``_batch``/``_ctx`` (pinned version; the values
        are checked against a ``logits_all`` context in tests/test_reasoners.py).
        """
        llm = self._llm
        rendered = self._chat_formatter()(messages=messages)
        n_vocab = llm.n_vocab()
        with self._lock:
            tokens = llm.tokenize((rendered.prompt + prefix).encode("utf-8"), add_bos=not rendered.added_special,
                                  special=True)
            # reuse what is evaluated already (the head complete() just wrote), keep >= 1 token to decode
            done, common = llm.input_ids[: llm.n_tokens], 0
            while common < min(len(done), len(tokens) - 1) and done[common] == tokens[common]:
                common += 1
            llm.n_tokens = common
            llm.eval(tokens[common:])
            base = len(tokens)
            first = _log_softmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).astype(np.float64))
            out = []
            for text in continuations:
                cont = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
                if not cont:
                    out.append(0.0)
                    continue
                if base + len(cont) > llm.n_ctx():
                    raise ValueError(f"prompt + continuation ({base + len(cont)} tokens) exceed n_ctx {llm.n_ctx()}")
                llm._ctx.kv_cache_seq_rm(-1, base, -1)
                llm._batch.set_batch(batch=cont, n_past=base, logits_all=True)
                llm._ctx.decode(llm._batch)
                rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(cont) * n_vocab,))
                rows = rows.reshape(len(cont), n_vocab)[:-1].astype(np.float64)
                total = first[cont[0]]
                if len(cont) > 1:
                    logp = _log_softmax(rows)
                    total += float(logp[np.arange(len(cont) - 1), cont[1:]].sum())
                out.append(float(total))
            llm._ctx.kv_cache_seq_rm(-1, base, -1)
            llm.n_tokens = base
        return out

    def stream(self, messages: Messages, params: GenerationParams | None = None) -> Iterator[str]:
        params = params or GenerationParams()
        with self._lock:
            self._llm.reset()
            for chunk in self._complete(messages, params, stream=True):
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    yield delta


# ---------------------------------------------------------------------------------------
# transformers (+ peft)
# ---------------------------------------------------------------------------------------
class TransformersReasoner:
    """Base model (HF folder or Hub id) + optional peft LoRA adapter, batched greedy decoding."""

    def __init__(self, model_path: str | Path, adapter_path: str | Path | None = None, device: str | None = None,
                 dtype: str = "float32", model_name: str | None = None, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.tokenizer.padding_side = "left"  # decoder-only batching pads on the left
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=getattr(torch, dtype))
        if adapter_path:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_path))
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.model_name = model_name or (Path(str(model_path)).name + (f"+{Path(adapter_path).name}" if adapter_path else ""))

    def _encode(self, batch: Sequence[Messages], prefix: str = ""):
        texts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) + prefix
                 for m in batch]
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    def continue_answer(self, messages: Messages, prefix: str, params: GenerationParams | None = None) -> Generation:
        """Greedy continuation of an assistant answer forced to begin with ``prefix`` (the continuation only)."""
        return self.generate([messages], params, prefix=prefix)[0]

    def generate(self, batch: Sequence[Messages], params: GenerationParams | None = None,
                 prefix: str = "") -> list[Generation]:
        import torch

        params = params or GenerationParams()
        out: list[Generation] = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start : start + self.batch_size]
            enc = self._encode(chunk, prefix)
            t0 = time.perf_counter()
            with torch.inference_mode():
                ids = self.model.generate(**enc, max_new_tokens=params.max_tokens, do_sample=params.temperature > 0,
                                          temperature=params.temperature or None, top_p=None, top_k=None,
                                          # the same CTRL penalty, but over the whole context where
                                          # llama.cpp uses the last 64 tokens: texts can differ when set
                                          repetition_penalty=params.repeat_penalty,
                                          pad_token_id=self.tokenizer.pad_token_id)
            seconds = (time.perf_counter() - t0) / len(chunk)
            new = ids[:, enc["input_ids"].shape[1]:]
            for row, prompt_len in zip(new, enc["attention_mask"].sum(1).tolist()):
                keep = row[row != self.tokenizer.pad_token_id]
                finished = bool((row == self.tokenizer.eos_token_id).any())
                out.append(Generation(self.tokenizer.decode(keep, skip_special_tokens=True), int(len(keep)),
                                      int(prompt_len), seconds, self.model_name, "stop" if finished else "length"))
        return out

    def stream(self, messages: Messages, params: GenerationParams | None = None) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        params = params or GenerationParams()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        enc = self._encode([messages])
        thread = threading.Thread(target=self.model.generate, kwargs=dict(
            **enc, max_new_tokens=params.max_tokens, do_sample=False, streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id))
        thread.start()
        yield from streamer
        thread.join()


# ---------------------------------------------------------------------------------------
# local OpenAI-compatible server
# ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """``python -m llama_cpp.server`` on 127.0.0.1 (through :mod:`slim.lm.llama_server`), as a context manager.

    It gives the local teacher the same OpenAI-compatible interface a vLLM or OpenAI teacher
    has (``teach --server``, the demo's live teacher).
    """

    def __init__(self, model_path: str | Path, port: int | None = None, n_ctx: int = 2048, n_threads: int = 2,
                 model_alias: str | None = None, log_path: str | Path | None = None, startup_timeout: float = 180,
                 lora_path: str | Path | None = None):
        # ``lora_path``: a GGUF LoRA applied to the served model, which ``model_alias`` then names (how a
        # vLLM server serves the student: the base model + the adapter as a named model)
        self.lora_path = str(lora_path) if lora_path else None
        self.model_path, self.port = str(model_path), port or free_port()
        self.n_ctx, self.n_threads, self.startup_timeout = n_ctx, n_threads, startup_timeout
        self.model_alias = model_alias or Path(model_path).name
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "LlamaCppServer":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "slim.lm.llama_server", "--model", self.model_path, "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
               "--model_alias", self.model_alias, *(["--lora_path", self.lora_path] if self.lora_path else [])]
        repo = str(Path(__file__).resolve().parents[2])  # slim.lm.llama_server importable from any cwd
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with code {self.proc.returncode}; see {self.log_path}")
            try:
                urllib.request.urlopen(f"{self.base_url}/models", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.5)
        self.__exit__(None, None, None)
        raise TimeoutError(f"llama.cpp server did not answer on {self.base_url} in {self.startup_timeout}s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
