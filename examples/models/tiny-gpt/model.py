"""tiny-gpt's architecture in jax: the reference the ONNX export is checked against.

GPT-2 style: token + learned position embeddings, pre-LayerNorm blocks (causal multi-head
self-attention, then a GELU MLP, each with a residual), a final LayerNorm and an LM head tied
to the token embedding. LayerNorm eps is 1e-5; GELU is the exact (erf) form.

``forward(params, cfg, ids, mask, pos)`` takes ``attention_mask`` and ``position_ids`` like the
exported model: query ``j`` sees key ``k`` only if ``k <= j`` and ``mask[:, k] == 1``; a key it
may not see gets the score ``MASKED`` (a constant, not an addition) before the softmax.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np

MASKED = -1e9
"""The attention score a key that a query may not see gets, before the softmax."""

LN_EPS = 1e-5


@dataclass(frozen=True)
class Config:
    vocab_size: int = 1024
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 128

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


def init_params(cfg: Config, key: jax.Array) -> dict:
    """GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)."""
    d, L = cfg.n_embd, cfg.n_layer
    keys = iter(jax.random.split(key, 2 + 4 * L))

    def normal(shape, std=0.02):
        return (std * jax.random.normal(next(keys), shape)).astype(jnp.float32)

    zeros = lambda n: jnp.zeros((n,), jnp.float32)  # noqa: E731
    ones = lambda n: jnp.ones((n,), jnp.float32)  # noqa: E731
    resid_std = 0.02 / math.sqrt(2 * L)
    params = {"wte": normal((cfg.vocab_size, d)), "wpe": sinusoid(cfg.n_positions, d, 0.02)}
    for i in range(L):
        params[f"h{i}"] = {
            "ln1_g": ones(d), "ln1_b": zeros(d),
            "attn_w": normal((d, 3 * d)), "attn_b": zeros(3 * d),
            "proj_w": normal((d, d), resid_std), "proj_b": zeros(d),
            "ln2_g": ones(d), "ln2_b": zeros(d),
            "fc_w": normal((d, 4 * d)), "fc_b": zeros(4 * d),
            "out_w": normal((4 * d, d), resid_std), "out_b": zeros(d),
        }
    params["lnf_g"] = ones(d)
    params["lnf_b"] = zeros(d)
    return params


def sinusoid(n: int, d: int, std: float) -> jnp.ndarray:
    """The Transformer paper's sinusoidal position table, scaled to per-entry std ``std``.

    Used only to initialise the learned position embedding: a shift by a fixed offset is then a
    linear map of it, which lets attention find "the previous token" (and so learn to copy
    names from earlier in a story) after far fewer steps than from random vectors.
    """
    pos = np.arange(n)[:, None]
    freq = np.exp(-np.log(10000.0) * np.arange(0, d, 2) / d)[None, :]
    table = np.zeros((n, d), np.float32)
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq)
    return jnp.asarray(table * (std * np.sqrt(2.0)), jnp.float32)


def count_params(params: dict) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def layer_norm(x, g, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + LN_EPS) * g + b


def forward(params: dict, cfg: Config, ids, mask=None, pos=None):
    """Logits ``[B, S, V]`` for ``ids`` ``[B, S]`` (int), ``mask`` ``[B, S]`` (1 = real token,
    0 = padding; default all ones) and ``pos`` ``[B, S]`` (default ``0..S-1``)."""
    B, S = ids.shape
    H, hd = cfg.n_head, cfg.head_dim
    if mask is None:
        mask = jnp.ones((B, S), jnp.int32)
    if pos is None:
        pos = jnp.broadcast_to(jnp.arange(S), (B, S))
    x = params["wte"][ids] + params["wpe"][pos]
    causal = jnp.arange(S)[None, :] <= jnp.arange(S)[:, None]  # [q, k]
    allowed = causal[None, None] & (mask[:, None, None, :] != 0)  # [B, 1, S, S]
    scale = 1.0 / math.sqrt(hd)
    for i in range(cfg.n_layer):
        p = params[f"h{i}"]
        h = layer_norm(x, p["ln1_g"], p["ln1_b"])
        qkv = h @ p["attn_w"] + p["attn_b"]
        q, k, v = jnp.split(qkv, 3, axis=-1)
        q, k, v = (t.reshape(B, S, H, hd).transpose(0, 2, 1, 3) for t in (q, k, v))
        scores = (q @ k.transpose(0, 1, 3, 2)) * scale
        scores = jnp.where(allowed, scores, MASKED)
        att = jax.nn.softmax(scores, axis=-1) @ v
        att = att.transpose(0, 2, 1, 3).reshape(B, S, cfg.n_embd)
        x = x + att @ p["proj_w"] + p["proj_b"]
        h = layer_norm(x, p["ln2_g"], p["ln2_b"])
        h = jax.nn.gelu(h @ p["fc_w"] + p["fc_b"], approximate=False)
        x = x + h @ p["out_w"] + p["out_b"]
    x = layer_norm(x, params["lnf_g"], params["lnf_b"])
    return x @ params["wte"].T
