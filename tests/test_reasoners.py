"""Reasoners against REAL models: a llama.cpp OpenAI-compatible server on 127.0.0.1 with the small
SmolLM2 GGUF, driven through the openai client (no mocked HTTP), and the in-process llama.cpp path."""
from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")

from slim.lm.prompts import student_messages, teacher_messages
from slim.lm.llama_reasoner import LlamaCppReasoner, LlamaCppServer
from slim.lm.reasoners import GenerationParams, OpenAIChatReasoner
from slim.lm.weights import student_gguf_path

PARAMS = GenerationParams(max_tokens=24)


@pytest.fixture(scope="module")
def student_gguf():
    try:
        return student_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def server(student_gguf, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with LlamaCppServer(student_gguf, n_threads=1, n_ctx=1024, model_alias="smollm2", log_path=log) as srv:
        yield srv


def test_openai_client_against_live_llama_cpp_server(server):
    reasoner = OpenAIChatReasoner(server.base_url, "smollm2", concurrency=2)
    gens = reasoner.generate([teacher_messages(["Toy Story", "Heat"]), student_messages(["Alien"])], PARAMS)
    assert len(gens) == 2
    for g in gens:
        assert g.error is None and g.text.strip()
        assert 0 < g.completion_tokens <= PARAMS.max_tokens and g.prompt_tokens > 20


def test_server_greedy_is_deterministic_and_streams_the_same_text(server):
    reasoner = OpenAIChatReasoner(server.base_url, "smollm2")
    msgs = student_messages(["Star Wars", "Alien", "Blade Runner"])
    first = reasoner.generate([msgs], PARAMS)[0].text
    assert reasoner.generate([msgs], PARAMS)[0].text == first
    assert "".join(reasoner.stream(msgs, PARAMS)) == first


def test_unreachable_endpoint_is_a_row_error_not_a_crash():
    reasoner = OpenAIChatReasoner("http://127.0.0.1:9/v1", "nobody", max_retries=0, timeout=2)
    gen = reasoner.generate([student_messages(["A"])], PARAMS)[0]
    assert gen.error and "Connection" in gen.error and gen.text == ""


def test_in_process_llama_cpp_matches_the_server(server, student_gguf):
    msgs = student_messages(["Toy Story", "Jumanji"])
    local = LlamaCppReasoner(student_gguf, n_threads=1, n_ctx=1024)
    remote = OpenAIChatReasoner(server.base_url, "smollm2")
    assert local.generate([msgs], PARAMS)[0].text == remote.generate([msgs], PARAMS)[0].text
    assert "".join(local.stream(msgs, PARAMS)) == local.generate([msgs], PARAMS)[0].text


def test_prefill_continues_exactly_where_the_chat_path_would(student_gguf):
    """``continue_answer`` renders the GGUF's chat template itself (llama.cpp's chat API has no
    prefill): with no prefix it writes exactly the chat path's text (same template, same tokens), so a
    forced "Step 3:" continues the answer the model would have been given. (Cutting a greedy text
    mid-way and continuing need not reproduce it: the re-tokenised prefix can differ from the sampled
    tokens.)"""
    local = LlamaCppReasoner(student_gguf, n_threads=1, n_ctx=1024)
    msgs = student_messages(["Star Wars", "Alien", "Blade Runner"])
    full = local.generate([msgs], PARAMS)[0].text
    assert local.continue_answer(msgs, "", PARAMS).text == full
    forced = local.continue_answer(msgs, "Step 1: likes sci-fi.\nStep 2: Sci-Fi.\nStep 3:", PARAMS)
    assert forced.text.strip() and 0 < forced.completion_tokens <= PARAMS.max_tokens
