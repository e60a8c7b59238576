"""How much of the grounded student prompt users share at its start: the most that caching a shared
prefix in llama.cpp's KV cache could save of the prompt evaluation.

Each rationale starts from an empty cache (``LlamaCppReasoner.complete(..., reset=True)``), so that a
row's text does not depend on which user a worker served before. Keeping the common prefix instead
would skip evaluating it; this prints how long that prefix is, in the student's own tokens, for
pairs of consecutive seeded users, beside the prompt length.

    python bench/prompt_prefix.py --dataset ml-100k --users 20
"""
from __future__ import annotations

import argparse

import numpy as np

from slim.data.dataset import load_dataset
from slim.lm.encoders import TextEncoder, item_text_matrix
from slim.lm.grounding import CandidateIndex, GroundingConfig
from slim.lm.prompts import prompt_builder
from slim.lm.rationales import grounding_shortlist, prompt_for


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="runs/merged/student-v4-q8_0.gguf", help="a student GGUF (its tokenizer and chat template)")
    args = p.parse_args()
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    ds = load_dataset(args.dataset)
    cfg = GroundingConfig.for_dataset(ds.name)
    index = CandidateIndex.for_config(ds, item_text_matrix(ds, TextEncoder()), cfg)
    build = prompt_builder("student", ds.name, "dataset")
    llm = Llama(args.model, vocab_only=True, verbose=False)
    eos = llm._model.token_get_text(llm.token_eos())
    render = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token=eos, bos_token="")
    users = np.random.default_rng(args.seed).choice(ds.n_users, min(args.users, ds.n_users), replace=False)
    prompts = []
    for u in users:
        _, titles = grounding_shortlist(ds, int(u), "valid", cfg, index)
        text = render(messages=prompt_for(ds, int(u), "valid", build, candidates=titles, k=cfg.k)).prompt
        prompts.append(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
    shared = [int(np.argmin(np.equal(a[: min(len(a), len(b))], b[: min(len(a), len(b))]).tolist() + [False]))
              for a, b in zip(prompts, prompts[1:])]
    lengths = [len(t) for t in prompts]
    print(f"{ds.name}: {len(prompts)} users, valid split, grounded student prompt")
    print(f"  prompt tokens: median {np.median(lengths):.0f} (min {min(lengths)}, max {max(lengths)})")
    print(f"  shared with the previous user's prompt: median {np.median(shared):.0f} tokens "
          f"({100 * np.median(shared) / np.median(lengths):.1f}% of the median prompt), max {max(shared)}")


if __name__ == "__main__":
    main()
