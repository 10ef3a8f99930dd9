"""Judge the digits VAE: reconstructions of the test split and samples from the prior.

Reconstruction: each of the 360 test images is encoded and decoded from its posterior mean
(``decoder(mean)``, no sampling); it prints the mean squared error per pixel (on the [-1, 1]
scale) and the share of reconstructions that ``examples/models/digits-classifier`` classifies as
the image's true digit (beside the classifier's accuracy on the originals). Prior samples:
1,000 latents z ~ N(0, I) (``numpy.random.default_rng(0)``) are decoded; it prints the share
classified with probability >= 0.9 and the histogram of predicted digits.

    .venv/bin/python examples/models/digits-vae/evaluate.py
    .venv/bin/python examples/models/digits-vae/evaluate.py --grid samples.png   # also a grid
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

ENCODER = HERE / "encoder.onnx"
DECODER = HERE / "decoder.onnx"
CLASSIFIER = HERE.parent / "digits-classifier" / "evaluate.py"
LATENT = 16
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


def encode(images: np.ndarray, model: str | Path = ENCODER) -> tuple[np.ndarray, np.ndarray]:
    mean, logvar = _session(str(model)).run(["mean", "logvar"], {"image": images})
    return mean, logvar


def decode(z: np.ndarray, model: str | Path = DECODER) -> np.ndarray:
    (image,) = _session(str(model)).run(["image"], {"z": np.asarray(z, np.float32)})
    return image


def prior_samples(n: int, seed: int = 0, model: str | Path = DECODER) -> np.ndarray:
    """``n`` decoded images [n,1,16,16] in [-1,1] of z = default_rng(seed) standard normals."""
    return decode(np.random.default_rng(seed).standard_normal((n, LATENT)), model)


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
    parser.add_argument("--encoder", type=Path, default=ENCODER)
    parser.add_argument("--decoder", type=Path, default=DECODER)
    parser.add_argument("-n", type=int, default=1000, help="prior samples (%(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, default=None,
                        help="also write a grid: 100 prior samples")
    args = parser.parse_args()
    classify = classifier()

    images, labels = digits.load_digits16()
    _, test_idx = digits.split(len(images))
    x_test, y_test = digits.to_tensor(images[test_idx]), labels[test_idx]
    mean, _ = encode(x_test, args.encoder)
    recon = decode(mean, args.decoder)
    mse = float(np.mean(np.square(recon - x_test)))
    recon_acc = float((classify(recon).argmax(1) == y_test).mean())
    orig_acc = float((classify(x_test).argmax(1) == y_test).mean())
    print(f"digits-vae: test reconstruction MSE {mse:.4f} (per pixel, [-1,1] scale); "
          f"{recon_acc:.3f} of {len(y_test)} reconstructions classified as the true digit "
          f"(originals: {orig_acc:.3f})")

    samples = prior_samples(args.n, args.seed, args.decoder)
    probs = classify(samples)
    top, pred = probs.max(1), probs.argmax(1)
    print(f"digits-vae: {np.mean(top >= CONFIDENT):.3f} of {args.n} prior samples classified "
          f"with probability >= {CONFIDENT} (mean top probability {top.mean():.3f})")
    print("  predicted digit 0..9 (all):      ",
          " ".join(f"{v:4d}" for v in np.bincount(pred, minlength=10)))
    print("  predicted digit 0..9 (confident):",
          " ".join(f"{v:4d}" for v in np.bincount(pred[top >= CONFIDENT], minlength=10)))
    if args.grid:
        save_grid(samples[:100], args.grid)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
