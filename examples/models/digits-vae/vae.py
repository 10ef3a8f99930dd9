"""The digits VAE itself: model, negative-ELBO training loop, ONNX export and its parity check.

Shared by ``train.py`` (trains on the digits from ``../digits.py``) and
``examples/train-vae/trainer.py`` (trains inside a pipeline, on the rows pipe hands it), so both
make the same networks and the same ONNX graphs. It needs jax, optax, numpy, onnx and
onnxruntime only: no data loading here.

An MLP variational autoencoder with a 16-dimensional Gaussian latent for 16x16 images in
[-1, 1]. The loss is the negative ELBO with a Gaussian likelihood of fixed standard deviation
``SIGMA``: ``|x - decoder(z)|^2 / (2 SIGMA^2) + KL(q(z|x) || N(0, I))``, one reparameterised
sample per image. Exported by building the graphs with ``onnx.helper`` from the trained weights:

    encoder.onnx: image [batch,1,16,16] -> Flatten -> Gemm 512 -> LeakyRelu -> Gemm 256
                  -> LeakyRelu -> Gemm 16 = mean [batch,16]
                                -> Gemm 16 = logvar [batch,16]
    decoder.onnx: z [batch,16] -> Gemm 256 -> LeakyRelu -> Gemm 512 -> LeakyRelu
                  -> Gemm 256 -> Tanh -> Reshape = image [batch,1,16,16]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import optax
from onnx import TensorProto, helper, numpy_helper

SEED = 0
STEPS = 6000
BATCH = 128
LEARNING_RATE = 1e-3
SIGMA = 0.35  # likelihood standard deviation on [-1, 1] pixels
PARITY_TOLERANCE = 1e-4

SIZE = 16  # side of the square images (digits.SIZE)
LATENT = 16
ENC_HIDDEN = (512, 256)
DEC_HIDDEN = (256, 512)
PIXELS = SIZE * SIZE
SLOPE = 0.2  # LeakyRelu

OPSET = 17
IR_VERSION = 8
PRODUCER = "pipe examples/models/digits-vae/train.py"

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
    return h.reshape(-1, 1, SIZE, SIZE)


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

Log = Callable[[int, int, float, float, float, float], None]
"""``log(step, steps, loss, recon, kl, seconds)``: figures averaged over the last ``log_every``
steps, and the seconds since training started."""


def print_log(step: int, steps: int, loss: float, recon: float, kl: float, seconds: float) -> None:
    print(f"step {step:5d}/{steps}  -elbo {loss:.2f}  recon {recon:.2f}  kl {kl:.2f}"
          f"  {seconds:.0f} s", flush=True)


def train(x_train: np.ndarray, steps: int, *, key: jax.Array | None = None, batch: int = BATCH,
          learning_rate: float = LEARNING_RATE, log: Log = print_log, log_every: int = 1000):
    """Trained params after ``steps`` Adam steps on batches of ``batch`` images drawn with
    replacement from ``x_train`` [N,1,16,16] in [-1,1]; the learning rate decays from
    ``learning_rate`` to 5% of it (cosine). All randomness comes from ``key``
    (``PRNGKey(SEED)`` by default). ``log`` is called after the first step, every
    ``log_every`` steps and after the last."""
    key = jax.random.PRNGKey(SEED) if key is None else key
    key, init_key = jax.random.split(key)
    params = jax.jit(init_params)(init_key)
    lr = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05)
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)
    x_all = jnp.asarray(x_train)

    @jax.jit
    def step(params, opt_state, key):
        k_idx, k_eps = jax.random.split(key)
        x = x_all[jax.random.randint(k_idx, (batch,), 0, x_all.shape[0])]
        eps = jax.random.normal(k_eps, (batch, LATENT))

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
        if (i + 1) % log_every == 0 or i == 0 or i + 1 == steps:
            loss, recon, kl = np.asarray(jnp.stack(history[-log_every:])).mean(0)
            log(i + 1, steps, float(loss), float(recon), float(kl), time.perf_counter() - start)
    return params


# ---------------------------------------------------------------------------------------------
# ONNX export
# ---------------------------------------------------------------------------------------------


def gemm(name: str, x: str, out: str) -> onnx.NodeProto:
    return helper.make_node("Gemm", [x, name + ".w", name + ".b"], [out])


def save_model(nodes, name, inputs, outputs, params, path: Path, doc: str, props: dict,
               extra: dict[str, np.ndarray] | None = None, producer: str = PRODUCER):
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in params.items()]
    inits += [numpy_helper.from_array(v, k) for k, v in (extra or {}).items()]
    graph = helper.make_graph(nodes, name, inputs=inputs, outputs=outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name=producer, doc_string=doc)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_onnx(params, folder: Path, producer: str = PRODUCER) -> tuple[Path, Path]:
    """Writes ``folder/encoder.onnx`` and ``folder/decoder.onnx``; ``producer`` names the script
    in the models' ``producer_name``."""
    side = SIZE
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
        producer=producer,
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
        producer=producer,
    )
    return enc_path, dec_path


def parity(params, enc_path: Path, dec_path: Path, images: np.ndarray) -> float:
    """The largest absolute difference between onnxruntime's outputs and the JAX model's, on
    ``images`` (and on one of them alone), their posterior means and 256 random latents."""
    rng = np.random.default_rng(1)
    enc_sess = ort.InferenceSession(str(enc_path), providers=["CPUExecutionProvider"])
    dec_sess = ort.InferenceSession(str(dec_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (images, images[:1]):
        ref_mean, ref_logvar = (np.asarray(v) for v in jax.jit(encoder)(params, batch))
        mean, logvar = enc_sess.run(["mean", "logvar"], {"image": batch})
        worst = max(worst, float(np.abs(mean - ref_mean).max()),
                    float(np.abs(logvar - ref_logvar).max()))
    for z in (mean, rng.standard_normal((256, LATENT)).astype(np.float32)):
        ref = np.asarray(jax.jit(decoder)(params, z))
        (out,) = dec_sess.run(["image"], {"z": z})
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst
