"""Train the digits VAE with JAX and export its encoder and decoder to ONNX.

The model, its loss, the training loop and the export are in ``vae.py`` (shared with
``examples/train-vae/trainer.py``, which trains the same model inside a pipeline). This script
trains it on the 16x16 digits of ``examples/models/digits.py`` (train split, 1,437 images),
judges it on the test split, writes ``encoder.onnx`` and ``decoder.onnx``, checks that
onnxruntime's outputs equal the JAX model's (max abs diff < 1e-4; it exits non-zero otherwise)
and writes ``samples.png`` (prior samples). Seeds are fixed.

    .venv/bin/python examples/models/digits-vae/train.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import digits  # noqa: E402  (examples/models/digits.py)
from vae import (  # noqa: E402  (vae.py beside this script)
    BATCH,
    LATENT,
    PARITY_TOLERANCE,
    STEPS,
    count_params,
    export_onnx,
    neg_elbo_terms,
    parity,
    split_params,
    train,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the ONNX files")
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps (%(default)s)")
    args = parser.parse_args()

    images, _ = digits.load_digits16()
    train_idx, test_idx = digits.split(len(images))
    x_train, x_test = digits.to_tensor(images[train_idx]), digits.to_tensor(images[test_idx])
    print(f"train {len(x_train)} images")

    start = time.perf_counter()
    params = jax.block_until_ready(train(x_train, args.steps))
    train_seconds = time.perf_counter() - start
    enc, dec = split_params(params)
    print(f"parameters: encoder {count_params(enc):,}, decoder {count_params(dec):,}")
    print(f"training time: {train_seconds:.1f} s ({args.steps} steps of {BATCH}, "
          f"{jax.device_count()} {jax.default_backend()} device)")
    recon, kl = neg_elbo_terms(params, jnp.asarray(x_test),
                               jax.random.normal(jax.random.PRNGKey(1), (len(x_test), LATENT)))
    print(f"test split: reconstruction term {float(recon):.2f}, KL {float(kl):.2f} nats, "
          f"-ELBO {float(recon + kl):.2f} (up to the likelihood's constant)")

    args.out.mkdir(parents=True, exist_ok=True)
    enc_path, dec_path = export_onnx(params, args.out)
    for path in (enc_path, dec_path):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    diff = parity(params, enc_path, dec_path, x_test)
    print(f"onnxruntime vs jax: max abs diff {diff:.2e}")
    if not diff < PARITY_TOLERANCE:
        sys.exit(f"error: ONNX export differs from the JAX model by {diff} >= {PARITY_TOLERANCE}")

    sys.path.insert(0, str(HERE))
    import evaluate  # noqa: E402  (evaluate.py beside this script)

    grid = args.out / "samples.png"
    evaluate.save_grid(evaluate.prior_samples(100, seed=0, model=dec_path), grid)
    print(f"wrote {grid}")


if __name__ == "__main__":
    main()
