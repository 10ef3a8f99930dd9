#!/usr/bin/env python3
"""Writes the prompts of the generation benchmark: --count rows of --length token ids each.

One JSON object a line, `{"id": "0000", "prompt_ids": [..]}`, the ids drawn uniformly from the
model's vocabulary (0 .. --vocab - 1) with a fixed seed, leaving out --avoid (the pad/EOS token,
98 for tiny-random-gpt2: a prompt holding it would be masked differently by a loop that derives the
attention mask from `ids != pad`, as onnxruntime-genai does). Every prompt has the same length, so
no program pads: batches of any size do the same work in all of them.

    python bench/generate/make_prompts.py --out bench/data/generate/prompts-256x8.jsonl
        [--count 256] [--length 8] [--vocab 1000] [--avoid 98] [--seed 0]
"""
import argparse
import json
import os

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=256)
    ap.add_argument("--length", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--avoid", type=int, nargs="*", default=[98])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    allowed = np.array([t for t in range(args.vocab) if t not in set(args.avoid)])
    rng = np.random.default_rng(args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    width = len(str(args.count - 1))
    with open(args.out, "w") as f:
        for i in range(args.count):
            ids = rng.choice(allowed, size=args.length).tolist()
            f.write(json.dumps({"id": f"{i:0{width}d}", "prompt_ids": ids}) + "\n")


if __name__ == "__main__":
    main()
