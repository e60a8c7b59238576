"""In-process llama.cpp (:class:`LlamaCppReasoner`) and a local OpenAI-compatible llama.cpp server
(:class:`LlamaCppServer`): the student's fast path on a CPU, and the local teacher behind an endpoint."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from slim.lm.prompts import Messages
from slim.lm.reasoners import Generation, GenerationParams, _penalty

# ---------------------------------------------------------------------------------------
# in-process llama.cpp
# ---------------------------------------------------------------------------------------


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of logits (float64: sums of a dozen token log-probs must not drift)."""
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


SMALL_BATCH = 64  # a batch shorter than this is evaluated on the generation threads (LlamaCppReasoner._eval_few)


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
        self.n_threads, self.n_threads_batch = n_threads or 1, n_threads_batch or n_threads or 1
        self._lock = threading.Lock()
        self._formatter = None  # continue_answer's chat template, built on first use
        self._vocab = None  # choose's view of the vocabulary (_vocab_pieces), built on first use

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
            tokens = self._answer_tokens(rendered, prefix)
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

    def choose(self, messages: Messages, prefix: str, options: Sequence[str],
               params: GenerationParams | None = None) -> tuple[int | None, Generation]:
        """``(position in options, Generation)``: the option greedy decoding writes after the answer ``prefix``
        when only the options may be written, i.e. what ``complete(..., grammar=title_grammar(options))``
        writes (slim.lm.grounding), computed here by masking the logits in Python.

        Why not llama.cpp's grammar sampler: with a 49k-token vocabulary it costs 10-13 ms per sampled token
        here (more than a third of a decode), every token a title forces is still decoded one at a time, and
        the grammar's end-of-text token costs one more decode. Here, as in the grammar, a token is allowed when
        its bytes extend what is written towards an option (``_vocab_pieces``: llama.cpp's own pieces) and an
        end-of-generation token only once an option is complete; greedy takes the allowed token of highest
        logit, so a token that is the only one allowed needs no logits: it is queued and evaluated in one
        batch with the next call's prompt. Sampling (temperature > 0) goes through the grammar.
        """
        params = params or GenerationParams()
        if params.temperature > 0:
            from slim.lm.grounding import grammar_choice

            return grammar_choice(self, messages, prefix, options, params)
        llm = self._llm
        rendered = self._chat_formatter()(messages=messages)
        index, eog, pieces = self._vocab_pieces()
        targets = [o.encode("utf-8") for o in options]
        n_vocab = llm.n_vocab()
        t0 = time.perf_counter()
        with self._lock:
            tokens = self._answer_tokens(rendered, prefix)
            common = self._keep_evaluated_prefix(tokens)
            pending, written, out = list(tokens[common:]), b"", []
            while len(out) < params.max_tokens:
                allowed: set[int] = set()
                for target in targets:
                    if target.startswith(written):
                        rest = target[len(written):]
                        for end in range(1, len(rest) + 1):
                            allowed.update(index.get(rest[:end], ()))
                complete = written in targets
                if not allowed:
                    break
                if len(allowed) > 1 or complete:
                    if pending:
                        self._eval_few(pending)
                        pending = []
                    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
                    ids = np.array(sorted(allowed))
                    best = int(ids[int(np.argmax(logits[ids]))])
                    if complete and eog and float(logits[eog].max()) >= float(logits[best]):
                        break
                    token = best
                else:
                    token = next(iter(allowed))
                written += pieces[token]
                out.append(token)
                pending.append(token)
        text = written.decode("utf-8", errors="replace")
        position = targets.index(written) if written in targets else next(
            (j for j, t in enumerate(targets) if written and t.startswith(written)), None)
        return position, Generation(text, len(out), len(tokens), time.perf_counter() - t0, self.model_name, "stop")

    def _answer_tokens(self, rendered, prefix: str) -> list[int]:
        """The chat prompt rendered by the GGUF's template + the answer so far, tokenised as the chat handler does."""
        return self._llm.tokenize((rendered.prompt + prefix).encode("utf-8"), add_bos=not rendered.added_special,
                                  special=True)

    def _keep_evaluated_prefix(self, tokens: Sequence[int]) -> int:
        """Keep the evaluated tokens ``tokens`` starts with (at most all but one, so that what follows has
        logits to read) and drop the rest from the cache; returns how many were kept."""
        llm = self._llm
        done, common = llm.input_ids[: llm.n_tokens], 0
        while common < min(len(done), len(tokens) - 1) and done[common] == tokens[common]:
            common += 1
        llm.n_tokens = common
        return common

    def warm_up(self) -> None:
        """Build what a first grounded request would (choose's view of the vocabulary, ~0.2 s for SmolLM2)."""
        self._vocab_pieces()

    def _eval_few(self, tokens: Sequence[int]) -> None:
        """``llm.eval`` of a few tokens on the generation threads. A batch on the prompt's threads waits for
        their pool: after a 350-token context (merged student, quiet 2-core box) a batch of 2-12 tokens took
        81-96 ms on 2 threads against 34-73 ms on one, so the batch threads pay off only for a whole prompt."""
        import llama_cpp

        ctx = self._llm._ctx.ctx
        small = len(tokens) < SMALL_BATCH and self.n_threads_batch != self.n_threads
        if small:
            llama_cpp.llama_set_n_threads(ctx, self.n_threads, self.n_threads)
        try:
            self._llm.eval(tokens)
        finally:
            if small:
                llama_cpp.llama_set_n_threads(ctx, self.n_threads, self.n_threads_batch)

    def _vocab_pieces(self) -> tuple[dict[bytes, list[int]], list[int], list[bytes]]:
        """``({piece bytes: token ids}, end-of-generation ids, piece of each token)`` as llama.cpp's grammar sees
        the vocabulary (special tokens rendered as text, empty pieces never allowed); built once per model."""
        if self._vocab is None:
            import ctypes

            import llama_cpp

            vocab, buf = self._llm._model.vocab, ctypes.create_string_buffer(256)
            index: dict[bytes, list[int]] = {}
            eog: list[int] = []
            pieces: list[bytes] = []
            for token in range(self._llm.n_vocab()):
                n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
                pieces.append(piece := buf.raw[:max(n, 0)])
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    eog.append(token)
                elif piece and piece[0] != 0:
                    index.setdefault(piece, []).append(token)
            self._vocab = (index, eog, pieces)
        return self._vocab

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
            tokens = self._answer_tokens(rendered, prefix)
            # reuse what is evaluated already (the head complete() just wrote)
            llm.eval(tokens[self._keep_evaluated_prefix(tokens):])
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
