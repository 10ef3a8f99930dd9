#!/usr/bin/env python3
"""onnxruntime-genai on the benchmark's prompts: greedy search through its Python API, as its own
examples do it (og.Config on the model folder, CPU provider, og.GeneratorParams with max_length and
batch_size, og.Generator, append_tokens, generate_next_token until is_done), batch after batch.

max_length counts the prompt plus the new tokens (genai's meaning); a row that reaches EOS is
padded with the pad token until the whole batch is done. The sequences (prompt + new tokens, with
that padding) go to --out; the time of the generation alone (no interpreter start, no import, no
model load) is printed on stderr.

    bench/.venv-genai/bin/python bench/generate/genai_run.py --model tests/fixtures/tiny-random-gpt2
        --prompts bench/data/generate/prompts-256x8.jsonl [--batch 16] [--max-length 128]
        [--threads N] [--out FILE]
"""
import argparse
import json
import time

import numpy as np
import onnxruntime_genai as og

from prompts import batches, read_prompts, report, write_sequences


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a folder with genai_config.json")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128, help="prompt plus new tokens")
    ap.add_argument("--threads", type=int, help="intra-op threads (default: ONNX Runtime's, all physical cores)")
    ap.add_argument("--out")
    args = ap.parse_args()

    start = time.perf_counter()
    config = og.Config(args.model)
    config.clear_providers()  # CPU
    if args.threads:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": args.threads}}}}))
    model = og.Model(config)
    loaded = time.perf_counter()
    rows = read_prompts(args.prompts)

    ids, sequences, steps = [], [], 0
    for batch in batches(rows, args.batch):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=args.max_length, do_sample=False, batch_size=len(batch))
        generator = og.Generator(model, params)
        generator.append_tokens(np.array([p for _, p in batch], dtype=np.int32))
        while not generator.is_done():
            generator.generate_next_token()
            steps += 1
        ids += [i for i, _ in batch]
        sequences += [generator.get_sequence(r).tolist() for r in range(len(batch))]
    done = time.perf_counter()
    write_sequences(args.out, ids, sequences)
    report("genai", load_s=loaded - start, generate_s=done - loaded, rows=len(rows), steps=steps)


if __name__ == "__main__":
    main()
