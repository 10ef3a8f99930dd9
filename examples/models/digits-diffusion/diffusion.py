"""The digits diffusion model itself: the noise predictor, its DDPM training loop, the ONNX
export and its parity check.

Shared by ``train.py`` (trains on the digits from ``../digits.py``) and
``examples/train-diffusion/trainer.py`` (trains inside a pipeline, on the rows pipe hands it), so
both make the same network and the same ONNX graph. It needs jax, optax, numpy, onnx and
onnxruntime only: no data loading here.

A tiny UNet-like noise predictor (epsilon prediction) for 16x16 images in [-1, 1], trained with
DDPM's objective on the diffusers-default linear schedule (1,000 steps, betas 0.0001..0.02) and
classifier-free guidance label dropout (15% of labels replaced by the null class 10):

    sample [batch,1,16,16] float32, timestep [batch] float32, class_labels [batch] int64
      -> noise_pred [batch,1,16,16] float32

    timestep -> sinusoidal (32) -> Gemm 128 -> SiLU -> Gemm 128 --+
    class_labels -> Gather (11 x 128) ----------------------------+-> Add -> SiLU = emb
    sample -> Conv 3x3 (8) = h16                                            16x16
      -> SiLU -> Conv 3x3 stride 2 (32) + Gemm(emb) = h8                    8x8
      -> r8 = h8 + Conv 3x3 (32) (SiLU (GroupNorm h8))
      -> SiLU (Conv 3x3 stride 2 (64) (SiLU (GroupNorm r8))) = h4           4x4
      -> Flatten (1024) -> Gemm 256 -> FiLM(emb) -> SiLU -> Gemm 256 -> FiLM(emb) -> SiLU
      -> Gemm 1024 -> Reshape [64,4,4] + h4                                 dense bottleneck
      -> Resize nearest x2 -> Concat r8 -> Conv 1x1 (32) = u8               8x8
      -> u8 + Conv 3x3 (32) (SiLU (GroupNorm u8)) + Gemm(emb)
      -> Resize nearest x2 -> Concat h16 -> Conv 1x1 (8) = u16              16x16
      -> u16 + Conv 3x3 (8) (SiLU u16) -> SiLU -> Conv 3x3 (1) = noise_pred
    FiLM(emb): x * (1 + Gemm(emb)) + Gemm(emb); GroupNorm: 4 groups, eps 1e-5
"""

from __future__ import annotations

import json
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
STEPS = 1400
BATCH = 128
LEARNING_RATE = 2e-3
WARMUP = 100
EMA_DECAY = 0.995
LABEL_DROPOUT = 0.15
PARITY_TOLERANCE = 1e-4

SIZE = 16  # side of the square images (digits.SIZE)

# Diffusion schedule: diffusers' defaults (DDPMScheduler / DDIMScheduler).
NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.0001, 0.02

# What a diffusers-style sampler should use with this model (pipe's model.diffuse
# `scheduler_config`); clip_sample is false: clipping x0 hurts this model (see MODEL_CARD.md).
SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "beta_start": BETA_START,
    "beta_end": BETA_END,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "timestep_spacing": "leading",
}

CLASSES = 10
NULL_CLASS = 10  # the "no condition" label for classifier-free guidance
C16, C8, C4 = 8, 32, 64  # channels at 16x16, 8x8 and 4x4
MID = 256  # width of the dense bottleneck
EMB = 128  # timestep / class embedding width
FREQS = 16  # sinusoidal frequencies: embedding [sin(t f_i)..., cos(t f_i)...], 32 values
GROUPS = 4  # GroupNorm groups (8x8 features only: 8 channels per group)
GN_EPS = 1e-5

OPSET = 17
IR_VERSION = 8
PRODUCER = "pipe examples/models/digits-diffusion/train.py"

HP = jax.lax.Precision.HIGHEST


