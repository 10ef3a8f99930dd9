"""Train tiny-gpt inside a pipeline: a `train` stage's program (plugins/TRAINING.md, protocol 1).

The tokenizer, the model, the optimiser and the ONNX export are those of
examples/models/tiny-gpt (``train.py``'s byte-level BPE tokenizer, token stream and settings,
``model.py``'s network, ``export.py``'s ONNX graph and parity check); only the text differs: the
rows pipe hands over instead of 3,000 stories from ``stories.py``. From the environment:

- ``PIPE_TRAIN_DATA``: an Arrow IPC file, one row per text file, with a text column (``column``,
  default ``text``, as ``collect.files`` writes it with ``load = "text"``); each file holds
  stories separated by blank lines. The stories are taken in id order; the last
  ``val_fraction`` of them (at least one) are held out for validation;
- ``PIPE_TRAIN_PARAMS``: a JSON object with ``steps`` (optimiser steps, each of ``batch_size``
  random windows of 129 tokens), ``batch_size`` (8), ``learning_rate`` (the peak, 6e-3, after
  a warmup of up to 30 steps, then a cosine decay to 5%), ``val_fraction`` (0.05) and ``column``;
- ``PIPE_TRAIN_SEED``: the initial weights and the windows drawn derive from it;
- ``PIPE_TRAIN_OUT``: where ``model.onnx`` (with a KV cache), ``tokenizer.json``,
  ``config.json`` and ``generation_config.json`` are written: a folder ``model.generate`` reads
  as it reads examples/models/tiny-gpt.

It prints ``{"step", "total", "metrics": {"loss"}}`` JSON lines on stdout (the training
cross-entropy in nats per token, averaged since the last line; about 50 lines in all), then
``{"metrics": {"val_loss", "val_perplexity", "name_recall", "onnx_max_abs_diff"}}``: the
validation loss on the held-out stories (consecutive 128-token windows), its perplexity, the
share of repeated character names the model predicts (train.py's ``name_recall``), and the
largest difference between onnxruntime's logits and the JAX model's. Other messages go to
stderr. It exits non-zero when that difference is 1e-4 or more.

Run by pipe (examples/train-gpt/pipeline.toml), or by hand with the variables set.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "models" / "tiny-gpt"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import optax  # noqa: E402
import pyarrow as pa  # noqa: E402
from pyarrow import ipc  # noqa: E402

import export  # noqa: E402  (examples/models/tiny-gpt/export.py)
import train  # noqa: E402  (examples/models/tiny-gpt/train.py)
from model import count_params, forward, init_params  # noqa: E402

PROTOCOL = "1"
PARITY_TOLERANCE = 1e-4
DEFAULTS = {"steps": 1, "batch_size": train.BATCH, "learning_rate": train.PEAK_LR,
            "val_fraction": train.VAL_FRACTION, "column": "text"}


def fail(message: str) -> None:
    sys.exit(f"trainer: error: {message}")


def read_params(path: str) -> dict:
    with open(path) as f:
        given = json.load(f)
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        fail(f"unknown params {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **given}
    if not (isinstance(p["steps"], int) and p["steps"] > 0):
        fail(f"steps must be a positive integer, not {p['steps']!r}")
    if not (isinstance(p["batch_size"], int) and p["batch_size"] > 0):
        fail(f"batch_size must be a positive integer, not {p['batch_size']!r}")
    if not (isinstance(p["learning_rate"], (int, float)) and p["learning_rate"] > 0):
        fail(f"learning_rate must be a positive number, not {p['learning_rate']!r}")
    if not (isinstance(p["val_fraction"], (int, float)) and 0 < p["val_fraction"] < 1):
        fail(f"val_fraction must be in (0, 1), not {p['val_fraction']!r}")
    return p


def read_stories(path: str, column: str) -> list[str]:
    """Every story of the dataset: its text column's values, in id order, split at blank lines."""
    table = ipc.open_file(path).read_all()
    if column not in table.column_names:
        fail(f"the dataset has no column {column!r} (it has {table.column_names}); read the files "
             "with collect.files and load = \"text\", or name the text column with params.column")
    values = table.column(column).combine_chunks()
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        fail(f"column {column!r} is {values.type}, not text")
    ids = table.column("id").to_pylist() if "id" in table.column_names else range(len(table))
    texts: list[str] = []
    for row_id, text in zip(ids, values.to_pylist()):
        if text is None:
            fail(f"row {row_id!r} has no {column!r}")
        texts.extend(s.strip() for s in text.replace("\r\n", "\n").split("\n\n") if s.strip())
    return texts


