#!/usr/bin/env python3
"""The same work as bench/pipeline.toml, written the way a Python user would write it.

For each batch of 32 files (sorted by name): Pillow opens and decodes each JPEG, converts it to
RGB, centre-crops it to the target's aspect ratio and resizes it to 224x224 with the bilinear
filter (ImageOps.fit: the same as preprocess.image's resize = "fill", filter = "bilinear"); numpy
scales it to 0-1, normalises it with the ImageNet mean and std and transposes it to CHW; the
batch is stacked and run through ONNX Runtime (CPU, --threads intra-op threads, every graph
optimisation: the same settings as pipe's model.onnx with `threads`). The logits of every image
are written with its id (the file name) to a zstd-compressed Parquet file, logits as a fixed-size
list of float32, as sink.table writes them.

It is a plain loop, as a script would be: decoding and preprocessing run on the main thread
between model calls; only ONNX Runtime uses more than one thread.

    .venv/bin/python bench/baseline.py [--images bench/data/images] [--threads 2]
        [--out bench/out/baseline/predictions.parquet] [--batch-size 32] [--model bench/resnet.onnx]
"""
import argparse
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = (224, 224)
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load(path):
    with Image.open(path) as img:
        img = ImageOps.fit(img.convert("RGB"), SIZE, Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - MEAN) / STD
    return x.transpose(2, 0, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=os.path.join(HERE, "data", "images"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "out", "baseline", "predictions.parquet"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default=os.path.join(HERE, "resnet.onnx"))
    args = ap.parse_args()
    start = time.perf_counter()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])

    ids = sorted(f for f in os.listdir(args.images) if f.endswith(".jpg"))
    outputs = []
    for i in range(0, len(ids), args.batch_size):
        batch = np.stack([load(os.path.join(args.images, f)) for f in ids[i:i + args.batch_size]])
        (logits,) = session.run(["logits"], {"pixels": batch})
        outputs.append(logits)

    logits = np.concatenate(outputs) if outputs else np.zeros((0, 1000), dtype=np.float32)
    table = pa.table({
        "id": pa.array(ids, pa.string()),
        "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), logits.shape[1]),
    })
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    pq.write_table(table, args.out, compression="zstd")
    took = time.perf_counter() - start
    print(f"baseline: {len(ids)} images, {args.threads} threads, batch {args.batch_size}: {took:.3f} s, "
          f"{len(ids) / took:.1f} rows/s -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