def schedule() -> tuple[np.ndarray, np.ndarray]:
    """(betas, alphas_cumprod) float32 [1000], computed like diffusers (float32 linspace)."""
    betas = np.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=np.float32)
    return betas, np.cumprod(1.0 - betas, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Model (NCHW / OIHW as ONNX, dense weights [in, out] as Gemm without transB)
# ---------------------------------------------------------------------------------------------


def init_params(key: jax.Array) -> dict[str, jax.Array]:
    keys = iter(jax.random.split(key, 64))
    p: dict[str, jax.Array] = {}

    def dense(name, n_in, n_out, scale=1.0):
        p[name + ".w"] = jax.random.normal(next(keys), (n_in, n_out)) * (scale / np.sqrt(n_in))
        p[name + ".b"] = jnp.zeros((n_out,), jnp.float32)

    def conv(name, c_out, c_in, k=3, scale=np.sqrt(2.0)):
        fan_in = c_in * k * k
        p[name + ".w"] = jax.random.normal(next(keys), (c_out, c_in, k, k)) * (scale / np.sqrt(fan_in))
        p[name + ".b"] = jnp.zeros((c_out,), jnp.float32)

    def norm(name, c):
        p[name + ".g"] = jnp.ones((c,), jnp.float32)
        p[name + ".b"] = jnp.zeros((c,), jnp.float32)

    dense("time1", 2 * FREQS, EMB)
    dense("time2", EMB, EMB)
    p["class_emb"] = jax.random.normal(next(keys), (CLASSES + 1, EMB))
    conv("conv_in", C16, 1)
    conv("down8", C8, C16)
    dense("emb8", EMB, C8)
    norm("gn8", C8)
    conv("res8", C8, C8, scale=0.5)
    norm("gn4", C8)
    conv("down4", C4, C8)
    dense("mid1", C4 * 16, MID)
    dense("mid1_scale", EMB, MID, scale=0.1)
    dense("mid1_shift", EMB, MID, scale=0.1)
    dense("mid2", MID, MID)
    dense("mid2_scale", EMB, MID, scale=0.1)
    dense("mid2_shift", EMB, MID, scale=0.1)
    dense("mid3", MID, C4 * 16, scale=0.5)
    conv("up8_mix", C8, C4 + C8, k=1, scale=1.0)
    norm("up8_gn", C8)
    conv("up8_conv", C8, C8, scale=0.5)
    dense("up8_emb", EMB, C8)
    conv("up16_mix", C16, C8 + C16, k=1, scale=1.0)
    conv("up16_conv", C16, C16, scale=0.5)
    conv("conv_out", 1, C16, scale=0.1)
    return {k: v.astype(jnp.float32) for k, v in p.items()}


def conv2d(x, p, name, stride=1):
    w, b = p[name + ".w"], p[name + ".b"]
    pad = w.shape[-1] // 2
    y = jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=HP)
    return y + b[None, :, None, None]


def group_norm(x, p, name):
    n, c, h, w = x.shape
    xr = x.reshape(n, GROUPS, -1)
    mean = xr.mean(-1, keepdims=True)
    var = jnp.square(xr - mean).mean(-1, keepdims=True)
    xr = (xr - mean) / jnp.sqrt(var + GN_EPS)
    return xr.reshape(n, c, h, w) * p[name + ".g"][None, :, None, None] + p[name + ".b"][None, :, None, None]


def dense(x, p, name):
    return jnp.dot(x, p[name + ".w"], precision=HP) + p[name + ".b"]


def timestep_features(t):
    """Sinusoidal features [N, 32] of float timesteps [N]: [sin(t f_i)..., cos(t f_i)...]."""
    freqs = np.exp(-np.log(10000.0) * np.arange(FREQS) / FREQS).astype(np.float32)
    arg = t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=1)