def main() -> None:
    protocol = os.environ.get("PIPE_TRAIN_PROTOCOL")
    if protocol != PROTOCOL:
        fail(f"PIPE_TRAIN_PROTOCOL is {protocol!r}; this trainer speaks protocol {PROTOCOL}")
    params = read_params(os.environ["PIPE_TRAIN_PARAMS"])
    texts = read_stories(os.environ["PIPE_TRAIN_DATA"], params["column"])
    if len(texts) < 2:
        fail(f"the dataset holds {len(texts)} stories; at least 2 are needed (one held out)")
    out = Path(os.environ["PIPE_TRAIN_OUT"])
    seed = int(os.environ["PIPE_TRAIN_SEED"])
    t_start = time.perf_counter()

    # corpus and tokenizer: the last val_fraction of the stories are held out
    n_val = max(1, int(round(len(texts) * params["val_fraction"])))
    train_texts, val_texts = texts[:-n_val], texts[-n_val:]
    tok = train.make_tokenizer(train_texts)
    tok.save(str(out / "tokenizer.json"))
    train_ids, val_ids = train.stream(tok, train_texts), train.stream(tok, val_texts)
    cfg = train.CFG
    T = cfg.n_positions
    if len(train_ids) < T + 2 or len(val_ids) < T + 1:
        fail(f"{len(train_ids)} training and {len(val_ids)} validation tokens: each needs at least "
             f"one window of {T + 1} tokens")

    # model and optimiser, as train.py sets them up
    steps, batch, lr = params["steps"], params["batch_size"], float(params["learning_rate"])
    weights = init_params(cfg, seed_key(seed))
    print(f"trainer: {len(train_texts)} training / {len(val_texts)} validation stories, "
          f"{len(train_ids):,} / {len(val_ids):,} tokens; {count_params(weights):,} parameters; "
          f"{steps} steps of {batch}x{T} tokens, seed {seed}, {jax.device_count()} "
          f"{jax.default_backend()} device", file=sys.stderr, flush=True)
    warmup = min(train.WARMUP, steps // 2)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, lr * 0.05)
    decay_mask = jax.tree_util.tree_map_with_path(
        lambda path, x: x.ndim == 2 and "wpe" not in jax.tree_util.keystr(path), weights)
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=train.WEIGHT_DECAY,
                                  mask=decay_mask))
    state = opt.init(weights)

    def loss_fn(p, windows):
        logits = forward(p, cfg, windows[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()

    @jax.jit
    def step(p, s, windows):
        loss, grads = jax.value_and_grad(loss_fn)(p, windows)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    @jax.jit
    def eval_loss(p, windows):
        logits = forward(p, cfg, windows[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).sum()

    n_win = (len(val_ids) - 1) // T
    val_windows = np.stack([val_ids[i * T: i * T + T + 1] for i in range(n_win)])

    rng = np.random.default_rng(seed)
    every = max(1, steps // 50)
    since, total = 0, 0.0
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        starts = rng.integers(0, len(train_ids) - T - 1, batch)
        windows = jnp.asarray(np.stack([train_ids[s: s + T + 1] for s in starts]))
        weights, state, loss = step(weights, state, windows)
        since, total = since + 1, total + float(loss)
        if i % every == 0 or i == steps:
            print(json.dumps({"step": i, "total": steps, "metrics": {"loss": round(total / since, 4)}}),
                  flush=True)
            since, total = 0, 0.0
    print(f"trainer: trained in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    val_loss = sum(float(eval_loss(weights, jnp.asarray(val_windows[i:i + 32])))
                   for i in range(0, n_win, 32)) / (n_win * T)
    recall, names = train.name_recall(weights, cfg, tok, val_texts)

    # export: model.onnx with the KV cache; the cache-less graph only for the parity check
    weights = jax.tree_util.tree_map(np.asarray, weights)
    onnx.save(export.build(weights, cfg, cache=True), str(out / "model.onnx"))
    with tempfile.TemporaryDirectory() as scratch:
        nocache_path = Path(scratch) / "model_nocache.onnx"
        onnx.save(export.build(weights, cfg, cache=False), str(nocache_path))
        diff = export.check_logits(weights, cfg, export.Runner(out / "model.onnx", cfg),
                                   export.Runner(nocache_path, cfg), tok)
    train.write_configs(cfg, tok.token_to_id(train.EOT), out)
    print(json.dumps({"metrics": {"val_loss": round(val_loss, 4),
                                  "val_perplexity": round(math.exp(val_loss), 3),
                                  "name_recall": round(recall, 4),
                                  "onnx_max_abs_diff": diff}}), flush=True)
    print(f"trainer: validation loss {val_loss:.4f} nats/token (perplexity {math.exp(val_loss):.3f}), "
          f"repeated names predicted {recall:.3f} ({names}); onnxruntime vs jax: max abs diff "
          f"{diff:.2e}; {time.perf_counter() - t_start:.1f} s in all", file=sys.stderr, flush=True)
    if not diff < PARITY_TOLERANCE:
        fail(f"the ONNX export differs from the JAX model by {diff} >= {PARITY_TOLERANCE}")


def seed_key(seed: int) -> jax.Array:
    """A PRNG key of a 64-bit seed; seeds below 2^32 give ``PRNGKey(seed)``, as train.py uses."""
    key = jax.random.PRNGKey(seed & 0xFFFFFFFF)
    return jax.random.fold_in(key, seed >> 32) if seed >> 32 else key

if __name__ == "__main__":
    main()
