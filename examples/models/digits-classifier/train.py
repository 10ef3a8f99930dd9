"""Train the digits classifier with JAX and export it to ONNX.

A small CNN on the 16x16 digits of ``examples/models/digits.py`` (train split, 1,437 images,
with random shifts of up to one pixel), exported to ``model.onnx`` beside this script by
building the graph with ``onnx.helper`` from the trained weights:

    pixels [batch,1,16,16] -> Conv 3x3 (16) -> Relu -> MaxPool 2
                           -> Conv 3x3 (32) -> Relu -> MaxPool 2
                           -> Flatten (512) -> Gemm (64) -> Relu -> Gemm (10) = logits
                                                                 -> Softmax    = probs

The script checks that onnxruntime's outputs equal the JAX model's on the test split
(max abs diff < 1e-4; it exits non-zero otherwise) and prints the test accuracy. Seeds are
fixed, so a rerun on the same machine gives the same weights.

    .venv/bin/python examples/models/digits-classifier/train.py
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
EPOCHS = 40
BATCH = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 1  # augmentation: random translation of up to this many pixels each way
PARITY_TOLERANCE = 1e-4

CONV1, CONV2, HIDDEN, CLASSES = 16, 32, 64, 10
FLAT = CONV2 * (digits.SIZE // 4) ** 2  # two 2x2 poolings: 16x16 -> 4x4

OPSET = 17
IR_VERSION = 8


# ---------------------------------------------------------------------------------------------
# Model (NCHW / OIHW, the layouts ONNX uses, so the weights export as they are)
# ---------------------------------------------------------------------------------------------


def init_params(key: jax.Array) -> dict[str, jax.Array]:
    """He-normal weights, zero biases. Dense weights are [in, out] (Gemm without transB)."""

    def he(key, shape, fan_in):
        return jax.random.normal(key, shape, jnp.float32) * jnp.sqrt(2.0 / fan_in)

    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "conv1.w": he(k1, (CONV1, 1, 3, 3), 1 * 9),
        "conv1.b": jnp.zeros((CONV1,), jnp.float32),
        "conv2.w": he(k2, (CONV2, CONV1, 3, 3), CONV1 * 9),
        "conv2.b": jnp.zeros((CONV2,), jnp.float32),
        "fc1.w": he(k3, (FLAT, HIDDEN), FLAT),
        "fc1.b": jnp.zeros((HIDDEN,), jnp.float32),
        "fc2.w": he(k4, (HIDDEN, CLASSES), HIDDEN),
        "fc2.b": jnp.zeros((CLASSES,), jnp.float32),
    }


def conv3x3(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """3x3 convolution, stride 1, zero padding 1 (ONNX Conv with pads [1,1,1,1])."""
    y = jax.lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding=((1, 1), (1, 1)),
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        precision=jax.lax.Precision.HIGHEST,
    )
    return y + b[None, :, None, None]


def maxpool2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2 (ONNX MaxPool kernel_shape [2,2], strides [2,2])."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def logits_fn(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """Logits [N, 10] of tensors [N, 1, 16, 16] in [-1, 1]."""
    hp = jax.lax.Precision.HIGHEST
    x = maxpool2(jax.nn.relu(conv3x3(x, params["conv1.w"], params["conv1.b"])))
    x = maxpool2(jax.nn.relu(conv3x3(x, params["conv2.w"], params["conv2.b"])))
    x = x.reshape(x.shape[0], -1)  # C-order flatten of [N, C, H, W], as ONNX Flatten
    x = jax.nn.relu(jnp.dot(x, params["fc1.w"], precision=hp) + params["fc1.b"])
    return jnp.dot(x, params["fc2.w"], precision=hp) + params["fc2.b"]


def count_params(params: dict[str, jax.Array]) -> int:
    return sum(int(np.prod(p.shape)) for p in params.values())


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def random_shift(key: jax.Array, x: jax.Array) -> jax.Array:
    """Translate each image by up to MAX_SHIFT pixels in x and y, filling with background (-1)."""
    n, _, h, w = x.shape
    padded = jnp.pad(
        x, ((0, 0), (0, 0), (MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT)), constant_values=-1.0
    )
    offsets = jax.random.randint(key, (n, 2), 0, 2 * MAX_SHIFT + 1)
    crop = lambda img, off: jax.lax.dynamic_slice(img, (0, off[0], off[1]), (1, h, w))  # noqa: E731
    return jax.vmap(crop)(padded, offsets)


def train(x_train: np.ndarray, y_train: np.ndarray) -> dict[str, jax.Array]:
    """AdamW with a cosine learning-rate schedule, cross-entropy loss, shifted mini-batches."""
    key = jax.random.PRNGKey(SEED)
    key, init_key = jax.random.split(key)
    params = init_params(init_key)

    steps_per_epoch = len(x_train) // BATCH  # the remainder of each shuffled epoch is dropped
    schedule = optax.cosine_decay_schedule(LEARNING_RATE, EPOCHS * steps_per_epoch)
    optimizer = optax.adamw(schedule, weight_decay=WEIGHT_DECAY)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key, x, y):
        x = random_shift(key, x)

        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, x), y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    x_all, y_all = jnp.asarray(x_train), jnp.asarray(y_train)
    for epoch in range(EPOCHS):
        key, perm_key = jax.random.split(key)
        perm = jax.random.permutation(perm_key, len(x_train))
        losses = []
        for i in range(steps_per_epoch):
            idx = perm[i * BATCH : (i + 1) * BATCH]
            key, shift_key = jax.random.split(key)
            params, opt_state, loss = step(params, opt_state, shift_key, x_all[idx], y_all[idx])
            losses.append(loss)
        if (epoch + 1) % 10 == 0 or epoch == 0:
            print(f"epoch {epoch + 1:3d}/{EPOCHS}  loss {float(jnp.mean(jnp.stack(losses))):.4f}")
    return params


# ---------------------------------------------------------------------------------------------
# ONNX export
# ---------------------------------------------------------------------------------------------


def export_onnx(params: dict[str, jax.Array], path: Path) -> onnx.ModelProto:
    """Build the ONNX graph from the trained weights and save it to ``path``."""
    weights = [
        numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)
        for name, value in params.items()
    ]
    nodes = [
        helper.make_node("Conv", ["pixels", "conv1.w", "conv1.b"], ["conv1"],
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "conv2.w", "conv2.b"], ["conv2"],
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("MaxPool", ["relu2"], ["pool2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool2"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc1.w", "fc1.b"], ["fc1"]),
        helper.make_node("Relu", ["fc1"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "fc2.w", "fc2.b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_classifier",
        inputs=[helper.make_tensor_value_info(
            "pixels", TensorProto.FLOAT, ["batch", 1, digits.SIZE, digits.SIZE])],
        outputs=[
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", CLASSES]),
        ],
        initializer=weights,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="pipe examples/models/digits-classifier/train.py",
        doc_string=(
            "Digit classifier (0-9) for 16x16 grayscale digits, ink bright on black. "
            "Input pixels: float32 [batch,1,16,16], value = pixel_0_255 * 2/255 - 1. "
            "Outputs: logits and probs (softmax), float32 [batch,10], class k = digit k."
        ),
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {
        "labels": ",".join(str(k) for k in range(CLASSES)),
        "preprocess": "mode=gray layout=chw size=16x16 scale=0.00784313725490196 mean=1 std=1",
    })
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "model.onnx",
                        help="where to write the ONNX model (default: %(default)s)")
    args = parser.parse_args()

    images, labels = digits.load_digits16()
    train_idx, test_idx = digits.split(len(images))
    x_train, y_train = digits.to_tensor(images[train_idx]), labels[train_idx]
    x_test, y_test = digits.to_tensor(images[test_idx]), labels[test_idx]
    print(f"train {len(x_train)} images, test {len(x_test)} images")

    start = time.perf_counter()
    params = train(x_train, y_train)
    params = jax.block_until_ready(params)
    train_seconds = time.perf_counter() - start
    print(f"parameters: {count_params(params):,}")
    print(f"training time: {train_seconds:.1f} s ({EPOCHS} epochs, "
          f"{jax.device_count()} {jax.default_backend()} device)")

    export_onnx(params, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")

    # The exported graph must compute what the JAX model computes.
    jax_logits = np.asarray(jax.jit(logits_fn)(params, jnp.asarray(x_test)))
    jax_probs = np.asarray(jax.nn.softmax(jax_logits, axis=-1))
    session = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    ort_logits, ort_probs = session.run(["logits", "probs"], {"pixels": x_test})
    diff = max(np.abs(ort_logits - jax_logits).max(), np.abs(ort_probs - jax_probs).max())
    print(f"onnxruntime vs jax on the test split: max abs diff {diff:.2e}")
    if not diff < PARITY_TOLERANCE:
        sys.exit(f"error: ONNX export differs from the JAX model by {diff} >= {PARITY_TOLERANCE}")

    jax_accuracy = float((jax_logits.argmax(1) == y_test).mean())
    ort_accuracy = float((ort_probs.argmax(1) == y_test).mean())
    print(f"digits-classifier: test accuracy {ort_accuracy:.4f} on {len(y_test)} images "
          f"(jax {jax_accuracy:.4f})")


if __name__ == "__main__":
    main()
