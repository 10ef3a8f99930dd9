"""Train the class-conditional digits diffusion model with JAX and export it to ONNX.

The model, its DDPM training loop and the ONNX export are in ``diffusion.py`` (shared with
``examples/train-diffusion/trainer.py``, which trains the same model inside a pipeline). This
script trains it on the 16x16 digits of ``examples/models/digits.py`` (train split, 1,437
images) and exports ``model.onnx`` beside this script:

    sample [batch,1,16,16] float32, timestep [batch] float32, class_labels [batch] int64
      -> noise_pred [batch,1,16,16] float32

The script checks that onnxruntime's output equals the JAX model's (max abs diff < 1e-4, on
random samples, integer and fractional timesteps, every class label; it exits non-zero
otherwise), writes ``scheduler_config.json`` (diffusers DDIMScheduler fields of the training
schedule, ``clip_sample`` false) and ``samples.png`` with ``sample.py``'s DDIM sampler (guidance
scale 3, row k = digit k). Seeds are fixed.

    .venv/bin/python examples/models/digits-diffusion/train.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import digits  # noqa: E402  (examples/models/digits.py)
from diffusion import (  # noqa: E402  (diffusion.py beside this script)
    BATCH,
    PARITY_TOLERANCE,
    STEPS,
    count_params,
    export_onnx,
    parity,
    train,
    write_scheduler_config,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "model.onnx",
                        help="where to write the ONNX model (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps (%(default)s)")
    parser.add_argument("--no-grid", action="store_true", help="skip writing samples.png")
    args = parser.parse_args()

    images, labels = digits.load_digits16()
    train_idx, _ = digits.split(len(images))
    x_train, y_train = digits.to_tensor(images[train_idx]), labels[train_idx]
    print(f"train {len(x_train)} images")

    start = time.perf_counter()
    params = jax.block_until_ready(train(x_train, y_train, args.steps))
    train_seconds = time.perf_counter() - start
    print(f"parameters: {count_params(params):,}")
    print(f"training time: {train_seconds:.1f} s ({args.steps} steps of {BATCH}, "
          f"{jax.device_count()} {jax.default_backend()} device)")

    export_onnx(params, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    diff = parity(params, args.out)
    print(f"onnxruntime vs jax: max abs diff {diff:.2e}")
    if not diff < PARITY_TOLERANCE:
        sys.exit(f"error: ONNX export differs from the JAX model by {diff} >= {PARITY_TOLERANCE}")

    config = write_scheduler_config(HERE / "scheduler_config.json")
    print(f"wrote {config}")

    if not args.no_grid:
        import sample  # noqa: E402  (sample.py beside this script)

        grid = HERE / "samples.png"
        sample.write_grid(args.out, grid)
        print(f"wrote {grid}")


if __name__ == "__main__":
    main()
