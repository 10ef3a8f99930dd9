#!/usr/bin/env python3
"""The limit: the decoder alone, making the same forward calls as a generation loop on inputs made
before the clock starts. For each batch of --batch rows: one call on the --prompt-length prompt
positions with an empty cache, then one call per further new token on one position, each fed the
previous call's cache outputs as its pasts, until --max-length (prompt + new) is reached, the
count a greedy loop makes when no batch ends early on EOS (--steps-from FILE takes each batch's
count from a loop's sequences instead: up to the last row's first EOS).

The token ids, positions and masks of every step are made first, as ONNX Runtime values, and the
calls go through `run_with_ort_values`, so the cache stays in ONNX Runtime and nothing is copied
into or out of numpy: no argmax, no sequences, no Python work but the calls. The time of the calls
alone (no interpreter start, no session creation) is printed on stderr.

    bench/.venv-genai/bin/python bench/generate/model_alone.py --model tests/fixtures/tiny-random-gpt2/past.onnx
        [--rows 256] [--batch 16] [--prompt-length 8] [--max-length 128] [--threads N]
        [--steps-from FILE --eos 98]
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort

from decoder import Decoder, session
from prompts import report


def steps_from(path, rows, batch, prompt_length, eos):
    """Model calls per batch made by the loop that wrote `path` (sequences in batch order)."""
    with open(path) as f:
        seqs = [json.loads(line)["tokens"] for line in f if line.strip()][:rows]
    counts = []
    for b in range(0, len(seqs), batch):
        n = 0
        for seq in seqs[b:b + batch]:
            new = seq[prompt_length:]
            n = max(n, new.index(eos) + 1 if eos in new else len(new))
        counts.append(n)
    return counts


def step_inputs(dec, batch, prompt_length, steps):
    """The non-cache inputs of each of `steps` calls, as ONNX Runtime values."""
    prompt = [[(7 * r + i) % 90 for i in range(prompt_length)] for r in range(batch)]
    ids, mask, positions = dec.first_inputs(prompt, 0)
    out = []
    for k in range(steps):
        if k > 0:
            ids = np.zeros((batch, 1), dtype=np.int64)
            positions = positions[:, -1:] + 1
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        feeds = dec.feeds(ids, mask, positions, [])
        out.append({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the .onnx decoder")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-length", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128, help="prompt plus new tokens")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--steps-from", help="sequences written by a loop (JSONL of id, tokens)")
    ap.add_argument("--eos", type=int, help="with --steps-from")
    args = ap.parse_args()

    start = time.perf_counter()
    dec = Decoder(session(args.model, args.threads))
    sizes = [min(args.batch, args.rows - b) for b in range(0, args.rows, args.batch)]
    full = args.max_length - args.prompt_length
    if args.steps_from:
        counts = steps_from(args.steps_from, args.rows, args.batch, args.prompt_length, args.eos)
    else:
        counts = [full] * len(sizes)
    made = {}
    for size, n in zip(sizes, counts):
        if (size, n) not in made:
            made[(size, n)] = step_inputs(dec, size, args.prompt_length, n)
    empty = {size: [ort.OrtValue.ortvalue_from_numpy(np.zeros(dec.empty_cache(size), dtype=np.float32))
                    for _ in dec.pasts] for size in set(sizes)}
    ready = time.perf_counter()

    calls = 0
    for size, n in zip(sizes, counts):
        cache = empty[size]
        for feeds in made[(size, n)]:
            feeds = dict(feeds)
            feeds.update(zip(dec.pasts, cache))
            cache = dec.sess.run_with_ort_values(dec.outputs, feeds)[1:]
            calls += 1
    done = time.perf_counter()
    report("model_alone", load_s=ready - start, generate_s=done - ready, rows=args.rows, steps=calls)


if __name__ == "__main__":
    main()
