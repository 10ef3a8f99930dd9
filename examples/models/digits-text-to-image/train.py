"""Train the digits text-to-image model with JAX and write it in optimum's Stable Diffusion ONNX
folder layout beside this script.

Two phases on the 16x16 digits of ``../digits.py`` (train split, 1,437 images), fixed seeds:

1. the VAE (``networks.py``): reconstruction MSE + a small KL term, then the latents' scaling
   factor (1 / their standard deviation, as SD's 0.18215 was chosen);
2. the text encoder and the UNet together, on the VAE's latent samples times that factor, with
   DDPM's epsilon objective on SD's schedule (scaled_linear betas 0.00085..0.012, 1,000 steps);
   each image is prompted with a random phrasing of its digit (``prompts.py``), replaced by the
   empty prompt 10% of the time for classifier-free guidance.

The tokenizer is trained first (``prompts.train_tokenizer``). ``export.py`` then writes
model_index.json, tokenizer/, text_encoder/, unet/, scheduler/ and vae_decoder/ (with their
config.json files) and checks each ONNX graph against the JAX network (max abs diff < 1e-4; the
script exits non-zero otherwise).

    .pipe/venv/bin/python3 examples/models/digits-text-to-image/train.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import digits  # noqa: E402  (examples/models/digits.py)
import networks as nets  # noqa: E402
import prompts  # noqa: E402

SEED = 0
VAE_STEPS = 1500
VAE_KL = 1e-3
DIFFUSION_STEPS = 3000
BATCH = 128
LEARNING_RATE = 1e-3
EMA_DECAY = 0.995
PROMPT_DROPOUT = 0.1
NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012


def alphas_cumprod() -> np.ndarray:
    """SD's scaled_linear schedule (diffusers: linspace of the square roots, squared, float32)."""
    betas = np.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=np.float32) ** 2
    return np.cumprod(1.0 - betas.astype(np.float64))


def optimizer(steps: int, lr: float):
    """AdamW with warm-up and cosine decay to 5% of ``lr``, gradients clipped to norm 1."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10), steps, lr * 0.05)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))


def log(phase: str, i: int, steps: int, losses: list, start: float) -> None:
    """Prints the mean loss of the last 250 steps after the first, every 250th and the last step."""
    if (i + 1) % 250 == 0 or i == 0 or i + 1 == steps:
        loss = float(jnp.mean(jnp.stack(losses[-250:])))
        seconds = time.perf_counter() - start
        print(f"{phase} step {i + 1:5d}/{steps}  loss {loss:.4f}  {seconds:.0f} s", flush=True)


def train_vae(x: np.ndarray, key, steps: int = VAE_STEPS):
    """The VAE's params after ``steps`` of Adam on batches of the images ``x`` [N, 1, 16, 16]."""
    key, init_key = jax.random.split(key)
    params = nets.init_vae(init_key)
    opt = optimizer(steps, 2e-3)
    state = opt.init(params)
    data = jnp.asarray(x)

    @jax.jit
    def step(params, state, key):
        k_idx, k_eps = jax.random.split(key)
        batch = data[jax.random.randint(k_idx, (BATCH,), 0, data.shape[0])]

        def loss_fn(p):
            mean, logvar = nets.vae_encode(p, batch)
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(k_eps, mean.shape)
            recon = jnp.mean(jnp.square(nets.vae_decode(p, z) - batch))
            kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
            return recon + VAE_KL * kl

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses, start = [], time.perf_counter()
    for i in range(steps):
        key, sub = jax.random.split(key)
        params, state, loss = step(params, state, sub)
        losses.append(loss)
        log("vae", i, steps, losses, start)
    return params