def upsample2(x):
    """Nearest-neighbour x2 (ONNX Resize nearest, asymmetric, floor)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)


def noise_pred_fn(p, sample, timestep, class_labels):
    """Epsilon prediction [N,1,16,16] of noisy samples, float timesteps [N], labels [N] (0..10)."""
    silu = jax.nn.silu
    emb = dense(silu(dense(timestep_features(timestep), p, "time1")), p, "time2")
    emb = silu(emb + p["class_emb"][class_labels])
    n = sample.shape[0]
    # Encoder: 16x16 -> 8x8 -> 4x4.
    h16 = conv2d(sample, p, "conv_in")
    h8 = conv2d(silu(h16), p, "down8", stride=2) + dense(emb, p, "emb8")[:, :, None, None]
    r8 = h8 + conv2d(silu(group_norm(h8, p, "gn8")), p, "res8")
    h4 = silu(conv2d(silu(group_norm(r8, p, "gn4")), p, "down4", stride=2))
    # Dense bottleneck with FiLM conditioning: h * (1 + scale(emb)) + shift(emb).
    m = dense(h4.reshape(n, -1), p, "mid1")
    m = silu(m * (1.0 + dense(emb, p, "mid1_scale")) + dense(emb, p, "mid1_shift"))
    m = dense(m, p, "mid2")
    m = silu(m * (1.0 + dense(emb, p, "mid2_scale")) + dense(emb, p, "mid2_shift"))
    m = dense(m, p, "mid3").reshape(h4.shape) + h4
    # Decoder: 4x4 -> 8x8 -> 16x16 with skip connections (concatenation).
    u = conv2d(jnp.concatenate([upsample2(m), r8], axis=1), p, "up8_mix")
    u = u + conv2d(silu(group_norm(u, p, "up8_gn")), p, "up8_conv") + dense(emb, p, "up8_emb")[:, :, None, None]
    u = conv2d(jnp.concatenate([upsample2(u), h16], axis=1), p, "up16_mix")
    u = u + conv2d(silu(u), p, "up16_conv")
    return conv2d(silu(u), p, "conv_out")


def count_params(params) -> int:
    return sum(int(np.prod(v.shape)) for v in params.values())


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

Log = Callable[[int, int, float, float], None]
"""``log(step, steps, loss, seconds)``: the loss averaged over the last ``log_every`` steps, and
the seconds since training started."""


def print_log(step: int, steps: int, loss: float, seconds: float) -> None:
    print(f"step {step:5d}/{steps}  loss {loss:.4f}  {seconds:.0f} s", flush=True)


def train(x_train: np.ndarray, y_train: np.ndarray, steps: int, *, key: jax.Array | None = None,
          batch: int = BATCH, learning_rate: float = LEARNING_RATE, log: Log = print_log,
          log_every: int = 200) -> dict[str, jax.Array]:
    """DDPM epsilon-prediction MSE, uniform timesteps, AdamW + cosine decay, EMA weights.

    ``steps`` steps on batches of ``batch`` images [N,1,16,16] in [-1,1] with their labels
    (int, 0..9) drawn with replacement; the learning rate warms up to ``learning_rate`` over
    ``min(WARMUP, steps // 10)`` steps, then decays to 5% of it (cosine). All randomness comes
    from ``key`` (``PRNGKey(SEED)`` by default). ``log`` is called after the first step, every
    ``log_every`` steps and after the last. Returns the EMA of the trained params."""
    key = jax.random.PRNGKey(SEED) if key is None else key
    key, init_key = jax.random.split(key)
    params = jax.jit(init_params)(init_key)
    ema = params
    _, alphas_cumprod = schedule()
    sqrt_ac = jnp.asarray(np.sqrt(alphas_cumprod))
    sqrt_1m_ac = jnp.asarray(np.sqrt(1.0 - alphas_cumprod))

    warmup = min(WARMUP, steps // 10)
    lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, steps, learning_rate * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, weight_decay=1e-4))
    opt_state = optimizer.init(params)
    x_all, y_all = jnp.asarray(x_train), jnp.asarray(y_train)

    @jax.jit
    def step(params, ema, opt_state, key, i):
        k_idx, k_t, k_eps, k_drop = jax.random.split(key, 4)
        idx = jax.random.randint(k_idx, (batch,), 0, x_all.shape[0])
        x0, y = x_all[idx], y_all[idx]
        t = jax.random.randint(k_t, (batch,), 0, NUM_TRAIN_TIMESTEPS)
        eps = jax.random.normal(k_eps, x0.shape)
        xt = sqrt_ac[t][:, None, None, None] * x0 + sqrt_1m_ac[t][:, None, None, None] * eps
        y = jnp.where(jax.random.uniform(k_drop, (batch,)) < LABEL_DROPOUT, NULL_CLASS, y)

        def loss_fn(p):
            return jnp.mean(jnp.square(noise_pred_fn(p, xt, t.astype(jnp.float32), y) - eps))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        decay = jnp.minimum(EMA_DECAY, (1.0 + i) / (10.0 + i))
        ema = jax.tree.map(lambda e, q: decay * e + (1.0 - decay) * q, ema, params)
        return params, ema, opt_state, loss

    losses = []
    start = time.perf_counter()
    for i in range(steps):
        key, sub = jax.random.split(key)
        params, ema, opt_state, loss = step(params, ema, opt_state, sub, jnp.float32(i))
        losses.append(loss)
        if (i + 1) % log_every == 0 or i == 0 or i + 1 == steps:
            log(i + 1, steps, float(jnp.mean(jnp.stack(losses[-log_every:]))),
                time.perf_counter() - start)
    return ema


# ---------------------------------------------------------------------------------------------
# ONNX export
# ---------------------------------------------------------------------------------------------


class GraphBuilder:
    """Collects nodes and initializers; every helper returns the name of its output."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        if out is None:
            self.count += 1
            out = f"{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def conv(self, x: str, name: str, k: int = 3, stride: int = 1, out: str | None = None) -> str:
        return self.op("Conv", [x, name + ".w", name + ".b"], out, kernel_shape=[k, k],
                       pads=[k // 2] * 4, strides=[stride, stride])

    def group_norm(self, x: str, name: str) -> str:
        """GroupNorm as Reshape [N, G, -1] -> InstanceNormalization -> Reshape -> affine."""
        grouped = self.op("Reshape", [x, "gn_shape"])
        normed = self.op("InstanceNormalization", [grouped, "gn_ones", "gn_zeros"], epsilon=GN_EPS)
        back = self.op("Reshape", [normed, self.op("Shape", [x])])
        return self.op("Add", [self.op("Mul", [back, name + ".g"]), name + ".b"])

    def gemm(self, x: str, name: str) -> str:
        return self.op("Gemm", [x, name + ".w", name + ".b"])

    def film(self, x: str, name: str, emb: str) -> str:
        """x * (1 + scale(emb)) + shift(emb)."""
        scale = self.op("Add", [self.gemm(emb, name + "_scale"), "one"])
        return self.op("Add", [self.op("Mul", [x, scale]), self.gemm(emb, name + "_shift")])

    def channel_bias(self, x: str, name: str, emb: str) -> str:
        """x + dense(emb) broadcast over height and width."""
        return self.op("Add", [x, self.op("Unsqueeze", [self.gemm(emb, name), "axes_2_3"])])

    def upsample2(self, x: str) -> str:
        return self.op("Resize", [x, "", "up_scales"], mode="nearest",
                       coordinate_transformation_mode="asymmetric", nearest_mode="floor")


NORMS = ("gn8", "gn4", "up8_gn")


def export_onnx(params: dict[str, jax.Array], path: Path, producer: str = PRODUCER) -> onnx.ModelProto:
    """Writes the ONNX model to ``path``; ``producer`` names the script in its ``producer_name``."""
    g = GraphBuilder()
    for name, value in params.items():
        value = np.asarray(value, dtype=np.float32)
        if name.rsplit(".", 1)[0] in NORMS:
            value = value[:, None, None]  # GroupNorm affine: [C, 1, 1] broadcasts over [N, C, H, W]
        g.const(name, value)
    freqs = np.exp(-np.log(10000.0) * np.arange(FREQS) / FREQS).astype(np.float32)
    g.const("freqs", freqs[None, :])
    g.const("one", np.array(1.0, np.float32))
    g.const("axes_1", np.array([1], np.int64))
    g.const("axes_2_3", np.array([2, 3], np.int64))
    g.const("gn_shape", np.array([0, GROUPS, -1], np.int64))
    g.const("gn_ones", np.ones((GROUPS,), np.float32))
    g.const("gn_zeros", np.zeros((GROUPS,), np.float32))
    g.const("up_scales", np.array([1.0, 1.0, 2.0, 2.0], np.float32))
    g.const("mid_shape", np.array([0, C4, 4, 4], np.int64))

    # Embedding: sinusoidal timestep features -> MLP, plus the class embedding, then SiLU.
    arg = g.op("Mul", [g.op("Unsqueeze", ["timestep", "axes_1"]), "freqs"])
    feats = g.op("Concat", [g.op("Sin", [arg]), g.op("Cos", [arg])], axis=1)
    temb = g.gemm(g.silu(g.gemm(feats, "time1")), "time2")
    cemb = g.op("Gather", ["class_emb", "class_labels"], axis=0)
    emb = g.silu(g.op("Add", [temb, cemb]))

    h16 = g.conv("sample", "conv_in")
    h8 = g.channel_bias(g.conv(g.silu(h16), "down8", stride=2), "emb8", emb)
    r8 = g.op("Add", [h8, g.conv(g.silu(g.group_norm(h8, "gn8")), "res8")])
    h4 = g.silu(g.conv(g.silu(g.group_norm(r8, "gn4")), "down4", stride=2))
    m = g.gemm(g.op("Flatten", [h4], axis=1), "mid1")
    m = g.silu(g.film(m, "mid1", emb))
    m = g.silu(g.film(g.gemm(m, "mid2"), "mid2", emb))
    m = g.op("Add", [g.op("Reshape", [g.gemm(m, "mid3"), "mid_shape"]), h4])
    u = g.conv(g.op("Concat", [g.upsample2(m), r8], axis=1), "up8_mix", k=1)
    u = g.op("Add", [u, g.conv(g.silu(g.group_norm(u, "up8_gn")), "up8_conv")])
    u = g.channel_bias(u, "up8_emb", emb)
    u = g.conv(g.op("Concat", [g.upsample2(u), h16], axis=1), "up16_mix", k=1)
    u = g.op("Add", [u, g.conv(g.silu(u), "up16_conv")])
    g.conv(g.silu(u), "conv_out", out="noise_pred")

    side = SIZE
    graph = helper.make_graph(
        g.nodes,
        "digits_diffusion",
        inputs=[
            helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 1, side, side]),
            helper.make_tensor_value_info("timestep", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("class_labels", TensorProto.INT64, ["batch"]),
        ],
        outputs=[helper.make_tensor_value_info("noise_pred", TensorProto.FLOAT,
                                               ["batch", 1, side, side])],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=producer,
        doc_string=(
            "Class-conditional epsilon-prediction noise model for 16x16 grayscale digits "
            "(ink bright on black, value = pixel_0_255 * 2/255 - 1). Inputs: sample float32 "
            "[batch,1,16,16], timestep float32 [batch] (0..999, fractional allowed), class_labels "
            "int64 [batch] (0..9, 10 = unconditional). Output: noise_pred float32 [batch,1,16,16]. "
            "Trained with DDPM, linear betas 0.0001..0.02, 1000 steps."
        ),
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {
        "prediction_type": "epsilon",
        "num_train_timesteps": str(NUM_TRAIN_TIMESTEPS),
        "beta_schedule": "linear",
        "beta_start": str(BETA_START),
        "beta_end": str(BETA_END),
        "sample_shape": f"1,{side},{side}",
        "null_class": str(NULL_CLASS),
        "labels": ",".join(str(k) for k in range(CLASSES)),
    })
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return model


def parity(params, path: Path) -> float:
    """Max abs difference of onnxruntime and JAX outputs on varied inputs and batch sizes."""
    rng = np.random.default_rng(1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fn = jax.jit(noise_pred_fn)
    worst = 0.0
    for n in (1, 7, 80):
        sample = rng.standard_normal((n, 1, SIZE, SIZE)).astype(np.float32)
        timestep = rng.uniform(0, NUM_TRAIN_TIMESTEPS - 1, n).astype(np.float32)
        timestep[: n // 2] = np.round(timestep[: n // 2])
        timestep[0] = 999.0 if n > 1 else 0.0
        labels = rng.integers(0, CLASSES + 1, n).astype(np.int64)
        ref = np.asarray(fn(params, jnp.asarray(sample), jnp.asarray(timestep), jnp.asarray(labels)))
        (out,) = session.run(["noise_pred"], {"sample": sample, "timestep": timestep,
                                              "class_labels": labels})
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def write_scheduler_config(path: Path) -> Path:
    """Writes ``SCHEDULER_CONFIG`` as JSON to ``path`` (a diffusers scheduler_config.json)."""
    path.write_text(json.dumps(SCHEDULER_CONFIG, indent=2) + "\n")
    return path
