"""Train the digits diffusion model inside a pipeline: a `train` stage's program (plugins/TRAINING.md, protocol 1).

The model, DDPM training loop, ONNX export and its parity check are those of
examples/models/digits-diffusion (``diffusion.py``, which that folder's ``train.py`` uses too);
only the data differs: the rows pipe hands over instead of ``digits.py``'s split. From the
environment:

- ``PIPE_TRAIN_DATA``: an Arrow IPC file, one row per image, with a tensor column (``column``,
  default ``pixels``) of 256 float32 values in [-1, 1] (a 16x16 grayscale image, [1,16,16] as
  ``preprocess.image`` writes it with ``mode = "gray"``, ``scale = 2/255``, ``mean = [1.0]``,
  ``std = [1.0]``) and an integer column (``label_column``, default ``label``) holding the
  digit, 0..9;
- ``PIPE_TRAIN_PARAMS``: a JSON object with ``steps`` (AdamW steps on batches drawn with
  replacement, 1400) or ``epochs`` (passes over the data instead: ceil(epochs * rows /
  batch_size) steps), ``batch_size`` (128), ``learning_rate`` (0.002: the peak after the
  warm-up, decayed by a cosine to 5%), ``column`` and ``label_column``;
- ``PIPE_TRAIN_SEED``: all randomness (initial weights, batches, timesteps, noise, label
  dropout) derives from it;
- ``PIPE_TRAIN_OUT``: where ``model.onnx`` and ``scheduler_config.json`` (the diffusers
  DDIMScheduler fields of the training schedule) are written.

It prints ``{"step", "total", "metrics": {"loss"}}`` JSON lines on stdout (the DDPM loss
averaged since the last line; about 100 lines in all), then ``{"metrics":
{"onnx_max_abs_diff": D}}``; other messages go to stderr. It exits non-zero when the ONNX
model's output differs from the JAX model's by 1e-4 or more.

Run by pipe (examples/train-diffusion/pipeline.toml), or by hand with the variables set.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "models" / "digits-diffusion"))

import diffusion  # noqa: E402  (examples/models/digits-diffusion/diffusion.py)
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.ipc as ipc  # noqa: E402

PROTOCOL = "1"
PRODUCER = "pipe examples/train-diffusion/trainer.py"
DEFAULTS = {"steps": None, "epochs": None, "batch_size": diffusion.BATCH,
            "learning_rate": diffusion.LEARNING_RATE, "column": "pixels", "label_column": "label"}
PIXELS = diffusion.SIZE * diffusion.SIZE
RANGE_SLACK = 2e-3  # float rounding at the ends of [-1, 1]


def fail(message: str) -> None:
    sys.exit(f"trainer: error: {message}")


def positive(value, integer: bool) -> bool:
    kinds = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and value > 0


def read_params(path: str) -> dict:
    with open(path) as f:
        given = json.load(f)
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        fail(f"unknown params {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **given}
    if p["steps"] is not None and p["epochs"] is not None:
        fail("give steps or epochs, not both")
    if p["steps"] is None and p["epochs"] is None:
        p["steps"] = diffusion.STEPS
    if p["steps"] is not None and not positive(p["steps"], integer=True):
        fail(f"steps must be a positive integer, not {p['steps']!r}")
    if p["epochs"] is not None and not positive(p["epochs"], integer=False):
        fail(f"epochs must be a positive number, not {p['epochs']!r}")
    if not positive(p["batch_size"], integer=True):
        fail(f"batch_size must be a positive integer, not {p['batch_size']!r}")
    if not positive(p["learning_rate"], integer=False):
        fail(f"learning_rate must be a positive number, not {p['learning_rate']!r}")
    return p


def read_dataset(path: str, column: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's images as float32 [N,1,16,16] in [-1, 1] and their labels as int32 [N]."""
    table = ipc.open_file(path).read_all()
    for name, what in ((column, "params.column"), (label_column, "params.label_column")):
        if name not in table.column_names:
            fail(f"the dataset has no column {name!r} (it has {table.column_names}); name it "
                 f"with {what}")
    values = table.column(column).combine_chunks()
    if values.null_count:
        fail(f"{values.null_count} rows have no {column!r}")
    storage = values.storage if isinstance(values, pa.ExtensionArray) else values
    if not pa.types.is_fixed_size_list(storage.type) or storage.type.list_size != PIXELS:
        fail(f"column {column!r} is {values.type}, not a tensor of {PIXELS} values (one "
             f"{diffusion.SIZE}x{diffusion.SIZE} gray image: preprocess.image with size = "
             f"[{diffusion.SIZE}, {diffusion.SIZE}] and mode = \"gray\")")
    x = storage.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if len(x) and (x.min() < -1 - RANGE_SLACK or x.max() > 1 + RANGE_SLACK):
        fail(f"column {column!r} holds values in [{x.min():g}, {x.max():g}], not in [-1, 1]; "
             "preprocess.image with scale = 2/255, mean = [1.0], std = [1.0] writes them")
    labels = table.column(label_column).combine_chunks()
    if not pa.types.is_integer(labels.type):
        fail(f"column {label_column!r} is {labels.type}, not an integer column of digits")
    if labels.null_count:
        fail(f"{labels.null_count} rows have no {label_column!r}")
    y = labels.to_numpy(zero_copy_only=False).astype(np.int64)
    bad = y[(y < 0) | (y >= diffusion.CLASSES)]
    if len(bad):
        fail(f"column {label_column!r} holds {bad[0]}: labels are 0..{diffusion.CLASSES - 1} "
             f"({diffusion.NULL_CLASS} is the model's \"no condition\")")
    return x.reshape(-1, 1, diffusion.SIZE, diffusion.SIZE), y.astype(np.int32)


