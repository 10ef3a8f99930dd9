#!/usr/bin/env python3
"""Case (c) of the generation benchmark: a GPT-2-small-shaped decoder with random weights,
exported with a KV cache by the project's own export code (examples/models/tiny-gpt/export.py,
`build(params, cfg, cache=True)`), and the genai_config.json that onnxruntime-genai loads it with.

Shape: 12 layers, 12 heads of 64 (n_embd 768), vocab 50257, 1024 positions: 124.4M parameters,
about 500 MB of float32 (the LM head is tied to the token embedding, as in GPT-2). Weights are
GPT-2's initialisation (N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)) drawn with
numpy from a fixed seed, laid out as tiny-gpt's `model.init_params` lays them out. EOS = pad =
BOS = 50256 (GPT-2's <|endoftext|>); a random model almost never picks it, so rows run to
max_length.

Before writing, the export is checked against itself: the last position's logits of a prompt
fed at once equal those of the prompt fed in two steps through the cache (the cache path is what
the benchmark times).

    .pipe/venv/bin/python bench/generate/make_gpt2_small.py --out bench/data/generate/gpt2-small

It needs onnx, numpy, onnxruntime and jax (model.py imports jax): the venv of scripts/setup --python.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples/models/tiny-gpt"))

import export  # noqa: E402
import onnx  # noqa: E402
from model import Config  # noqa: E402

EOS = 50256


def init_params(cfg: Config, seed: int) -> dict:
    """Random weights in model.init_params' names and shapes (numpy, not jax: faster to draw)."""
    rng = np.random.default_rng(seed)
    d, L = cfg.n_embd, cfg.n_layer

    def normal(shape, std=0.02):
        return (std * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    zeros = lambda n: np.zeros((n,), np.float32)  # noqa: E731
    ones = lambda n: np.ones((n,), np.float32)  # noqa: E731
    resid = 0.02 / math.sqrt(2 * L)
    params = {"wte": normal((cfg.vocab_size, d)), "wpe": normal((cfg.n_positions, d), 0.01)}
    for i in range(L):
        params[f"h{i}"] = {
            "ln1_g": ones(d), "ln1_b": zeros(d),
            "attn_w": normal((d, 3 * d)), "attn_b": zeros(3 * d),
            "proj_w": normal((d, d), resid), "proj_b": zeros(d),
            "ln2_g": ones(d), "ln2_b": zeros(d),
            "fc_w": normal((d, 4 * d)), "fc_b": zeros(4 * d),
            "out_w": normal((4 * d, d), resid), "out_b": zeros(d),
        }
    params["lnf_g"] = ones(d)
    params["lnf_b"] = zeros(d)
    return params


def genai_config(cfg: Config) -> dict:
    """onnxruntime-genai's config: a decoder-only (`llama`) model naming the split cache, as
    bench/generate/tiny-gpt/genai_config.json does for tiny-gpt (genai's `gpt2` type expects the
    stacked cache)."""
    return {
        "model": {
            "type": "llama",
            "pad_token_id": EOS,
            "bos_token_id": EOS,
            "eos_token_id": EOS,
            "vocab_size": cfg.vocab_size,
            "context_length": cfg.n_positions,
            "decoder": {
                "session_options": {"provider_options": []},
                "filename": "model.onnx",
                "head_size": cfg.head_dim,
                "hidden_size": cfg.n_embd,
                "num_attention_heads": cfg.n_head,
                "num_key_value_heads": cfg.n_head,
                "num_hidden_layers": cfg.n_layer,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {"max_length": 64, "do_sample": False},
    }


def check(path: Path, cfg: Config) -> float:
    """Max |difference| of the last logits: prompt at once vs prompt in two steps via the cache."""
    run = export.Runner(path, cfg)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, EOS, size=(2, 6), dtype=np.int64)
    mask = np.ones_like(ids)
    pos = export.positions(mask)
    whole, _ = run(ids, mask, pos)
    _, past = run(ids[:, :5], mask[:, :5], pos[:, :5])
    last, _ = run(ids[:, 5:], mask, pos[:, 5:], past)
    return float(np.abs(whole[:, -1] - last[:, -1]).max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the model folder to write (model.onnx, genai_config.json)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = Config(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, n_positions=1024)
    t0 = time.time()
    params = init_params(cfg, args.seed)
    count = sum(v.size for v in params.values() if isinstance(v, np.ndarray))
    count += sum(a.size for v in params.values() if isinstance(v, dict) for a in v.values())
    model = export.build(params, cfg, cache=True)
    model.graph.name = "gpt2-small-random"
    model.producer_name = "pipe bench/generate/make_gpt2_small.py"
    model.doc_string = ("A GPT-2-small-shaped decoder with random weights (benchmark case c), "
                        "exported by examples/models/tiny-gpt/export.py with a KV cache.")
    tmp = out / "model.onnx.tmp"
    onnx.save(model, str(tmp))
    diff = check(tmp, cfg)
    if not diff < 1e-3:
        sys.exit(f"make_gpt2_small.py: cached and uncached logits differ by {diff}")
    tmp.rename(out / "model.onnx")
    (out / "genai_config.json").write_text(json.dumps(genai_config(cfg), indent=2) + "\n")
    print(f"make_gpt2_small.py: {count / 1e6:.1f}M parameters, {(out / 'model.onnx').stat().st_size / 1e6:.0f} MB, "
          f"cache check {diff:.2e}, {time.time() - t0:.0f} s -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
