"""Sample digits from the diffusion model with a numpy DDIM sampler and classifier-free guidance.

The sampler follows diffusers' ``DDIMScheduler`` step by step, with its defaults except
``clip_sample`` (pipe's ``model.diffuse`` defaults it to false; diffusers to true):
1,000 training steps, linear betas 0.0001..0.02, ``eta = 0``, ``timestep_spacing = "leading"``,
``steps_offset = 0``, ``set_alpha_to_one = true``, ``prediction_type = "epsilon"``. With
``guidance_scale > 1`` each step runs the model once on the doubled batch (the null class 10
first, then the labels) and uses ``eps = eps_uncond + scale * (eps_cond - eps_uncond)``.

    .venv/bin/python examples/models/digits-diffusion/sample.py --labels 0 1 2 3 --guidance 3
    .venv/bin/python examples/models/digits-diffusion/sample.py --grid out.png   # 10 per digit

As a module: ``ddim_sample(labels, ...)`` returns float32 ``[N, 1, 16, 16]`` in [-1, 1] (clipped).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import digits  # noqa: E402  (examples/models/digits.py)

MODEL = HERE / "model.onnx"
NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.0001, 0.02
NULL_CLASS = 10


@functools.lru_cache(maxsize=None)
def _session(model: str, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def alphas_cumprod() -> np.ndarray:
    """diffusers' linear schedule: float32 linspace of betas, cumulative product of 1 - beta."""
    betas = np.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=np.float32)
    return np.cumprod(1.0 - betas, dtype=np.float32)


def ddim_timesteps(steps: int, steps_offset: int = 0) -> np.ndarray:
    """``DDIMScheduler.set_timesteps`` with ``timestep_spacing = "leading"``: 960, 920, ..., 0."""
    step_ratio = NUM_TRAIN_TIMESTEPS // steps
    return (np.arange(0, steps) * step_ratio).round()[::-1].astype(np.int64) + steps_offset


def ddim_step(eps: np.ndarray, t: int, x: np.ndarray, steps: int, ac: np.ndarray,
              eta: float = 0.0, clip_sample: bool = False, noise: np.ndarray | None = None,
              set_alpha_to_one: bool = True) -> np.ndarray:
    """One ``DDIMScheduler.step`` (epsilon prediction) from timestep ``t`` to ``t - 1000//steps``."""
    prev_t = t - NUM_TRAIN_TIMESTEPS // steps
    alpha_t = ac[t]
    alpha_prev = ac[prev_t] if prev_t >= 0 else (np.float32(1.0) if set_alpha_to_one else ac[0])
    beta_t = 1.0 - alpha_t
    x0 = (x - np.sqrt(beta_t) * eps) / np.sqrt(alpha_t)
    if clip_sample:
        x0 = np.clip(x0, -1.0, 1.0)
    variance = (1.0 - alpha_prev) / (1.0 - alpha_t) * (1.0 - alpha_t / alpha_prev)
    std = eta * np.sqrt(variance)
    direction = np.sqrt(1.0 - alpha_prev - std**2) * eps
    prev = np.sqrt(alpha_prev) * x0 + direction
    if eta > 0:
        prev = prev + std * noise
    return prev.astype(np.float32)


def ddim_sample(labels, steps: int = 25, guidance_scale: float = 1.0, seed: int = 0,
                eta: float = 0.0, clip_sample: bool = False, model: str | Path = MODEL,
                threads: int = 0) -> np.ndarray:
    """Samples float32 ``[N, 1, 16, 16]``, clipped to [-1, 1], one per label in ``labels``.

    The starting noise is ``numpy.random.default_rng(seed).standard_normal`` (init_noise_sigma
    is 1 for DDIM); with ``eta > 0`` the step noise comes from the same generator.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, digits.SIZE, digits.SIZE)).astype(np.float32)
    session = _session(str(model), threads)
    ac = alphas_cumprod()
    guided = guidance_scale > 1.0
    cond = np.concatenate([np.full(n, NULL_CLASS, np.int64), labels]) if guided else labels
    for t in ddim_timesteps(steps):
        batch = np.concatenate([x, x]) if guided else x
        timestep = np.full(len(batch), t, np.float32)
        (eps,) = session.run(["noise_pred"], {"sample": batch, "timestep": timestep,
                                              "class_labels": cond})
        if guided:
            uncond, conditional = eps[:n], eps[n:]
            eps = uncond + np.float32(guidance_scale) * (conditional - uncond)
        noise = rng.standard_normal(x.shape).astype(np.float32) if eta > 0 else None
        x = ddim_step(eps, int(t), x, steps, ac, eta=eta, clip_sample=clip_sample, noise=noise)
    return np.clip(x, -1.0, 1.0)


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


def write_grid(model: str | Path, path: Path, guidance_scale: float = 3.0, seed: int = 0) -> None:
    """samples.png: row k holds 10 samples of digit k (DDIM 25 steps)."""
    labels = np.repeat(np.arange(10), 10)
    save_grid(ddim_sample(labels, 25, guidance_scale, seed, model=model), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--labels", type=int, nargs="*", default=None,
                        help="digits to draw (default: 0..9, 4 each)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--clip-sample", action="store_true")
    parser.add_argument("--grid", type=Path, default=None,
                        help="write a PNG grid (default labels then: 10 of each digit)")
    args = parser.parse_args()

    labels = args.labels
    if labels is None:
        labels = list(np.repeat(np.arange(10), 10 if args.grid else 4))
    start = time.perf_counter()
    x = ddim_sample(labels, args.steps, args.guidance, args.seed, args.eta, args.clip_sample,
                    args.model)
    seconds = time.perf_counter() - start
    print(f"{len(labels)} samples, {args.steps} DDIM steps, guidance {args.guidance}: "
          f"{seconds:.2f} s")
    if args.grid:
        save_grid(x, args.grid)
        print(f"wrote {args.grid}")
    else:
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "digits_classifier_evaluate", HERE.parent / "digits-classifier" / "evaluate.py")
        classifier = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(classifier)
        pred = classifier.classify(x).argmax(1)
        print("asked:     ", " ".join(str(v) for v in labels))
        print("classified:", " ".join(str(v) for v in pred))


if __name__ == "__main__":
    main()
