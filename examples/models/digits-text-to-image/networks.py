"""The three networks of the digits text-to-image model, in JAX (``export.py`` writes the same
graphs to ONNX):

* VAE (KL autoencoder, as SD's AutoencoderKL): a 16x16 digit -> latent [4, 4, 4]; the decoder
  maps the latent back to [1, 16, 16] and the exported graph repeats it to SD's 3 channels at
  8x the latent, [3, 32, 32] (nearest x2).

      encoder: Conv 3x3 (16) SiLU -> Conv 3x3 s2 (32) SiLU -> Conv 3x3 s2 (32) SiLU -> Conv 1x1 (8)
               = mean, log-variance (4 + 4 channels at 4x4)
      decoder: Conv 3x3 (32) SiLU -> x2 -> Conv 3x3 (32) SiLU -> x2 -> Conv 3x3 (16) SiLU
               -> Conv 3x3 (1)  [16x16]

* Text encoder (CLIP-like, one layer): token + position embeddings (77 positions, width 32)
  -> pre-LayerNorm causal self-attention (2 heads) -> pre-LayerNorm MLP (quick GELU, 64)
  -> final LayerNorm = last_hidden_state [S, 32]; pooler_output is the state at the first end
  token (the argmax of the ids, as CLIP's).

* UNet (epsilon prediction) in the latent space, 4x4 x 64 channels:
  conv_in 3x3 -> 3 x [ResBlock(time) -> CrossAttention(text)] with a dense FiLM bottleneck after
  the second -> GroupNorm SiLU conv_out 3x3 (4). ResBlock: x + Conv(SiLU(GN(Conv(SiLU(GN x)) +
  Dense(temb)))). CrossAttention: x + Out(softmax(Q(LN x) K(text)^T / sqrt(d)) V(text)), 4 heads
  over the 77 text states, queries from the 16 latent positions. temb: sinusoidal (32) of the
  timestep -> Dense 128 -> SiLU -> Dense 128.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

HP = jax.lax.Precision.HIGHEST
LATENT = 4  # latent channels
LSIZE = 4  # latent side (the digit is 16x16, the image 8x the latent: 32x32)
MAX_LENGTH = 77
TEXT = 32  # text width (cross_attention_dim)
TEXT_HEADS = 2
TEXT_MLP = 64
UNET = 64  # UNet channels
UNET_HEADS = 4
TEMB = 128
FREQS = 16
GROUPS = 8
GN_EPS = 1e-5
LN_EPS = 1e-5
MID = 256
BLOCKS = 3


class Init:
    """Draws parameters from one PRNG key into a flat dict of named arrays."""

    def __init__(self, key):
        self.key, self.p = key, {}

    def normal(self, name, shape, scale):
        """A normal draw times ``scale``."""
        self.key, sub = jax.random.split(self.key)
        self.p[name] = jax.random.normal(sub, shape) * scale

    def conv(self, name, cout, cin, k=3, scale=1.0):
        """A ``k`` x ``k`` convolution (He-scaled weights, zero bias)."""
        self.normal(name + ".w", (cout, cin, k, k), scale / np.sqrt(cin * k * k))
        self.p[name + ".b"] = jnp.zeros((cout,))

    def dense(self, name, cin, cout, scale=1.0):
        """A dense layer (weights scaled by 1/sqrt(cin), zero bias)."""
        self.normal(name + ".w", (cin, cout), scale / np.sqrt(cin))
        self.p[name + ".b"] = jnp.zeros((cout,))

    def norm(self, name, c):
        """A normalization affine (gain 1, bias 0)."""
        self.p[name + ".g"], self.p[name + ".b"] = jnp.ones((c,)), jnp.zeros((c,))

    def done(self):
        """The parameters drawn so far, float32."""
        return {k: v.astype(jnp.float32) for k, v in self.p.items()}


def conv(x, p, name, stride=1):
    """Convolution ``name`` (NCHW, "same" padding) plus its bias."""
    w = p[name + ".w"]
    pad = w.shape[-1] // 2
    y = jax.lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        precision=HP,
    )
    return y + p[name + ".b"][None, :, None, None]


def dense(x, p, name):
    """``x @ w + b`` of layer ``name`` over the last axis."""
    return jnp.matmul(x, p[name + ".w"], precision=HP) + p[name + ".b"]


def group_norm(x, p, name):
    """GroupNorm (``GROUPS`` groups) with the affine of ``name``."""
    n, c, h, w = x.shape
    xr = x.reshape(n, GROUPS, -1)
    mean = xr.mean(-1, keepdims=True)
    var = jnp.square(xr - mean).mean(-1, keepdims=True)
    xr = (xr - mean) / jnp.sqrt(var + GN_EPS)
    return (
        xr.reshape(n, c, h, w) * p[name + ".g"][None, :, None, None]
        + p[name + ".b"][None, :, None, None]
    )


def layer_norm(x, p, name):
    """LayerNorm over the last axis with the affine of ``name``."""
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + LN_EPS) * p[name + ".g"] + p[name + ".b"]


def up2(x):
    """Nearest-neighbour x2 (ONNX Resize nearest, asymmetric, floor)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)


