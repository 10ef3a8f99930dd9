"""The digits text-to-image model's quality figure: the share of generated digits that the
project's classifier (``../digits-classifier``) calls the prompted one (chance: 10%).

It runs the model folder with onnxruntime as Stable Diffusion's pipeline does: CLIP ids of the
prompt and of the empty prompt -> text encoder -> DDIM (diffusers' DDIMScheduler with the
folder's scheduler_config.json: leading spacing, steps_offset 1, set_alpha_to_one false, eta 0)
with classifier-free guidance ``uncond + w * (text - uncond)`` -> latents / scaling_factor ->
VAE decoder. Each digit is prompted ``COUNT`` times, cycling through the prompts of
``../../text-to-image-digits/prompts.csv``'s phrasings; the initial noise is from
``numpy.random.default_rng(0)``. The decoded [3, 32, 32] image is the 16x16 digit repeated
(nearest x2), so the classifier gets its first channel at every second pixel.

    .pipe/venv/bin/python3 examples/models/digits-text-to-image/evaluate.py \
        [--steps 20 4 --guidance 1 3 7.5]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import prompts  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "digits_classifier", HERE.parent / "digits-classifier" / "evaluate.py"
)
_classifier = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_classifier)
classify = _classifier.classify

COUNT = 50
PHRASES = ["a handwritten {w}", "the digit {n}", "the number {w}"]
"""The prompts evaluated per digit (``{w}`` the word, ``{n}`` the numeral), in turn."""


def ddim_timesteps(config: dict, steps: int) -> np.ndarray:
    """diffusers' DDIMScheduler.set_timesteps for "leading" and "trailing" spacing."""
    n = config["num_train_timesteps"]
    if config.get("timestep_spacing", "leading") == "trailing":
        return np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
    ratio = n // steps
    return (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + config.get(
        "steps_offset", 0
    )


def generate(
    folder: Path,
    texts: list[str],
    steps: int,
    guidance: float,
    seed: int = 0,
    spacing: str | None = None,
) -> np.ndarray:
    """Images float32 [N, 3, 32, 32] in about [-1, 1] for the prompts ``texts``."""
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    if spacing:
        config["timestep_spacing"] = spacing
    scale = json.loads((folder / "vae_decoder" / "config.json").read_text())["scaling_factor"]
    run = {
        sub: ort.InferenceSession(
            str(folder / sub / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        for sub in ("text_encoder", "unet", "vae_decoder")
    }
    tok = prompts.Encoder(folder / "tokenizer")
    n = len(texts)
    (cond,) = run["text_encoder"].run(["last_hidden_state"], {"input_ids": tok.batch(texts)})
    (uncond,) = run["text_encoder"].run(["last_hidden_state"], {"input_ids": tok.batch([""] * n)})
    both = np.concatenate([uncond, cond])
    betas = (
        np.linspace(
            config["beta_start"] ** 0.5,
            config["beta_end"] ** 0.5,
            config["num_train_timesteps"],
            dtype=np.float32,
        )
        ** 2
    )
    ac = np.cumprod(1.0 - betas.astype(np.float64))
    final = 1.0 if config.get("set_alpha_to_one", True) else ac[0]
    timesteps = ddim_timesteps(config, steps)
    ratio = config["num_train_timesteps"] // steps
    x = np.random.default_rng(seed).standard_normal((n, 4, 4, 4)).astype(np.float32)
    for t in timesteps:
        (eps,) = run["unet"].run(
            None,
            {
                "sample": np.concatenate([x, x]),
                "timestep": np.array([t], np.int64),
                "encoder_hidden_states": both,
            },
        )
        eps = (eps[:n] + guidance * (eps[n:] - eps[:n])).astype(np.float64)
        prev = t - ratio
        a_t, a_prev = ac[t], ac[prev] if prev >= 0 else final
        x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        x = (np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps).astype(np.float32)
    (images,) = run["vae_decoder"].run(None, {"latent_sample": x / np.float32(scale)})
    return images


def quality(
    folder: Path, steps: int, guidance: float, count: int = COUNT, spacing: str | None = None
) -> tuple[float, np.ndarray]:
    """(share classified as the prompted digit, per-digit shares [10])."""
    labels = np.repeat(np.arange(10), count)
    texts = [
        PHRASES[i % len(PHRASES)].format(w=prompts.WORDS[d], n=d) for i, d in enumerate(labels)
    ]
    images = generate(folder, texts, steps, guidance, spacing=spacing)
    digits = np.clip(images[:, :1, ::2, ::2], -1.0, 1.0)
    hit = classify(digits).argmax(1) == labels
    return float(hit.mean()), hit.reshape(10, count).mean(1)


def write_grid(
    folder: Path, path: Path, per_digit: int = 10, steps: int = 20, guidance: float = 3.0
) -> None:
    """A PNG with row k = ``per_digit`` images prompted with digit k (the phrasings in turn),
    each 32x32 x2 nearest, 2-pixel gray gaps."""
    from PIL import Image

    labels = np.repeat(np.arange(10), per_digit)
    texts = [
        PHRASES[i % len(PHRASES)].format(w=prompts.WORDS[d], n=d) for i, d in enumerate(labels)
    ]
    images = np.clip(generate(folder, texts, steps, guidance)[:, 0], -1.0, 1.0)
    cell, gap = 64, 2
    grid = np.full((10 * (cell + gap) + gap, per_digit * (cell + gap) + gap), 128, np.uint8)
    for i, image in enumerate(np.rint((images + 1.0) * 127.5).astype(np.uint8)):
        r, c = divmod(i, per_digit)
        y, x = gap + r * (cell + gap), gap + c * (cell + gap)
        grid[y : y + cell, x : x + cell] = image.repeat(2, 0).repeat(2, 1)
    Image.fromarray(grid).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=HERE)
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 4])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 7.5])
    parser.add_argument("--spacing", choices=["leading", "trailing"])
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--grid", type=Path, help="also write a PNG of 10 images per digit")
    args = parser.parse_args()
    if args.grid:
        write_grid(args.folder, args.grid)
    for steps in args.steps:
        for guidance in args.guidance:
            share, per = quality(args.folder, steps, guidance, args.count, args.spacing)
            print(
                f"digits-text-to-image: DDIM {steps} steps, guidance {guidance}: {share:.3f} of "
                f"{10 * args.count} classified as the prompted digit (chance 0.100)"
            )
            print("  per digit 0..9: " + " ".join(f"{v:.2f}" for v in per))


if __name__ == "__main__":
    main()
