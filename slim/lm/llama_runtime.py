"""llama.cpp as this project loads it: without the AMX matrix kernels on CPUs that have them.

Why: a native llama.cpp build (what ``pip install llama-cpp-python`` compiles) enables its AMX
kernels on Intel Sapphire Rapids and newer, and on such a machine (2 cores, llama-cpp-python
0.3.36) they segfault in the first decode for every model here: SmolLM2-135M Q4_1, the merged
student Q8_0 and the teacher Q4_K_M (upstream: ggml-org/llama.cpp#20824, "segfault in
ggml_backend_amx_mul_mat"). ``llama_model_params.use_extra_bufts = false`` keeps the weights in
plain CPU buffers, which llama-server's ``--no-repack`` does too; llama-cpp-python does not expose
that field, so its default-parameter factory is wrapped, once per process, before a model loads.
Builds without AMX are left untouched (their repacked kernels are faster).
"""
from __future__ import annotations

import functools


@functools.cache
def build_has_amx() -> bool:
    """True when the installed llama.cpp was compiled with its AMX kernels (its system info says so)."""
    import llama_cpp

    return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode("utf-8", "replace")


@functools.cache
def without_amx_kernels() -> bool:
    """Make every later ``llama_cpp.Llama`` load with ``use_extra_bufts = false`` when the build has
    AMX; returns whether it did. Idempotent: the wrapper is installed at most once."""
    if not build_has_amx():
        return False
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    @functools.wraps(default)
    def no_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = no_extra_buffers
    return True