def attention(q, k, v, heads, mask=None):
    """Multi-head attention of q [N, Sq, D] over k, v [N, Sk, D]."""
    n, sq, d = q.shape
    sk = k.shape[1]
    dh = d // heads
    q = q.reshape(n, sq, heads, dh).transpose(0, 2, 1, 3)
    k = k.reshape(n, sk, heads, dh).transpose(0, 2, 3, 1)
    v = v.reshape(n, sk, heads, dh).transpose(0, 2, 1, 3)
    scores = jnp.matmul(q, k, precision=HP) * np.float32(1.0 / np.sqrt(dh))
    if mask is not None:
        scores = scores + mask
    out = jnp.matmul(jax.nn.softmax(scores, axis=-1), v, precision=HP)
    return out.transpose(0, 2, 1, 3).reshape(n, sq, d)


# ------------------------------------------------------------------------------------- VAE


def init_vae(key):
    """The VAE's encoder and decoder parameters."""
    i = Init(key)
    i.conv("enc1", 16, 1)
    i.conv("enc2", 32, 16)
    i.conv("enc3", 32, 32)
    i.conv("enc_out", 2 * LATENT, 32, k=1, scale=0.5)
    i.conv("dec1", 32, LATENT)
    i.conv("dec2", 32, 32)
    i.conv("dec3", 16, 32)
    i.conv("dec_out", 1, 16)
    return i.done()


def vae_encode(p, x):
    """Digits [N, 1, 16, 16] -> (mean, logvar), each [N, 4, 4, 4]."""
    h = jax.nn.silu(conv(x, p, "enc1"))
    h = jax.nn.silu(conv(h, p, "enc2", stride=2))
    h = jax.nn.silu(conv(h, p, "enc3", stride=2))
    out = conv(h, p, "enc_out")
    return out[:, :LATENT], out[:, LATENT:]


def vae_decode(p, z):
    """Latents [N, 4, 4, 4] (unscaled) -> digits [N, 1, 16, 16] in about [-1, 1]."""
    h = jax.nn.silu(conv(z, p, "dec1"))
    h = jax.nn.silu(conv(up2(h), p, "dec2"))
    h = jax.nn.silu(conv(up2(h), p, "dec3"))
    return conv(h, p, "dec_out")


# ------------------------------------------------------------------------------ text encoder


def init_text(key, vocab_size):
    """The text encoder's parameters for a vocabulary of ``vocab_size``."""
    i = Init(key)
    i.normal("tok_emb", (vocab_size, TEXT), 0.1)
    i.normal("pos_emb", (MAX_LENGTH, TEXT), 0.1)
    i.norm("ln1", TEXT)
    for name in ("q", "k", "v"):
        i.dense("attn." + name, TEXT, TEXT)
    i.dense("attn.out", TEXT, TEXT, scale=0.5)
    i.norm("ln2", TEXT)
    i.dense("mlp1", TEXT, TEXT_MLP)
    i.dense("mlp2", TEXT_MLP, TEXT, scale=0.5)
    i.norm("ln_final", TEXT)
    return i.done()


