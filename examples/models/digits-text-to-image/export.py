"""ONNX export of the digits text-to-image networks (``networks.py``) in optimum's Stable Diffusion
folder layout, with the names, dtypes and dynamic axes ``optimum-cli export onnx`` gives them:

    tokenizer/{vocab.json, merges.txt, tokenizer_config.json}     (written by prompts.py)
    text_encoder/model.onnx  input_ids int32 [batch_size, sequence_length]
                             -> last_hidden_state float32 [batch_size, sequence_length, 32],
                                pooler_output float32 [batch_size, 32]
    unet/model.onnx          sample float32 [batch_size, 4, height, width], timestep int64 [steps],
                             encoder_hidden_states float32 [batch_size, sequence_length, 32]
                             -> out_sample float32 [batch_size, 4, height, width]
    vae_decoder/model.onnx   latent_sample float32 [batch_size, 4, latent_height, latent_width]
                             -> sample float32 [batch_size, 3, height, width]
    scheduler/scheduler_config.json, model_index.json, and a config.json per network

``write_folder`` writes them and returns the largest difference between onnxruntime and the JAX
networks over varied inputs (batch sizes 1 and 3, sequence lengths 77 and 9).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import networks as nets
import prompts

OPSET = 17
IR_VERSION = 8
TOLERANCE = 1e-4
PRODUCER = "examples/models/digits-text-to-image/train.py"
SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.30.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
"""diffusers' DDIMScheduler with Stable Diffusion v1's schedule, the one the UNet was trained on."""


class Graph:
    """Collects nodes and initializers; every helper returns the name of its output."""

    def __init__(self, params: dict, prefix: str = ""):
        self.nodes, self.inits, self.count = [], [], 0
        for name, value in params.items():
            self.const(prefix + name, np.asarray(value, np.float32))
        self.const("one", np.array(1.0, np.float32))
        self.const("axes_1", np.array([1], np.int64))
        self.const("axes_2_3", np.array([2, 3], np.int64))
        self.const("up_scales", np.array([1.0, 1.0, 2.0, 2.0], np.float32))

    def const(self, name, value):
        """Adds an initializer; returns its name."""
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type, inputs, out=None, **attrs):
        """Adds a node; returns its output name (``out`` or a fresh one)."""
        if out is None:
            self.count += 1
            out = f"{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def silu(self, x):
        """``x * sigmoid(x)``."""
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def conv(self, x, name, stride=1, out=None):
        """Convolution ``name`` with "same" padding."""
        k = int(next(i for i in self.inits if i.name == name + ".w").dims[-1])
        return self.op(
            "Conv",
            [x, name + ".w", name + ".b"],
            out,
            kernel_shape=[k, k],
            pads=[k // 2] * 4,
            strides=[stride, stride],
        )

    def dense(self, x, name, out=None):
        """``x @ w + b`` (MatMul and Add, any rank)."""
        return self.op("Add", [self.op("MatMul", [x, name + ".w"]), name + ".b"], out)

    def layer_norm(self, x, name, out=None):
        """LayerNormalization over the last axis."""
        return self.op(
            "LayerNormalization", [x, name + ".g", name + ".b"], out, axis=-1, epsilon=nets.LN_EPS
        )

    def group_norm(self, x, name):
        """GroupNorm as Reshape [N, G, -1] -> InstanceNormalization -> Reshape -> affine."""
        grouped = self.op("Reshape", [x, "gn_shape"])
        normed = self.op(
            "InstanceNormalization", [grouped, "gn_ones", "gn_zeros"], epsilon=nets.GN_EPS
        )
        back = self.op("Reshape", [normed, self.op("Shape", [x])])
        return self.op("Add", [self.op("Mul", [back, name + ".g_c"]), name + ".b_c"])

    def up2(self, x):
        """Nearest-neighbour x2 of the last two axes."""
        return self.op(
            "Resize",
            [x, "", "up_scales"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )

    def attention(self, q, k, v, heads, width, mask=None):
        """Multi-head attention of q [N, Sq, width] over k, v [N, Sk, width]."""
        split = self.const(f"heads_{self.count}", np.array([0, 0, heads, width // heads], np.int64))
        merge = self.const(f"merge_{self.count}", np.array([0, 0, width], np.int64))
        scale = self.const(
            f"scale_{self.count}", np.array(1.0 / np.sqrt(width // heads), np.float32)
        )
        qh = self.op("Transpose", [self.op("Reshape", [q, split])], perm=[0, 2, 1, 3])
        kh = self.op("Transpose", [self.op("Reshape", [k, split])], perm=[0, 2, 3, 1])
        vh = self.op("Transpose", [self.op("Reshape", [v, split])], perm=[0, 2, 1, 3])
        scores = self.op("Mul", [self.op("MatMul", [qh, kh]), scale])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        out = self.op("MatMul", [self.op("Softmax", [scores], axis=-1), vh])
        return self.op("Reshape", [self.op("Transpose", [out], perm=[0, 2, 1, 3]), merge])

    def model(self, name, inputs, outputs, doc):
        """The checked model of the nodes so far, with the initializers they use."""
        used = {i for node in self.nodes for i in node.input}
        inits = [i for i in self.inits if i.name in used]
        graph = helper.make_graph(self.nodes, name, inputs, outputs, inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


def group_norm_params(params, names):
    """The GroupNorm affines reshaped to [C, 1, 1] (broadcast over [N, C, H, W])."""
    out = dict(params)
    for name in names:
        out[name + ".g_c"] = np.asarray(params[name + ".g"])[:, None, None]
        out[name + ".b_c"] = np.asarray(params[name + ".b"])[:, None, None]
    return out


def text_encoder(p) -> onnx.ModelProto:
    """The text encoder's graph (``networks.text_encode`` and CLIP's pooler)."""
    g = Graph(p)
    d = nets.TEXT
    length = g.op("Shape", ["input_ids"], start=1, end=2)
    x = g.op(
        "Add",
        [
            g.op("Gather", ["tok_emb", "input_ids"], axis=0),
            g.op(
                "Slice",
                [
                    "pos_emb",
                    g.const("zero", np.array([0], np.int64)),
                    length,
                    g.const("axis0", np.array([0], np.int64)),
                ],
            ),
        ],
    )
    square = g.op("Concat", [length, length], axis=0)
    ones = g.op(
        "ConstantOfShape", [square], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    )
    lower = g.op("Trilu", [ones], upper=0)
    mask = g.op("Mul", [g.op("Sub", [lower, "one"]), g.const("big", np.array(1e9, np.float32))])
    h = g.layer_norm(x, "ln1")
    att = g.attention(
        g.dense(h, "attn.q"), g.dense(h, "attn.k"), g.dense(h, "attn.v"), nets.TEXT_HEADS, d, mask
    )
    x = g.op("Add", [x, g.dense(att, "attn.out")])
    h = g.dense(g.layer_norm(x, "ln2"), "mlp1")
    gelu = g.op(
        "Mul", [h, g.op("Sigmoid", [g.op("Mul", [h, g.const("k", np.array(1.702, np.float32))])])]
    )
    x = g.op("Add", [x, g.dense(gelu, "mlp2")])
    g.layer_norm(x, "ln_final", out="last_hidden_state")
    eos = g.op("ArgMax", ["input_ids"], axis=-1, keepdims=1)
    g.op("GatherND", ["last_hidden_state", eos], out="pooler_output", batch_dims=1)
    return g.model(
        "text_encoder",
        [
            helper.make_tensor_value_info(
                "input_ids", TensorProto.INT32, ["batch_size", "sequence_length"]
            )
        ],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch_size", "sequence_length", d]
            ),
            helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT, ["batch_size", d]),
        ],
        "CLIP-like text encoder of the digits text-to-image model: ids -> per-token states; "
        "pooler_output is the state at the first end token.",
    )


def unet(p) -> onnx.ModelProto:
    """The UNet's graph (``networks.unet``)."""
    norms = [f"res{b}.gn{i}" for b in range(nets.BLOCKS) for i in (1, 2)] + ["gn_out"]
    g = Graph(group_norm_params(p, norms))
    c = nets.UNET
    g.const("gn_shape", np.array([0, nets.GROUPS, -1], np.int64))
    g.const("gn_ones", np.ones((nets.GROUPS,), np.float32))
    g.const("gn_zeros", np.zeros((nets.GROUPS,), np.float32))
    g.const("tokens_shape", np.array([0, c, -1], np.int64))
    freqs = np.exp(-np.log(10000.0) * np.arange(nets.FREQS) / nets.FREQS).astype(np.float32)
    g.const("freqs", freqs[None, :])
    t = g.op("Unsqueeze", [g.op("Cast", ["timestep"], to=TensorProto.FLOAT), "axes_1"])
    arg = g.op("Mul", [t, "freqs"])
    feats = g.op("Concat", [g.op("Sin", [arg]), g.op("Cos", [arg])], axis=1)
    temb = g.dense(g.silu(g.dense(feats, "time1")), "time2")
    act = g.silu(temb)
    x = g.conv("sample", "conv_in")
    for b in range(nets.BLOCKS):
        r, a = f"res{b}", f"xattn{b}"
        h = g.conv(g.silu(g.group_norm(x, r + ".gn1")), r + ".conv1")
        h = g.op("Add", [h, g.op("Unsqueeze", [g.dense(act, r + ".temb"), "axes_2_3"])])
        x = g.op("Add", [x, g.conv(g.silu(g.group_norm(h, r + ".gn2")), r + ".conv2")])
        shape = g.op("Shape", [x])
        tokens = g.op("Transpose", [g.op("Reshape", [x, "tokens_shape"])], perm=[0, 2, 1])
        q = g.dense(g.layer_norm(tokens, a + ".ln"), a + ".q")
        att = g.attention(
            q,
            g.dense("encoder_hidden_states", a + ".k"),
            g.dense("encoder_hidden_states", a + ".v"),
            nets.UNET_HEADS,
            c,
        )
        back = g.op(
            "Reshape", [g.op("Transpose", [g.dense(att, a + ".out")], perm=[0, 2, 1]), shape]
        )
        x = g.op("Add", [x, back])
        if b == 1:
            m = g.dense(g.op("Flatten", [x], axis=1), "mid1")
            scale = g.op("Add", [g.dense(temb, "mid1_scale"), "one"])
            m = g.silu(g.op("Add", [g.op("Mul", [m, scale]), g.dense(temb, "mid1_shift")]))
            x = g.op("Add", [x, g.op("Reshape", [g.dense(m, "mid2"), g.op("Shape", [x])])])
    g.conv(g.silu(g.group_norm(x, "gn_out")), "conv_out", out="out_sample")
    return g.model(
        "unet",
        [
            helper.make_tensor_value_info(
                "sample", TensorProto.FLOAT, ["batch_size", 4, "height", "width"]
            ),
            helper.make_tensor_value_info("timestep", TensorProto.INT64, ["steps"]),
            helper.make_tensor_value_info(
                "encoder_hidden_states",
                TensorProto.FLOAT,
                ["batch_size", "sequence_length", nets.TEXT],
            ),
        ],
        [
            helper.make_tensor_value_info(
                "out_sample", TensorProto.FLOAT, ["batch_size", 4, "height", "width"]
            )
        ],
        "Epsilon-prediction UNet of the digits text-to-image model, with cross-attention on the "
        "text encoder's states. Its dense bottleneck needs a 4x4 latent.",
    )


