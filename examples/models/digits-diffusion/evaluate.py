"""Judge the digits diffusion model with the digit classifier.

For each digit 0..9 it draws 100 samples with 25 DDIM steps (``sample.py``, eta 0, seed 0),
once without guidance (guidance_scale 1) and once with guidance_scale 3, classifies them with
``examples/models/digits-classifier`` and prints the share classified as the intended digit:

    .venv/bin/python examples/models/digits-diffusion/evaluate.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import sample  # noqa: E402  (sample.py beside this script)

CLASSIFIER = HERE.parent / "digits-classifier" / "evaluate.py"


def classifier():
    """``classify(tensors) -> probs`` of digits-classifier/evaluate.py (loaded under its own name)."""
    spec = importlib.util.spec_from_file_location("digits_classifier_evaluate", CLASSIFIER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.classify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=sample.MODEL)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--clip-sample", action="store_true",
                        help="clip the predicted x0 to [-1, 1] (diffusers' DDIM default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    labels = np.repeat(np.arange(10), args.per_class)
    classify = classifier()
    for scale in args.guidance:
        start = time.perf_counter()
        x = sample.ddim_sample(labels, args.steps, scale, args.seed,
                               clip_sample=args.clip_sample, model=args.model)
        seconds = time.perf_counter() - start
        probs = classify(x)
        pred = probs.argmax(1)
        hit = pred == labels
        per_class = " ".join(f"{hit[labels == k].mean():.2f}" for k in range(10))
        print(f"digits-diffusion: guidance_scale {scale:g}: {hit.mean():.3f} of {len(labels)} "
              f"samples classified as the intended digit (mean top probability "
              f"{probs.max(1).mean():.3f}; DDIM {args.steps} steps, {seconds:.1f} s)")
        print(f"  per digit 0..9: {per_class}")


if __name__ == "__main__":
    main()