def causal_mask(s):
    """Additive [s, s] mask: 0 on and below the diagonal, -1e9 above (CLIP is causal)."""
    return jnp.asarray(np.triu(np.full((s, s), -1e9, np.float32), 1))


def text_encode(p, ids):
    """Token ids [N, S] -> last_hidden_state [N, S, 32]."""
    s = ids.shape[1]
    x = p["tok_emb"][ids] + p["pos_emb"][:s]
    h = layer_norm(x, p, "ln1")
    x = x + dense(
        attention(
            dense(h, p, "attn.q"),
            dense(h, p, "attn.k"),
            dense(h, p, "attn.v"),
            TEXT_HEADS,
            causal_mask(s),
        ),
        p,
        "attn.out",
    )
    h = dense(layer_norm(x, p, "ln2"), p, "mlp1")
    x = x + dense(h * jax.nn.sigmoid(1.702 * h), p, "mlp2")
    return layer_norm(x, p, "ln_final")


# -------------------------------------------------------------------------------------- UNet


def init_unet(key):
    """The UNet's parameters."""
    i = Init(key)
    i.dense("time1", 2 * FREQS, TEMB)
    i.dense("time2", TEMB, TEMB)
    i.conv("conv_in", UNET, LATENT)
    for b in range(BLOCKS):
        r = f"res{b}"
        i.norm(r + ".gn1", UNET)
        i.conv(r + ".conv1", UNET, UNET)
        i.dense(r + ".temb", TEMB, UNET)
        i.norm(r + ".gn2", UNET)
        i.conv(r + ".conv2", UNET, UNET, scale=0.5)
        a = f"xattn{b}"
        i.norm(a + ".ln", UNET)
        i.dense(a + ".q", UNET, UNET)
        i.dense(a + ".k", TEXT, UNET)
        i.dense(a + ".v", TEXT, UNET)
        i.dense(a + ".out", UNET, UNET, scale=0.5)
    n = UNET * LSIZE * LSIZE
    i.dense("mid1", n, MID)
    i.dense("mid1_scale", TEMB, MID, scale=0.1)
    i.dense("mid1_shift", TEMB, MID, scale=0.1)
    i.dense("mid2", MID, n, scale=0.5)
    i.norm("gn_out", UNET)
    i.conv("conv_out", LATENT, UNET, scale=0.1)
    return i.done()


def timestep_features(t):
    """Sinusoidal features [N, 32] of timesteps [N]: sin and cos of t times 16 frequencies."""
    freqs = np.exp(-np.log(10000.0) * np.arange(FREQS) / FREQS).astype(np.float32)
    arg = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=1)


def unet(p, sample, timestep, text):
    """Noise prediction [N, 4, 4, 4] of latents [N, 4, 4, 4] at timesteps [N], text [N, S, 32]."""
    silu = jax.nn.silu
    temb = dense(silu(dense(timestep_features(timestep), p, "time1")), p, "time2")
    n = sample.shape[0]
    x = conv(sample, p, "conv_in")
    for b in range(BLOCKS):
        r, a = f"res{b}", f"xattn{b}"
        h = conv(silu(group_norm(x, p, r + ".gn1")), p, r + ".conv1")
        h = h + dense(silu(temb), p, r + ".temb")[:, :, None, None]
        x = x + conv(silu(group_norm(h, p, r + ".gn2")), p, r + ".conv2")
        tokens = x.reshape(n, UNET, -1).transpose(0, 2, 1)
        q = dense(layer_norm(tokens, p, a + ".ln"), p, a + ".q")
        att = attention(q, dense(text, p, a + ".k"), dense(text, p, a + ".v"), UNET_HEADS)
        x = x + dense(att, p, a + ".out").transpose(0, 2, 1).reshape(x.shape)
        if b == 1:
            m = dense(x.reshape(n, -1), p, "mid1")
            m = silu(m * (1.0 + dense(temb, p, "mid1_scale")) + dense(temb, p, "mid1_shift"))
            x = x + dense(m, p, "mid2").reshape(x.shape)
    return conv(silu(group_norm(x, p, "gn_out")), p, "conv_out")


def count(params) -> int:
    """The number of parameters in ``params``."""
    return sum(int(np.prod(v.shape)) for v in params.values())
