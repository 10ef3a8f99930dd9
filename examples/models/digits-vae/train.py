"""Train the digits VAE with JAX and export its encoder and decoder to ONNX.

An MLP variational autoencoder with a 16-dimensional Gaussian latent for the 16x16 digits of
``examples/models/digits.py`` (train split, 1,437 images). The loss is the negative ELBO with a
Gaussian likelihood of fixed standard deviation ``SIGMA`` on the [-1, 1] pixels:
``|x - decoder(z)|^2 / (2 SIGMA^2) + KL(q(z|x) || N(0, I))``, one reparameterised sample per
image. Exported by building the graphs with ``onnx.helper`` from the trained weights:

    encoder.onnx: image [batch,1,16,16] -> Flatten -> Gemm 512 -> LeakyRelu -> Gemm 256
                  -> LeakyRelu -> Gemm 16 = mean [batch,16]
                                -> Gemm 16 = logvar [batch,16]
    decoder.onnx: z [batch,16] -> Gemm 256 -> LeakyRelu -> Gemm 512 -> LeakyRelu
                  -> Gemm 256 -> Tanh -> Reshape = image [batch,1,16,16]

The script checks that onnxruntime's outputs equal the JAX model's (max abs diff < 1e-4; it
exits non-zero otherwise) and writes ``samples.png`` (prior samples). Seeds are fixed.

    .venv/bin/python examples/models/digits-vae/train.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import optax
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import digits  # noqa: E402  (examples/models/digits.py)

SEED = 0
STEPS = 6000
BATCH = 128
LEARNING_RATE = 1e-3
SIGMA = 0.35  # likelihood standard deviation on [-1, 1] pixels
PARITY_TOLERANCE = 1e-4

LATENT = 16
ENC_HIDDEN = (512, 256)
DEC_HIDDEN = (256, 512)
PIXELS = digits.SIZE * digits.SIZE
SLOPE = 0.2  # LeakyRelu

OPSET = 17
IR_VERSION = 8

HP = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Model (dense weights [in, out], as ONNX Gemm without transB)
# ---------------------------------------------------------------------------------------------


def init_params(key: jax.Array) -> dict[str, jax.Array]:
    p = {}
    keys = iter(jax.random.split(key, 16))

    def dense(name, n_in, n_out, scale=np.sqrt(2.0)):
        p[name + ".w"] = jax.random.normal(next(keys), (n_in, n_out)) * (scale / np.sqrt(n_in))
        p[name + ".b"] = jnp.zeros((n_out,), jnp.float32)

    sizes = [PIXELS, *ENC_HIDDEN]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        dense(f"enc{i}", n_in, n_out)
    dense("enc_mean", ENC_HIDDEN[-1], LATENT, scale=1.0)
    dense("enc_logvar", ENC_HIDDEN[-1], LATENT, scale=0.1)
    sizes = [LATENT, *DEC_HIDDEN, PIXELS]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        dense(f"dec{i}", n_in, n_out, scale=np.sqrt(2.0) if i < len(DEC_HIDDEN) else 1.0)
    return p


def dense(p, name, x):
    return jnp.dot(x, p[name + ".w"], precision=HP) + p[name + ".b"]


def encoder(p, image):
    """(mean, logvar) [N,16] of images [N,1,16,16] in [-1,1]."""
    h = image.reshape(image.shape[0], -1)
    for i in range(len(ENC_HIDDEN)):
        h = jax.nn.leaky_relu(dense(p, f"enc{i}", h), SLOPE)
    return dense(p, "enc_mean", h), dense(p, "enc_logvar", h)


def decoder(p, z):
    """Images [N,1,16,16] in [-1,1] of latents [N,16]."""
    h = z
    for i in range(len(DEC_HIDDEN)):
        h = jax.nn.leaky_relu(dense(p, f"dec{i}", h), SLOPE)
    h = jnp.tanh(dense(p, f"dec{len(DEC_HIDDEN)}", h))
    return h.reshape(-1, 1, digits.SIZE, digits.SIZE)


def split_params(params):
    enc = {k: v for k, v in params.items() if k.startswith("enc")}
    dec = {k: v for k, v in params.items() if k.startswith("dec")}
    return enc, dec


def count_params(params) -> int:
    return sum(int(np.prod(v.shape)) for v in params.values())


def neg_elbo_terms(p, x, eps):
    """(reconstruction term, KL) per image, averaged over the batch."""
    mean, logvar = encoder(p, x)
    z = mean + jnp.exp(0.5 * logvar) * eps
    recon = jnp.sum(jnp.square(decoder(p, z) - x), axis=(1, 2, 3)) / (2.0 * SIGMA**2)
    kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=1)
    return recon.mean(), kl.mean()


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train(x_train: np.ndarray, steps: int):
    key = jax.random.PRNGKey(SEED)
    key, init_key = jax.random.split(key)
    params = jax.jit(init_params)(init_key)
    lr = optax.cosine_decay_schedule(LEARNING_RATE, steps, alpha=0.05)
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)
    x_all = jnp.asarray(x_train)

    @jax.jit
    def step(params, opt_state, key):
        k_idx, k_eps = jax.random.split(key)
        x = x_all[jax.random.randint(k_idx, (BATCH,), 0, x_all.shape[0])]
        eps = jax.random.normal(k_eps, (BATCH, LATENT))

        def loss_fn(p):
            recon, kl = neg_elbo_terms(p, x, eps)
            return recon + kl, (recon, kl)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, jnp.stack([loss, *aux])

    start = time.perf_counter()
    history = []
    for i in range(steps):
        key, sub = jax.random.split(key)
        params, opt_state, terms = step(params, opt_state, sub)
        history.append(terms)
        if (i + 1) % 1000 == 0 or i == 0:
            loss, recon, kl = np.asarray(jnp.stack(history[-1000:])).mean(0)
            print(f"step {i + 1:5d}/{steps}  -elbo {loss:.2f}  recon {recon:.2f}  kl {kl:.2f}"
                  f"  {time.perf_counter() - start:.0f} s", flush=True)
    return params


# ---------------------------------------------------------------------------------------------
# ONNX export
# ---------------------------------------------------------------------------------------------


def gemm(name: str, x: str, out: str) -> onnx.NodeProto:
    return helper.make_node("Gemm", [x, name + ".w", name + ".b"], [out])


def save_model(nodes, name, inputs, outputs, params, path: Path, doc: str, props: dict,
               extra: dict[str, np.ndarray] | None = None):
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in params.items()]
    inits += [numpy_helper.from_array(v, k) for k, v in (extra or {}).items()]
    graph = helper.make_graph(nodes, name, inputs=inputs, outputs=outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pipe examples/models/digits-vae/train.py",
                              doc_string=doc)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_onnx(params, folder: Path) -> tuple[Path, Path]:
    side = digits.SIZE
    enc, dec = split_params(params)

    nodes = [helper.make_node("Flatten", ["image"], ["h"], axis=1)]
    h = "h"
    for i in range(len(ENC_HIDDEN)):
        nodes += [gemm(f"enc{i}", h, f"enc{i}.out"),
                  helper.make_node("LeakyRelu", [f"enc{i}.out"], [f"enc{i}.act"], alpha=SLOPE)]
        h = f"enc{i}.act"
    nodes += [gemm("enc_mean", h, "mean"), gemm("enc_logvar", h, "logvar")]
    enc_path = folder / "encoder.onnx"
    save_model(
        nodes, "digits_vae_encoder",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, side, side])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", LATENT]),
         helper.make_tensor_value_info("logvar", TensorProto.FLOAT, ["batch", LATENT])],
        enc, enc_path,
        "VAE encoder for 16x16 grayscale digits. Input image: float32 [batch,1,16,16] in [-1,1] "
        "(value = pixel_0_255 * 2/255 - 1). Outputs: mean and logvar float32 [batch,16] of the "
        "posterior N(mean, exp(logvar)); z = mean + exp(0.5*logvar) * eps.",
        {"latent_shape": str(LATENT), "input_range": "-1,1"},
    )

    nodes = []
    h = "z"
    for i in range(len(DEC_HIDDEN)):
        nodes += [gemm(f"dec{i}", h, f"dec{i}.out"),
                  helper.make_node("LeakyRelu", [f"dec{i}.out"], [f"dec{i}.act"], alpha=SLOPE)]
        h = f"dec{i}.act"
    last = len(DEC_HIDDEN)
    nodes += [gemm(f"dec{last}", h, "pixels"),
              helper.make_node("Tanh", ["pixels"], ["flat_image"]),
              helper.make_node("Reshape", ["flat_image", "image_shape"], ["image"])]
    dec_path = folder / "decoder.onnx"
    save_model(
        nodes, "digits_vae_decoder",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", LATENT])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, side, side])],
        dec, dec_path,
        "VAE decoder of 16x16 grayscale digits. Input z: float32 [batch,16]; the prior is "
        "standard normal. Output image: float32 [batch,1,16,16] in [-1,1] (tanh; the mean of "
        "the likelihood; pixel_0_255 = (value + 1) * 255/2).",
        {"latent_distribution": "normal", "latent_shape": str(LATENT), "output_range": "-1,1"},
        {"image_shape": np.array([-1, 1, side, side], np.int64)},
    )
    return enc_path, dec_path


def parity(params, enc_path: Path, dec_path: Path, x_test: np.ndarray) -> float:
    rng = np.random.default_rng(1)
    enc_sess = ort.InferenceSession(str(enc_path), providers=["CPUExecutionProvider"])
    dec_sess = ort.InferenceSession(str(dec_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for images in (x_test, x_test[:1]):
        ref_mean, ref_logvar = (np.asarray(v) for v in jax.jit(encoder)(params, images))
        mean, logvar = enc_sess.run(["mean", "logvar"], {"image": images})
        worst = max(worst, float(np.abs(mean - ref_mean).max()),
                    float(np.abs(logvar - ref_logvar).max()))
    for z in (mean, rng.standard_normal((256, LATENT)).astype(np.float32)):
        ref = np.asarray(jax.jit(decoder)(params, z))
        (out,) = dec_sess.run(["image"], {"z": z})
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


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
