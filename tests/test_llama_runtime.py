"""slim.lm.llama_runtime: llama.cpp loads and decodes on this CPU, AMX or not (a real model, no mocks)."""
from __future__ import annotations

import pytest

llama_cpp = pytest.importorskip("llama_cpp")


def test_the_wrapper_turns_extra_buffers_off_exactly_when_the_build_has_amx():
    from slim.lm.llama_runtime import build_has_amx, without_amx_kernels

    applied = without_amx_kernels()
    assert applied == build_has_amx()
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is (not applied)
    assert without_amx_kernels() == applied  # idempotent: one wrapper, not one per call


def test_the_student_decodes_in_process():
    """A native build on an AMX CPU segfaulted here in the first decode (the server path, which
    loads through slim.lm.llama_server, is exercised by tests/test_reasoners.py)."""
    from slim.lm.llama_reasoner import LlamaCppReasoner
    from slim.lm.reasoners import GenerationParams
    from slim.lm.weights import student_gguf_path

    messages = [{"role": "user", "content": "Name one movie."}]
    gen = LlamaCppReasoner(student_gguf_path()).generate([messages], GenerationParams(max_tokens=8))[0]
    assert gen.error is None and gen.completion_tokens > 0
