"""Judge the digits GAN's generator with the digit classifier.

Draws 1,000 latents z ~ N(0, 1) (``numpy.random.default_rng(0)``), runs ``generator.onnx``,
classifies the images with ``examples/models/digits-classifier`` and prints the share that the
classifier assigns to some digit with probability >= 0.9, and the histogram of predicted digits:

    .venv/bin/python examples/models/digits-gan/evaluate.py
    .venv/bin/python examples/models/digits-gan/evaluate.py --grid samples.png   # also a grid

As a module: ``generate(n, seed)`` gives float32 images [n,1,16,16] in [-1,1], ``save_grid``
writes them as a PNG grid.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import digits  # noqa: E402  (examples/models/digits.py)

MODEL = HERE / "generator.onnx"
CLASSIFIER = HERE.parent / "digits-classifier" / "evaluate.py"
Z_DIM = 32
CONFIDENT = 0.9


@functools.lru_cache(maxsize=None)
def _session(model: str) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def classifier():
    """``classify(tensors) -> probs`` of digits-classifier/evaluate.py (loaded under its own name)."""
    spec = importlib.util.spec_from_file_location("digits_classifier_evaluate", CLASSIFIER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.classify


def generate(n: int, seed: int = 0, model: str | Path = MODEL) -> np.ndarray:
    """``n`` generated images float32 [n,1,16,16] in [-1,1] from z = default_rng(seed) normals."""
    z = np.random.default_rng(seed).standard_normal((n, Z_DIM)).astype(np.float32)
    (image,) = _session(str(model)).run(["image"], {"z": z})
    return image


def save_grid(tensors: np.ndarray, path: Path, cols: int = 10, scale: int = 4) -> None:
    """Tensors [N,1,16,16] in [-1,1] as a PNG grid, row-major, 1-pixel gray gaps, each image
    upscaled x``scale`` (nearest)."""
    images = digits.from_tensor(tensors)
    rows = -(-len(images) // cols)
    cell = images.shape[1] + 1
    canvas = np.full((rows * cell + 1, cols * cell + 1), 96, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[1 + r * cell:r * cell + cell, 1 + c * cell:c * cell + cell] = img
    Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale),
                                   Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("-n", type=int, default=1000, help="samples (%(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, default=None, help="also write the first 100 as a grid")
    args = parser.parse_args()

    images = generate(args.n, args.seed, args.model)
    probs = classifier()(images)
    top = probs.max(1)
    pred = probs.argmax(1)
    hist = np.bincount(pred, minlength=10)
    confident_hist = np.bincount(pred[top >= CONFIDENT], minlength=10)
    print(f"digits-gan: {np.mean(top >= CONFIDENT):.3f} of {args.n} samples classified with "
          f"probability >= {CONFIDENT} (mean top probability {top.mean():.3f})")
    print("  predicted digit 0..9 (all):      ", " ".join(f"{v:4d}" for v in hist))
    print("  predicted digit 0..9 (confident):", " ".join(f"{v:4d}" for v in confident_hist))
    if args.grid:
        save_grid(images[:100], args.grid)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
