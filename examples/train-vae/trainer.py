"""Train the digits VAE inside a pipeline: a `train` stage's program (plugins/TRAINING.md, protocol 1).

The model, loss, training loop and ONNX export are those of examples/models/digits-vae
(``vae.py``, which that folder's ``train.py`` uses too); only the data differs: the rows pipe
hands over instead of ``digits.py``'s split. From the environment:

- ``PIPE_TRAIN_DATA``: an Arrow IPC file, one row per image, with a tensor column (``column``,
  default ``pixels``) of 256 float32 values: a 16x16 grayscale image, [1,16,16] as
  ``preprocess.image`` writes it with ``mode = "gray"``;
- ``PIPE_TRAIN_PARAMS``: a JSON object with ``epochs`` (passes over the data, as steps of
  ``batch_size`` images drawn with replacement: ceil(epochs * rows / batch_size) steps),
  ``batch_size`` (128), ``learning_rate`` (0.001, decayed by a cosine to 5%), ``range`` (the
  value range of the tensors, as sink.grid's: "-1,1" (default), "0,1" or "0,255"; mapped to the
  VAE's [-1, 1]) and ``column``;
- ``PIPE_TRAIN_SEED``: all randomness (initial weights, batches, noise) derives from it;
- ``PIPE_TRAIN_OUT``: where ``encoder.onnx`` and ``decoder.onnx`` are written.

It prints ``{"step", "total", "metrics": {"loss", "reconstruction", "kl"}}`` JSON lines on
stdout (the negative ELBO and its two terms, averaged since the last line; about 100 lines in
all), then ``{"metrics": {"onnx_max_abs_diff": D}}``; other messages go to stderr. It exits
non-zero when the ONNX models' outputs differ from the JAX model's by 1e-4 or more.

Run by pipe (examples/train-vae/pipeline.toml), or by hand with the variables set.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pyarrow as pa
from pyarrow import ipc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "models" / "digits-vae"))
import vae  # noqa: E402  (examples/models/digits-vae/vae.py)

PROTOCOL = "1"
PRODUCER = "pipe examples/train-vae/trainer.py"
DEFAULTS = {"epochs": 1, "batch_size": vae.BATCH, "learning_rate": vae.LEARNING_RATE,
            "range": "-1,1", "column": "pixels"}
RANGES = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0), "0,255": (0.0, 255.0)}
RANGE_SLACK = 1e-3  # float rounding at the ends of the range


def fail(message: str) -> None:
    sys.exit(f"trainer: error: {message}")


def read_params(path: str) -> dict:
    with open(path) as f:
        given = json.load(f)
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        fail(f"unknown params {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **given}
    if not (isinstance(p["epochs"], (int, float)) and p["epochs"] > 0):
        fail(f"epochs must be a positive number, not {p['epochs']!r}")
    if not (isinstance(p["batch_size"], int) and p["batch_size"] > 0):
        fail(f"batch_size must be a positive integer, not {p['batch_size']!r}")
    if not (isinstance(p["learning_rate"], (int, float)) and p["learning_rate"] > 0):
        fail(f"learning_rate must be a positive number, not {p['learning_rate']!r}")
    if p["range"] not in RANGES:
        fail(f"range must be one of {list(RANGES)}, not {p['range']!r}")
    return p


def read_images(path: str, column: str, value_range: str) -> np.ndarray:
    """The dataset's images as float32 [N,1,16,16] in [-1, 1]."""
    table = ipc.open_file(path).read_all()
    if column not in table.column_names:
        fail(f"the dataset has no column {column!r} (it has {table.column_names}); "
             "name the tensor column with params.column")
    values = table.column(column).combine_chunks()
    if values.null_count:
        fail(f"{values.null_count} rows have no {column!r}")
    storage = values.storage if isinstance(values, pa.ExtensionArray) else values
    if not pa.types.is_fixed_size_list(storage.type) or storage.type.list_size != vae.PIXELS:
        fail(f"column {column!r} is {values.type}, not a tensor of {vae.PIXELS} values (one "
             f"{vae.SIZE}x{vae.SIZE} gray image: preprocess.image with size = [{vae.SIZE}, "
             f"{vae.SIZE}] and mode = \"gray\")")
    x = storage.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    lo, hi = RANGES[value_range]
    if len(x) and (x.min() < lo - RANGE_SLACK * (hi - lo) or x.max() > hi + RANGE_SLACK * (hi - lo)):
        fail(f"column {column!r} holds values in [{x.min():g}, {x.max():g}], outside range "
             f"\"{value_range}\"; set params.range to what preprocess.image writes (its default "
             "scale gives \"0,1\"; scale = 2/255 with mean = [1.0], std = [1.0] gives \"-1,1\")")
    x = (x - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - np.float32(1.0)
    return x.reshape(-1, 1, vae.SIZE, vae.SIZE)


def seed_key(seed: int) -> jax.Array:
    """A PRNG key of a 64-bit seed; seeds below 2^32 give ``PRNGKey(seed)``, as train.py uses."""
    key = jax.random.PRNGKey(seed & 0xFFFFFFFF)
    return jax.random.fold_in(key, seed >> 32) if seed >> 32 else key


def progress(step: int, steps: int, loss: float, recon: float, kl: float, seconds: float) -> None:
    metrics = {"loss": round(loss, 4), "reconstruction": round(recon, 4), "kl": round(kl, 4)}
    print(json.dumps({"step": step, "total": steps, "metrics": metrics}), flush=True)


def main() -> None:
    protocol = os.environ.get("PIPE_TRAIN_PROTOCOL")
    if protocol != PROTOCOL:
        fail(f"PIPE_TRAIN_PROTOCOL is {protocol!r}; this trainer speaks protocol {PROTOCOL}")
    params = read_params(os.environ["PIPE_TRAIN_PARAMS"])
    x = read_images(os.environ["PIPE_TRAIN_DATA"], params["column"], params["range"])
    if len(x) == 0:
        fail("the dataset has no rows")
    out = Path(os.environ["PIPE_TRAIN_OUT"])
    seed = int(os.environ["PIPE_TRAIN_SEED"])

    batch = params["batch_size"]
    steps = max(1, math.ceil(params["epochs"] * len(x) / batch))
    print(f"trainer: {len(x)} images, {steps} steps of {batch} ({params['epochs']} epochs), "
          f"seed {seed}, {jax.device_count()} {jax.default_backend()} device", file=sys.stderr,
          flush=True)
    start = time.perf_counter()
    trained = jax.block_until_ready(vae.train(
        x, steps, key=seed_key(seed), batch=batch, learning_rate=params["learning_rate"],
        log=progress, log_every=max(1, steps // 100)))
    print(f"trainer: trained in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    enc_path, dec_path = vae.export_onnx(trained, out, producer=PRODUCER)
    diff = vae.parity(trained, enc_path, dec_path, x)
    print(json.dumps({"metrics": {"onnx_max_abs_diff": diff}}), flush=True)
    print(f"trainer: wrote {enc_path.name} and {dec_path.name}; onnxruntime vs jax: max abs diff "
          f"{diff:.2e}", file=sys.stderr, flush=True)
    if not diff < vae.PARITY_TOLERANCE:
        fail(f"the ONNX export differs from the JAX model by {diff} >= {vae.PARITY_TOLERANCE}")


if __name__ == "__main__":
    main()
