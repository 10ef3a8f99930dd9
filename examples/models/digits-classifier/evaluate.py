"""Evaluate the digits classifier on a folder of digit PNGs, and classify tensors for other scripts.

As a script, it reads the PNGs listed in ``labels.csv`` (``id,label``) of a folder (default
``examples/digits/data``, the test split written by ``examples/digits/make_pngs.py``), converts
each through PIL exactly as ``examples/models/digits.py`` defines (16x16 grayscale,
``value = pixel * 2/255 - 1``), runs ``model.onnx`` with onnxruntime and prints one line:

    .venv/bin/python examples/models/digits-classifier/evaluate.py
    digits-classifier: test accuracy 0.992 on 360 images

As a module, ``classify(tensors)`` gives the class probabilities of float32 tensors
``[N, 1, 16, 16]`` in [-1, 1] (for example generated digits), and ``load_pngs(paths)`` turns
PNG files into such tensors:

    sys.path.insert(0, "examples/models/digits-classifier")
    from evaluate import classify
    probs = classify(samples)          # [N, 10]; probs.argmax(1) is the predicted digit
"""

from __future__ import annotations

import argparse
import csv
import functools
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import digits  # noqa: E402  (examples/models/digits.py)

MODEL = HERE / "model.onnx"
DATA = HERE.parents[1] / "digits" / "data"


@functools.lru_cache(maxsize=None)
def _session(model: str) -> ort.InferenceSession:
    """One onnxruntime session per model file, created on first use."""
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def classify(tensors: np.ndarray, model: str | Path = MODEL) -> np.ndarray:
    """Class probabilities float32 ``[N, 10]`` of tensors ``[N, 1, 16, 16]`` in [-1, 1].

    Column ``k`` is the probability of digit ``k``. ``tensors`` may be any float array of that
    shape (it is cast to float32); a single image ``[1, 16, 16]`` or ``[16, 16]`` is accepted too.
    """
    x = np.asarray(tensors, dtype=np.float32)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.shape[1:] != (1, digits.SIZE, digits.SIZE):
        raise ValueError(f"expected tensors [N, 1, 16, 16], got {list(np.shape(tensors))}")
    (probs,) = _session(str(model)).run(["probs"], {"pixels": x})
    return probs


def load_pngs(paths: list[Path]) -> np.ndarray:
    """PNG files to tensors ``[N, 1, 16, 16]``: grayscale, 16x16 (bilinear if another size)."""
    images = []
    for path in paths:
        with Image.open(path) as img:
            img = img.convert("L")
            if img.size != (digits.SIZE, digits.SIZE):
                img = img.resize((digits.SIZE, digits.SIZE), Image.BILINEAR)
            images.append(np.asarray(img, dtype=np.uint8))
    return digits.to_tensor(np.stack(images))


def read_labels(folder: Path) -> tuple[list[str], np.ndarray]:
    """The ``(ids, labels)`` of ``folder/labels.csv``, in file order."""
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [row["id"] for row in rows], np.array([int(row["label"]) for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA,
                        help="folder of PNGs with labels.csv (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=MODEL,
                        help="the ONNX classifier (default: %(default)s)")
    args = parser.parse_args()

    ids, labels = read_labels(args.data)
    probs = classify(load_pngs([args.data / name for name in ids]), args.model)
    accuracy = float((probs.argmax(1) == labels).mean())
    print(f"digits-classifier: test accuracy {accuracy:.3f} on {len(ids)} images")


if __name__ == "__main__":
    main()