def vae_decoder(p) -> onnx.ModelProto:
    """The VAE decoder's graph (``networks.vae_decode``, then 3 channels at 2x)."""
    g = Graph(p)
    h = g.silu(g.conv("latent_sample", "dec1"))
    h = g.silu(g.conv(g.up2(h), "dec2"))
    h = g.silu(g.conv(g.up2(h), "dec3"))
    gray = g.up2(g.conv(h, "dec_out"))
    g.op("Concat", [gray, gray, gray], out="sample", axis=1)
    return g.model(
        "vae_decoder",
        [
            helper.make_tensor_value_info(
                "latent_sample",
                TensorProto.FLOAT,
                ["batch_size", 4, "latent_height", "latent_width"],
            )
        ],
        [
            helper.make_tensor_value_info(
                "sample", TensorProto.FLOAT, ["batch_size", 3, "height", "width"]
            )
        ],
        "VAE decoder of the digits text-to-image model: latents -> gray digit in [-1, 1] (ink "
        "bright), repeated to 3 channels, 8x the latent's side.",
    )


def write_json(path: Path, value) -> None:
    """Writes ``value`` as indented JSON, making the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def write_folder(out: Path, vae, text, unet_params, scaling_factor: float) -> float:
    """Writes the model folder (the tokenizer must be in out/tokenizer already); returns the
    largest onnxruntime-vs-JAX difference of the three networks."""
    tok = prompts.Encoder(out / "tokenizer")
    for sub, model in (
        ("text_encoder", text_encoder(text)),
        ("unet", unet(unet_params)),
        ("vae_decoder", vae_decoder(vae)),
    ):
        (out / sub).mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(out / sub / "model.onnx"))
    write_json(
        out / "text_encoder" / "config.json",
        {
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "vocab_size": tok.vocab_size,
            "hidden_size": nets.TEXT,
            "intermediate_size": nets.TEXT_MLP,
            "num_attention_heads": nets.TEXT_HEADS,
            "num_hidden_layers": 1,
            "max_position_embeddings": nets.MAX_LENGTH,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": nets.LN_EPS,
            "bos_token_id": tok.start,
            "eos_token_id": tok.end,
            "pad_token_id": tok.end,
        },
    )
    write_json(
        out / "unet" / "config.json",
        {
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": "0.30.0",
            "in_channels": nets.LATENT,
            "out_channels": nets.LATENT,
            "sample_size": nets.LSIZE,
            "cross_attention_dim": nets.TEXT,
            "attention_head_dim": nets.UNET // nets.UNET_HEADS,
            "block_out_channels": [nets.UNET],
            "norm_num_groups": nets.GROUPS,
        },
    )
    write_json(
        out / "vae_decoder" / "config.json",
        {
            "_class_name": "AutoencoderKL",
            "_diffusers_version": "0.30.0",
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": nets.LATENT,
            "sample_size": 8 * nets.LSIZE,
            "scaling_factor": scaling_factor,
        },
    )
    write_json(out / "scheduler" / "scheduler_config.json", SCHEDULER)
    write_json(
        out / "model_index.json",
        {
            "_class_name": "ORTStableDiffusionPipeline",
            "_diffusers_version": "0.30.0",
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae_decoder": ["diffusers", "AutoencoderKL"],
        },
    )
    return parity(out, vae, text, unet_params, tok)


def parity(out: Path, vae, text, unet_params, tok) -> float:
    """Max abs difference of onnxruntime and JAX on each network, batches 1 and 3."""
    rng = np.random.default_rng(1)
    session = {
        sub: ort.InferenceSession(str(out / sub / "model.onnx"), providers=["CPUExecutionProvider"])
        for sub in ("text_encoder", "unet", "vae_decoder")
    }
    worst = 0.0
    texts = ["a handwritten seven", "", "the digit 3"]
    for n, length in ((1, 77), (3, 77), (3, 9)):
        ids = tok.batch(texts[:n])[:, :length]
        ids[:, -1] = tok.end
        hidden, pooled = session["text_encoder"].run(None, {"input_ids": ids})
        ref = np.asarray(jax.jit(nets.text_encode)(text, jnp.asarray(ids)))
        eos = (ids == tok.end).argmax(1)
        worst = max(
            worst,
            float(np.abs(hidden - ref).max()),
            float(np.abs(pooled - ref[np.arange(n), eos]).max()),
        )
        sample = rng.standard_normal((n, nets.LATENT, nets.LSIZE, nets.LSIZE)).astype(np.float32)
        for steps in ((n,), (1,)):
            t = rng.integers(0, 1000, steps).astype(np.int64)
            (eps,) = session["unet"].run(
                None, {"sample": sample, "timestep": t, "encoder_hidden_states": hidden}
            )
            ref = nets.unet(
                unet_params,
                jnp.asarray(sample),
                jnp.asarray(np.broadcast_to(t, (n,))),
                jnp.asarray(hidden),
            )
            worst = max(worst, float(np.abs(eps - np.asarray(ref)).max()))
        (image,) = session["vae_decoder"].run(None, {"latent_sample": sample})
        ref = np.asarray(nets.vae_decode(vae, jnp.asarray(sample)))
        ref = np.repeat(np.repeat(np.repeat(ref, 3, axis=1), 2, axis=2), 2, axis=3)
        worst = max(worst, float(np.abs(image - ref).max()))
    return worst
