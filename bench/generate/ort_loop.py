#!/usr/bin/env python3
"""A plain Python onnxruntime generation loop, the way a user writes one: numpy inputs,
`session.run` per step, the KV cache handed back as numpy arrays (`present_i` -> `past_i`), greedy
argmax over the last position's logits. It decodes like onnxruntime-genai and pipe: left-padded,
masked prompts, positions max(cumsum(mask) - 1, 0), max_length counting the prompt, a row that
reaches EOS fed the pad token until the whole batch is done (and its sequence padded with it).

    bench/.venv-genai/bin/python bench/generate/ort_loop.py --model tests/fixtures/tiny-random-gpt2/past.onnx
        --prompts bench/data/generate/prompts-256x8.jsonl --eos 98 --pad 98 [--batch 16]
        [--max-length 128] [--threads N] [--out FILE]
"""
import argparse
import time

import numpy as np

from decoder import Decoder, session
from prompts import batches, read_prompts, report, write_sequences


def generate(dec, prompts, max_length, eos, pad):
    """Greedy search over one batch; returns the sequences and the number of model runs."""
    ids, mask, positions = dec.first_inputs(prompts, pad)
    n = len(prompts)
    cache = [np.zeros(dec.empty_cache(n), dtype=np.float32) for _ in dec.pasts]
    sequences = ids.copy()
    done = np.zeros(n, dtype=bool)
    steps = 0
    while True:
        out = dec.sess.run(dec.outputs, dec.feeds(ids, mask, positions, cache))
        steps += 1
        token = out[0][:, -1, :].argmax(axis=-1)
        token[done] = pad
        done |= token == eos
        sequences = np.concatenate([sequences, token[:, None]], axis=1)
        if done.all() or sequences.shape[1] >= max_length:
            return sequences, steps
        ids = token[:, None]
        positions = positions[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((n, 1), dtype=mask.dtype)], axis=1)
        cache = out[1:]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the .onnx decoder")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--eos", type=int, required=True)
    ap.add_argument("--pad", type=int, required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128, help="prompt plus new tokens")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out")
    args = ap.parse_args()

    start = time.perf_counter()
    dec = Decoder(session(args.model, args.threads))
    loaded = time.perf_counter()
    rows = read_prompts(args.prompts)
    ids, sequences, steps = [], [], 0
    for batch in batches(rows, args.batch):
        seqs, n = generate(dec, [p for _, p in batch], args.max_length, args.eos, args.pad)
        ids += [i for i, _ in batch]
        sequences += seqs.tolist()
        steps += n
    done = time.perf_counter()
    write_sequences(args.out, ids, sequences)
    report("ort_loop", load_s=loaded - start, generate_s=done - loaded, rows=len(rows), steps=steps)


if __name__ == "__main__":
    main()
