"""``python -m slim.lm.llama_server ...``: ``python -m llama_cpp.server`` with the same flags, loading its
model the way :mod:`slim.lm.llama_runtime` does (no AMX kernels where they crash)."""
from __future__ import annotations

from slim.lm.llama_runtime import without_amx_kernels

if __name__ == "__main__":
    without_amx_kernels()
    from llama_cpp.server.__main__ import main

    main()