def seed_key(seed: int) -> jax.Array:
    """A PRNG key of a 64-bit seed; seeds below 2^32 give ``PRNGKey(seed)``, as train.py uses."""
    key = jax.random.PRNGKey(seed & 0xFFFFFFFF)
    return jax.random.fold_in(key, seed >> 32) if seed >> 32 else key


def progress(step: int, steps: int, loss: float, seconds: float) -> None:
    print(json.dumps({"step": step, "total": steps, "metrics": {"loss": round(loss, 5)}}),
          flush=True)


def main() -> None:
    protocol = os.environ.get("PIPE_TRAIN_PROTOCOL")
    if protocol != PROTOCOL:
        fail(f"PIPE_TRAIN_PROTOCOL is {protocol!r}; this trainer speaks protocol {PROTOCOL}")
    params = read_params(os.environ["PIPE_TRAIN_PARAMS"])
    x, y = read_dataset(os.environ["PIPE_TRAIN_DATA"], params["column"], params["label_column"])
    if len(x) == 0:
        fail("the dataset has no rows")
    out = Path(os.environ["PIPE_TRAIN_OUT"])
    seed = int(os.environ["PIPE_TRAIN_SEED"])

    batch = params["batch_size"]
    if params["steps"] is not None:
        steps, how = params["steps"], f"{params['steps'] * batch / len(x):.1f} epochs"
    else:
        steps = max(1, math.ceil(params["epochs"] * len(x) / batch))
        how = f"{params['epochs']} epochs"
    counts = np.bincount(y, minlength=diffusion.CLASSES)
    print(f"trainer: {len(x)} images (per digit {counts.tolist()}), {steps} steps of {batch} "
          f"({how}), seed {seed}, {jax.device_count()} {jax.default_backend()} device",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    trained = jax.block_until_ready(diffusion.train(
        x, y, steps, key=seed_key(seed), batch=batch, learning_rate=params["learning_rate"],
        log=progress, log_every=max(1, steps // 100)))
    print(f"trainer: trained in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    model_path = out / "model.onnx"
    diffusion.export_onnx(trained, model_path, producer=PRODUCER)
    diff = diffusion.parity(trained, model_path)
    print(json.dumps({"metrics": {"onnx_max_abs_diff": diff}}), flush=True)
    diffusion.write_scheduler_config(out / "scheduler_config.json")
    print(f"trainer: wrote model.onnx and scheduler_config.json; onnxruntime vs jax: max abs "
          f"diff {diff:.2e}", file=sys.stderr, flush=True)
    if not diff < diffusion.PARITY_TOLERANCE:
        fail(f"the ONNX export differs from the JAX model by {diff} >= "
             f"{diffusion.PARITY_TOLERANCE}")


if __name__ == "__main__":
    main()
