#!/usr/bin/env python3
"""The runtime's limit: the benchmark model alone in ONNX Runtime, on tensors made before timing.

No files, no decoding, no resizing, no normalisation, no output file: just
`session.run(["logits"], {"pixels": batch})` over --count rows in batches of --batch-size, with the
same model, thread count, optimisation level and batch size as the pipe pipeline and baseline.py.
No end-to-end pipeline running the same model with the same threads can be faster than this (except
by overlapping work on spare cores), so pipe's time divided by this one shows how close it comes.

The input tensors (standard-normal values: the range of normalised pixels) are made before the
clock starts: --distinct batches of --batch-size rows (8 by default, 150 MB), run in turn until
--count rows have gone through the model (the last batch cut to size). The values do not change
what a convolution costs, and a batch (19 MB) is larger than the caches either way, so cycling
through 8 batches costs what 157 distinct ones would, without the 3 GB of memory and the seconds
of random numbers that 5,000 pre-made rows would add to the process's time and peak RSS.
The time printed covers only the model runs. The process's wall time as measured from the
outside (hyperfine) also includes interpreter start, session creation and making the inputs; the
script prints its in-process model time on stderr so both can be read.

    .venv/bin/python bench/model_alone.py [--count 5000] [--threads 2] [--batch-size 32]
        [--distinct 8] [--model bench/resnet.onnx]
"""
import argparse
import os
import sys
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))


def session(model, threads):
    """The session every Python part of the benchmark uses: CPU, `threads` intra-op threads, one
    inter-op thread (sequential execution), every graph optimisation, as pipe's model.onnx does."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--distinct", type=int, default=8, help="distinct pre-made batches, cycled")
    ap.add_argument("--model", default=os.path.join(HERE, "resnet.onnx"))
    args = ap.parse_args()

    sess = session(args.model, args.threads)
    rng = np.random.default_rng(0)
    pool = [rng.standard_normal((args.batch_size, 3, 224, 224), dtype=np.float32)
            for _ in range(max(1, min(args.distinct, -(-args.count // args.batch_size))))]

    start = time.perf_counter()
    checksum = 0.0
    for k, first in enumerate(range(0, args.count, args.batch_size)):
        batch = pool[k % len(pool)][: min(args.batch_size, args.count - first)]
        (logits,) = sess.run(["logits"], {"pixels": batch})
        checksum += float(logits[:, 0].sum())
    took = time.perf_counter() - start
    print(f"model_alone: {args.count} rows, {args.threads} threads, batch {args.batch_size}: model time {took:.3f} s, "
          f"{args.count / took:.1f} rows/s, {1000 * took / args.count:.2f} ms/row (ort {ort.__version__}, "
          f"checksum {checksum:.4g})", file=sys.stderr)


if __name__ == "__main__":
    main()