def train_diffusion(
    mean: np.ndarray,
    std: np.ndarray,
    labels: np.ndarray,
    scale: float,
    vocab_size: int,
    ids: np.ndarray,
    empty: np.ndarray,
    key,
    steps: int = DIFFUSION_STEPS,
):
    """EMA params of the text encoder and UNet: latent samples ``(mean + std * n) * scale`` of
    each image, prompted with ``ids[label, phrasing]`` [10, P, 77] or ``empty`` [77]."""
    key, k_text, k_unet = jax.random.split(key, 3)
    params = {"text": nets.init_text(k_text, vocab_size), "unet": nets.init_unet(k_unet)}
    ema = params
    opt = optimizer(steps, LEARNING_RATE)
    state = opt.init(params)
    ac = alphas_cumprod()
    sqrt_ac, sqrt_1m = (
        jnp.asarray(np.sqrt(ac), jnp.float32),
        jnp.asarray(np.sqrt(1 - ac), jnp.float32),
    )
    mean, std, labels = jnp.asarray(mean), jnp.asarray(std), jnp.asarray(labels)
    ids, empty = jnp.asarray(ids), jnp.asarray(empty)

    @jax.jit
    def step(params, ema, state, key, i):
        k_idx, k_z, k_t, k_eps, k_phrase, k_drop = jax.random.split(key, 6)
        idx = jax.random.randint(k_idx, (BATCH,), 0, mean.shape[0])
        z0 = (mean[idx] + std[idx] * jax.random.normal(k_z, mean[idx].shape)) * scale
        t = jax.random.randint(k_t, (BATCH,), 0, NUM_TRAIN_TIMESTEPS)
        eps = jax.random.normal(k_eps, z0.shape)
        zt = sqrt_ac[t][:, None, None, None] * z0 + sqrt_1m[t][:, None, None, None] * eps
        phrase = jax.random.randint(k_phrase, (BATCH,), 0, ids.shape[1])
        tokens = ids[labels[idx], phrase]
        drop = jax.random.uniform(k_drop, (BATCH,)) < PROMPT_DROPOUT
        tokens = jnp.where(drop[:, None], empty[None, :], tokens)

        def loss_fn(p):
            text = nets.text_encode(p["text"], tokens)
            return jnp.mean(jnp.square(nets.unet(p["unet"], zt, t, text) - eps))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        decay = jnp.minimum(EMA_DECAY, (1.0 + i) / (10.0 + i))
        ema = jax.tree.map(lambda e, q: decay * e + (1.0 - decay) * q, ema, params)
        return params, ema, state, loss

    losses, start = [], time.perf_counter()
    for i in range(steps):
        key, sub = jax.random.split(key)
        params, ema, state, loss = step(params, ema, state, sub, jnp.float32(i))
        losses.append(loss)
        log("diffusion", i, steps, losses, start)
    return ema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="the model folder (%(default)s)")
    parser.add_argument("--vae-steps", type=int, default=VAE_STEPS)
    parser.add_argument("--steps", type=int, default=DIFFUSION_STEPS, help="diffusion steps")
    parser.add_argument("--params", type=Path, help="also save the trained JAX params (.npz)")
    args = parser.parse_args()

    images, labels = digits.load_digits16()
    train_idx, _ = digits.split(len(images))
    x, y = digits.to_tensor(images[train_idx]), labels[train_idx]
    prompts.train_tokenizer(args.out / "tokenizer")
    tok = prompts.Encoder(args.out / "tokenizer")
    ids = np.stack([tok.batch(prompts.phrases(d)) for d in range(10)])
    empty = np.array(tok.encode(""), np.int32)

    start = time.perf_counter()
    key_vae, key_diff = jax.random.split(jax.random.PRNGKey(SEED))
    vae = jax.block_until_ready(train_vae(x, key_vae, args.vae_steps))
    mean, logvar = jax.jit(nets.vae_encode)(vae, jnp.asarray(x))
    mean, std = np.asarray(mean), np.asarray(jnp.exp(0.5 * logvar))
    spread = mean + std * np.random.default_rng(SEED).standard_normal(mean.shape)
    scale = float(np.float32(1.0 / spread.std()))
    print(f"vae: latent std {spread.std():.4f}, scaling_factor {scale:.5f}")
    model = jax.block_until_ready(
        train_diffusion(mean, std, y, scale, tok.vocab_size, ids, empty, key_diff, args.steps)
    )
    seconds = time.perf_counter() - start
    print(
        f"parameters: vae {nets.count(vae):,}, text encoder {nets.count(model['text']):,}, "
        f"unet {nets.count(model['unet']):,}"
    )
    print(
        f"training time: {seconds:.1f} s ({args.vae_steps} VAE steps, {args.steps} diffusion "
        f"steps of {BATCH}, {jax.device_count()} {jax.default_backend()} device)"
    )
    if args.params:
        np.savez(
            args.params,
            scaling_factor=scale,
            **{f"vae/{k}": np.asarray(v) for k, v in vae.items()},
            **{f"{part}/{k}": np.asarray(v) for part in model for k, v in model[part].items()},
        )

    import export  # noqa: E402  (export.py beside this script)

    worst = export.write_folder(args.out, vae, model["text"], model["unet"], scale)
    print(f"onnxruntime vs jax: max abs diff {worst:.2e}")
    if not worst < export.TOLERANCE:
        sys.exit(f"error: the ONNX export differs from the JAX networks by {worst}")


if __name__ == "__main__":
    main()
