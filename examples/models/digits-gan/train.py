"""Train the digits GAN with JAX and export its generator and discriminator to ONNX.

An MLP GAN on the 16x16 digits of ``examples/models/digits.py`` (train split, 1,437 images),
non-saturating loss with an R1 penalty on the discriminator, Adam, and an exponential moving
average (EMA) of the generator's weights, which is what ``generator.onnx`` holds:

    generator.onnx:     z [batch,32] -> Gemm 256 -> LeakyRelu -> Gemm 512 -> LeakyRelu
                                     -> Gemm 256 -> Tanh -> Reshape = image [batch,1,16,16]
    discriminator.onnx: image [batch,1,16,16] -> Flatten -> Gemm 512 -> LeakyRelu
                                     -> Gemm 256 -> LeakyRelu -> Gemm 1 = logit [batch,1]

The script checks that onnxruntime's outputs equal the JAX model's (max abs diff < 1e-4; it
exits non-zero otherwise) and writes ``samples.png``. Seeds are fixed.

    .venv/bin/python examples/models/digits-gan/train.py
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
STEPS = 8000
BATCH = 128
LEARNING_RATE = 2e-4
BETA1, BETA2 = 0.5, 0.99
R1_GAMMA = 1.0  # weight of the R1 gradient penalty on real images (gamma / 2 * |grad|^2)
EMA_DECAY = 0.999
PARITY_TOLERANCE = 1e-4

Z_DIM = 32
G_HIDDEN = (256, 512)
D_HIDDEN = (512, 256)
PIXELS = digits.SIZE * digits.SIZE
SLOPE = 0.2  # LeakyRelu

OPSET = 17
IR_VERSION = 8

HP = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Model (dense weights [in, out], as ONNX Gemm without transB)
# ---------------------------------------------------------------------------------------------


def init_mlp(key: jax.Array, prefix: str, sizes: list[int]) -> dict[str, jax.Array]:
    p = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        p[f"{prefix}{i}.w"] = jax.random.normal(keys[i], (n_in, n_out)) * np.sqrt(2.0 / n_in)
        p[f"{prefix}{i}.b"] = jnp.zeros((n_out,), jnp.float32)
    return p


def mlp(p: dict[str, jax.Array], prefix: str, x: jax.Array, layers: int) -> jax.Array:
    for i in range(layers):
        x = jnp.dot(x, p[f"{prefix}{i}.w"], precision=HP) + p[f"{prefix}{i}.b"]
        if i < layers - 1:
            x = jax.nn.leaky_relu(x, SLOPE)
    return x


def generator(p, z):
    """Images [N,1,16,16] in [-1,1] of latents [N,32]."""
    x = jnp.tanh(mlp(p, "g", z, len(G_HIDDEN) + 1))
    return x.reshape(-1, 1, digits.SIZE, digits.SIZE)


def discriminator(p, image):
    """Logits [N,1] (real > 0) of images [N,1,16,16]."""
    return mlp(p, "d", image.reshape(image.shape[0], -1), len(D_HIDDEN) + 1)


def count_params(params) -> int:
    return sum(int(np.prod(v.shape)) for v in params.values())


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train(x_train: np.ndarray, steps: int):
    key = jax.random.PRNGKey(SEED)
    key, kg, kd = jax.random.split(key, 3)
    g_params = init_mlp(kg, "g", [Z_DIM, *G_HIDDEN, PIXELS])
    d_params = init_mlp(kd, "d", [PIXELS, *D_HIDDEN, 1])
    g_ema = g_params
    g_opt = optax.adam(LEARNING_RATE, BETA1, BETA2)
    d_opt = optax.adam(LEARNING_RATE, BETA1, BETA2)
    g_state, d_state = g_opt.init(g_params), d_opt.init(d_params)
    x_all = jnp.asarray(x_train)

    @jax.jit
    def step(g_params, d_params, g_ema, g_state, d_state, key, i):
        k_idx, k_z1, k_z2 = jax.random.split(key, 3)
        real = x_all[jax.random.randint(k_idx, (BATCH,), 0, x_all.shape[0])]

        # Discriminator: softplus(-D(real)) + softplus(D(fake)) + gamma/2 * |dD(real)/dx|^2.
        fake = generator(g_params, jax.random.normal(k_z1, (BATCH, Z_DIM)))

        def d_loss_fn(d):
            real_logit = discriminator(d, real)
            fake_logit = discriminator(d, fake)
            grad = jax.grad(lambda x: discriminator(d, x).sum())(real)
            r1 = jnp.sum(jnp.square(grad), axis=(1, 2, 3)).mean()
            loss = jax.nn.softplus(-real_logit).mean() + jax.nn.softplus(fake_logit).mean()
            return loss + 0.5 * R1_GAMMA * r1, loss

        (_, d_loss), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params)
        updates, d_state = d_opt.update(d_grads, d_state, d_params)
        d_params = optax.apply_updates(d_params, updates)

        # Generator: non-saturating loss softplus(-D(G(z))).
        z = jax.random.normal(k_z2, (BATCH, Z_DIM))

        def g_loss_fn(g):
            return jax.nn.softplus(-discriminator(d_params, generator(g, z))).mean()

        g_loss, g_grads = jax.value_and_grad(g_loss_fn)(g_params)
        updates, g_state = g_opt.update(g_grads, g_state, g_params)
        g_params = optax.apply_updates(g_params, updates)
        decay = jnp.minimum(EMA_DECAY, (1.0 + i) / (10.0 + i))
        g_ema = jax.tree.map(lambda e, q: decay * e + (1.0 - decay) * q, g_ema, g_params)
        return g_params, d_params, g_ema, g_state, d_state, d_loss, g_loss

    start = time.perf_counter()
    history = []
    for i in range(steps):
        key, sub = jax.random.split(key)
        g_params, d_params, g_ema, g_state, d_state, d_loss, g_loss = step(
            g_params, d_params, g_ema, g_state, d_state, sub, jnp.float32(i))
        history.append((d_loss, g_loss))
        if (i + 1) % 1000 == 0 or i == 0:
            recent = np.asarray(jnp.stack([jnp.stack(h) for h in history[-1000:]])).mean(0)
            print(f"step {i + 1:5d}/{steps}  d_loss {recent[0]:.3f}  g_loss {recent[1]:.3f}"
                  f"  {time.perf_counter() - start:.0f} s", flush=True)
    return g_ema, d_params


# ---------------------------------------------------------------------------------------------
# ONNX export
# ---------------------------------------------------------------------------------------------


def mlp_nodes(prefix: str, x: str, layers: int, out: str) -> list[onnx.NodeProto]:
    nodes = []
    for i in range(layers):
        y = out if i == layers - 1 else f"{prefix}{i}"
        nodes.append(helper.make_node("Gemm", [x, f"{prefix}{i}.w", f"{prefix}{i}.b"], [y]))
        if i < layers - 1:
            nodes.append(helper.make_node("LeakyRelu", [y], [y + ".act"], alpha=SLOPE))
            x = y + ".act"
    return nodes


def save_model(nodes, name, inputs, outputs, params, path: Path, doc: str, props: dict,
               extra: dict[str, np.ndarray] | None = None):
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in params.items()]
    inits += [numpy_helper.from_array(v, k) for k, v in (extra or {}).items()]
    graph = helper.make_graph(nodes, name, inputs=inputs, outputs=outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pipe examples/models/digits-gan/train.py",
                              doc_string=doc)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_onnx(g_params, d_params, folder: Path) -> tuple[Path, Path]:
    side = digits.SIZE
    g_layers, d_layers = len(G_HIDDEN) + 1, len(D_HIDDEN) + 1
    g_nodes = mlp_nodes("g", "z", g_layers, "pixels") + [
        helper.make_node("Tanh", ["pixels"], ["flat_image"]),
        helper.make_node("Reshape", ["flat_image", "image_shape"], ["image"]),
    ]
    g_path = folder / "generator.onnx"
    save_model(
        g_nodes, "digits_gan_generator",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", Z_DIM])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, side, side])],
        g_params, g_path,
        "GAN generator of 16x16 grayscale digits. Input z: float32 [batch,32], standard normal. "
        "Output image: float32 [batch,1,16,16] in [-1,1] (tanh; -1 background, +1 ink; "
        "pixel_0_255 = (value + 1) * 255/2).",
        {"latent_distribution": "normal", "latent_shape": str(Z_DIM), "output_range": "-1,1"},
        {"image_shape": np.array([-1, 1, side, side], np.int64)},
    )
    d_nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1)]
    d_nodes += mlp_nodes("d", "flat", d_layers, "logit")
    d_path = folder / "discriminator.onnx"
    save_model(
        d_nodes, "digits_gan_discriminator",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, side, side])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1])],
        d_params, d_path,
        "GAN discriminator for 16x16 grayscale digits in [-1,1]. Output logit: float32 "
        "[batch,1], > 0 means 'looks real' (sigmoid(logit) = P(real) as trained).",
        {"input_range": "-1,1"},
    )
    return g_path, d_path


def parity(g_params, d_params, g_path: Path, d_path: Path, x_test: np.ndarray) -> float:
    rng = np.random.default_rng(1)
    g_sess = ort.InferenceSession(str(g_path), providers=["CPUExecutionProvider"])
    d_sess = ort.InferenceSession(str(d_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in (1, 5, 256):
        z = rng.standard_normal((n, Z_DIM)).astype(np.float32)
        ref = np.asarray(jax.jit(generator)(g_params, z))
        (out,) = g_sess.run(["image"], {"z": z})
        worst = max(worst, float(np.abs(out - ref).max()))
    for images in (x_test, out):
        ref = np.asarray(jax.jit(discriminator)(d_params, images))
        (logit,) = d_sess.run(["logit"], {"image": images})
        worst = max(worst, float(np.abs(logit - ref).max()))
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
    g_params, d_params = jax.block_until_ready(train(x_train, args.steps))
    train_seconds = time.perf_counter() - start
    print(f"parameters: generator {count_params(g_params):,}, "
          f"discriminator {count_params(d_params):,}")
    print(f"training time: {train_seconds:.1f} s ({args.steps} steps of {BATCH}, "
          f"{jax.device_count()} {jax.default_backend()} device)")

    args.out.mkdir(parents=True, exist_ok=True)
    g_path, d_path = export_onnx(g_params, d_params, args.out)
    for path in (g_path, d_path):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    diff = parity(g_params, d_params, g_path, d_path, x_test)
    print(f"onnxruntime vs jax: max abs diff {diff:.2e}")
    if not diff < PARITY_TOLERANCE:
        sys.exit(f"error: ONNX export differs from the JAX model by {diff} >= {PARITY_TOLERANCE}")

    sys.path.insert(0, str(HERE))
    import evaluate  # noqa: E402  (evaluate.py beside this script)

    grid = args.out / "samples.png"
    evaluate.save_grid(evaluate.generate(100, seed=0, model=g_path), grid)
    print(f"wrote {grid}")


if __name__ == "__main__":
    main()
