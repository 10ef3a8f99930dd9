"""Export tiny-gpt to ONNX (with and without a KV cache), check it, and write reference.json.

The graphs are written node by node with ``onnx.helper`` (opset 17, IR version 8) in the naming
style of Hugging Face optimum's decoder exports:

model.onnx (KV cache):
  inputs   input_ids                  int64   [batch, seq]
           attention_mask             int64   [batch, total_seq]   (total_seq = past_seq + seq;
                                                                     0 marks padding)
           position_ids               int64   [batch, seq]
           past_key_values.{i}.key    float32 [batch, n_head, past_seq, head_dim]  i < n_layer
           past_key_values.{i}.value  float32 [batch, n_head, past_seq, head_dim]
  outputs  logits                     float32 [batch, seq, vocab]
           present.{i}.key            float32 [batch, n_head, total_seq, head_dim]
           present.{i}.value          float32 [batch, n_head, total_seq, head_dim]
model_nocache.onnx: the same without past_key_values.* and present.* (total_seq = seq).

Query ``j`` of the step sits at absolute position ``past_seq + j`` and sees key ``k`` only when
``k <= past_seq + j`` and ``attention_mask[:, k] == 1``; other scores are set to -1e9 before the
softmax, so left padding does not change what a row generates.

Run on its own (``python export.py``) it re-exports from build/params.npz, which train.py
writes; train.py calls ``main`` after training.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from model import LN_EPS, MASKED, Config  # noqa: E402

OPSET = 17
IR_VERSION = 8
MAX_NEW_TOKENS = 20

# Prompts of different lengths for the checks and reference.json.
PROMPTS = [
    "Once upon a time, there was a little cat named",
    "Lily was a small bunny who lived",
    'One day, Tom went to the park. There, he met a fox named Mia. Mia was sad because she lost her red',
    "There once was a brave little",
]


# --------------------------------------------------------------------------------------------
# graph


class Graph:
    """A small builder: nodes, initializers and fresh names."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(self, hint: str, array) -> str:
        return self.init(self.name(hint), np.asarray(array))

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs=None, **attrs):
        if outputs is None:
            outputs = [self.name(hint or op_type.lower())]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.name(op_type), **attrs))
        return outputs[0] if len(outputs) == 1 else outputs


def build(params: dict, cfg: Config, cache: bool) -> onnx.ModelProto:
    """The ONNX model for ``params`` (a dict of numpy arrays, as model.init_params lays out)."""
    g = Graph()
    D, H, hd, L, V = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.n_layer, cfg.vocab_size
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731

    wte = g.init("wte", f32(params["wte"]))
    wpe = g.init("wpe", f32(params["wpe"]))

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info(
            "attention_mask", TensorProto.INT64, ["batch", "total_seq" if cache else "seq"]
        ),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", V])]
    if cache:
        for i in range(L):
            for kv in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kv}", TensorProto.FLOAT, ["batch", H, "past_seq", hd]))
                outputs.append(helper.make_tensor_value_info(
                    f"present.{i}.{kv}", TensorProto.FLOAT, ["batch", H, "total_seq", hd]))

    # embeddings
    x = g.op("Add", [g.op("Gather", [wte, "input_ids"], "tok", axis=0),
                     g.op("Gather", [wpe, "position_ids"], "pos", axis=0)], "x")

    # mask [batch, 1, seq, total_seq]: causal over absolute positions, and attention_mask
    one = g.const("one", np.array(1, np.int64))
    seq = g.op("Shape", ["input_ids"], "seq", start=1, end=2)  # [1]
    if cache:
        past = g.op("Shape", ["past_key_values.0.key"], "past", start=2, end=3)  # [1]
        past_s = g.op("Squeeze", [past], "past_s")
        total_s = g.op("Squeeze", [g.op("Add", [past, seq], "total")], "total_s")
    else:
        past_s = g.const("zero", np.array(0, np.int64))
        total_s = g.op("Squeeze", [seq], "seq_s")
    zero = g.const("zero", np.array(0, np.int64))
    q_pos = g.op("Range", [past_s, total_s, one], "q_pos")  # [seq]
    k_pos = g.op("Range", [zero, total_s, one], "k_pos")  # [total_seq]
    q_col = g.op("Unsqueeze", [q_pos, g.const("axes", np.array([1], np.int64))], "q_col")
    causal = g.op("LessOrEqual", [k_pos, q_col], "causal")  # [seq, total_seq]
    keep = g.op("Cast", ["attention_mask"], "keep", to=TensorProto.BOOL)
    keep = g.op("Unsqueeze", [keep, g.const("axes", np.array([1, 2], np.int64))], "keep4")
    allowed = g.op("And", [causal, keep], "allowed")  # [batch, 1, seq, total_seq]
    masked = g.const("masked", np.array(MASKED, np.float32))

    heads_shape = g.const("heads_shape", np.array([0, 0, H, hd], np.int64))
    merge_shape = g.const("merge_shape", np.array([0, 0, D], np.int64))
    split3 = g.const("split3", np.array([D, D, D], np.int64))
    scale = g.const("scale", np.array(1.0 / math.sqrt(hd), np.float32))
    half = g.const("half", np.array(0.5, np.float32))
    onef = g.const("onef", np.array(1.0, np.float32))
    rsqrt2 = g.const("rsqrt2", np.array(1.0 / math.sqrt(2.0), np.float32))

    def layer_norm(x, gamma, beta, hint):
        return g.op("LayerNormalization", [x, g.init(f"{hint}.weight", f32(gamma)),
                                           g.init(f"{hint}.bias", f32(beta))],
                    hint, axis=-1, epsilon=LN_EPS)

    def linear(x, w, b, hint):
        y = g.op("MatMul", [x, g.init(f"{hint}.weight", f32(w))], hint)
        return g.op("Add", [y, g.init(f"{hint}.bias", f32(b))], hint)

    def heads(t, hint):  # [B, S, D] -> [B, H, S, hd]
        return g.op("Transpose", [g.op("Reshape", [t, heads_shape], hint)], hint, perm=[0, 2, 1, 3])

    for i in range(L):
        p = params[f"h{i}"]
        h = layer_norm(x, p["ln1_g"], p["ln1_b"], f"h.{i}.ln_1")
        qkv = linear(h, p["attn_w"], p["attn_b"], f"h.{i}.attn.c_attn")
        q, k, v = g.op("Split", [qkv, split3], outputs=[g.name(f"h{i}_{s}") for s in "qkv"], axis=2)
        q, k, v = heads(q, f"h{i}_q"), heads(k, f"h{i}_k"), heads(v, f"h{i}_v")
        if cache:
            k = g.op("Concat", [f"past_key_values.{i}.key", k], outputs=[f"present.{i}.key"], axis=2)
            v = g.op("Concat", [f"past_key_values.{i}.value", v], outputs=[f"present.{i}.value"], axis=2)
        kt = g.op("Transpose", [k], f"h{i}_kt", perm=[0, 1, 3, 2])
        scores = g.op("Mul", [g.op("MatMul", [q, kt], f"h{i}_qk"), scale], f"h{i}_scores")
        scores = g.op("Where", [allowed, scores, masked], f"h{i}_masked")
        probs = g.op("Softmax", [scores], f"h{i}_probs", axis=-1)
        att = g.op("MatMul", [probs, v], f"h{i}_att")
        att = g.op("Reshape", [g.op("Transpose", [att], f"h{i}_att_t", perm=[0, 2, 1, 3]), merge_shape],
                   f"h{i}_merged")
        x = g.op("Add", [x, linear(att, p["proj_w"], p["proj_b"], f"h.{i}.attn.c_proj")], f"h{i}_res1")
        h = layer_norm(x, p["ln2_g"], p["ln2_b"], f"h.{i}.ln_2")
        f = linear(h, p["fc_w"], p["fc_b"], f"h.{i}.mlp.c_fc")
        erf = g.op("Erf", [g.op("Mul", [f, rsqrt2], f"h{i}_fs")], f"h{i}_erf")
        f = g.op("Mul", [g.op("Mul", [f, half], f"h{i}_fh"), g.op("Add", [erf, onef], f"h{i}_e1")],
                 f"h{i}_gelu")
        x = g.op("Add", [x, linear(f, p["out_w"], p["out_b"], f"h.{i}.mlp.c_proj")], f"h{i}_res2")

    x = layer_norm(x, params["lnf_g"], params["lnf_b"], "ln_f")
    head = g.op("Transpose", [wte], "lm_head", perm=[1, 0])  # tied to the token embedding
    g.op("MatMul", [x, head], outputs=["logits"])

    graph = helper.make_graph(g.nodes, "tiny-gpt" if cache else "tiny-gpt-nocache", inputs, outputs,
                              initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pipe examples/models/tiny-gpt")
    model.ir_version = IR_VERSION
    model.doc_string = (
        "tiny-gpt: a small GPT-style decoder trained on generated children's stories. "
        + ("Inputs input_ids, attention_mask, position_ids, past_key_values.{i}.key/value; "
           "outputs logits, present.{i}.key/value." if cache else
           "Inputs input_ids, attention_mask, position_ids; output logits (no KV cache).")
    )
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------------------------
# running the exported models


class Runner:
    """An onnxruntime session over model.onnx or model_nocache.onnx."""

    def __init__(self, path: Path, cfg: Config):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.cfg = cfg
        self.cache = any(i.name.startswith("past_key_values.") for i in self.sess.get_inputs())

    def empty_past(self, batch: int) -> dict:
        c = self.cfg
        z = np.zeros((batch, c.n_head, 0, c.head_dim), np.float32)
        return {f"past_key_values.{i}.{kv}": z for i in range(c.n_layer) for kv in ("key", "value")}

    def __call__(self, ids, mask, pos, past=None):
        feed = {"input_ids": np.asarray(ids, np.int64), "attention_mask": np.asarray(mask, np.int64),
                "position_ids": np.asarray(pos, np.int64)}
        if self.cache:
            feed.update(past if past is not None else self.empty_past(len(ids)))
        outs = self.sess.run(None, feed)
        names = [o.name for o in self.sess.get_outputs()]
        logits = outs[names.index("logits")]
        present = {n.replace("present.", "past_key_values."): o
                   for n, o in zip(names, outs) if n.startswith("present.")}
        return logits, present


def positions(mask: np.ndarray) -> np.ndarray:
    """position_ids from an attention mask: ``max(cumsum(mask) - 1, 0)``."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def left_pad(prompts: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    n = max(len(p) for p in prompts)
    ids = np.full((len(prompts), n), pad, np.int64)
    mask = np.zeros((len(prompts), n), np.int64)
    for r, p in enumerate(prompts):
        ids[r, n - len(p):] = p
        mask[r, n - len(p):] = 1
    return ids, mask


def greedy_cached(run: Runner, prompts: list[list[int]], new: int, pad: int,
                  margins: list | None = None) -> np.ndarray:
    """``new`` greedy tokens per prompt (no early stop) with the KV cache, left-padded batch.

    If ``margins`` is a list, each step's gap between the best and second-best logit (per row)
    is appended to it."""
    ids, mask = left_pad(prompts, pad)
    logits, past = run(ids, mask, positions(mask))
    out = []
    for step in range(new):
        nxt = logits[:, -1].argmax(-1)
        out.append(nxt)
        if margins is not None:
            top2 = np.sort(logits[:, -1], axis=-1)[:, -2:]
            margins.append(top2[:, 1] - top2[:, 0])
        if step == new - 1:
            break
        mask = np.concatenate([mask, np.ones((len(ids), 1), np.int64)], axis=1)
        logits, past = run(nxt[:, None], mask, positions(mask)[:, -1:], past)
    return np.stack(out, axis=1)


def greedy_nocache(run: Runner, prompts: list[list[int]], new: int, pad: int) -> np.ndarray:
    """The same, re-feeding the whole sequence each step."""
    ids, mask = left_pad(prompts, pad)
    out = []
    for _ in range(new):
        logits, _ = run(ids, mask, positions(mask))
        nxt = logits[:, -1].argmax(-1)
        out.append(nxt)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones((len(ids), 1), np.int64)], axis=1)
    return np.stack(out, axis=1)


# --------------------------------------------------------------------------------------------
# checks


def check_logits(params: dict, cfg: Config, cached: Runner, nocache: Runner, tok) -> float:
    """Max |ONNX - jax| over logits of a left-padded batch, for both models and a split prefill."""
    import jax.numpy as jnp

    from model import forward

    prompts = [tok.encode(p).ids for p in PROMPTS[:3]]
    ids, mask = left_pad(prompts, 0)
    pos = positions(mask)
    jparams = {k: (jnp.asarray(v) if not isinstance(v, dict) else {a: jnp.asarray(b) for a, b in v.items()})
               for k, v in params.items()}
    ref = np.asarray(forward(jparams, cfg, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pos)))
    worst = 0.0
    a, _ = nocache(ids, mask, pos)
    worst = max(worst, float(np.abs(a - ref).max()))
    b, _ = cached(ids, mask, pos)
    worst = max(worst, float(np.abs(b - ref).max()))
    m = ids.shape[1] // 2  # prefill in two chunks: the second one sees the first through the cache
    c1, past = cached(ids[:, :m], mask[:, :m], pos[:, :m])
    c2, _ = cached(ids[:, m:], mask, pos[:, m:], past)
    c = np.concatenate([c1, c2], axis=1)
    # (a padding query sees no key at all, so its output is a don't-care that depends on how
    # many keys the step had: compare the real tokens' logits only)
    real = mask.astype(bool)
    worst = max(worst, float(np.abs(c - ref)[real].max()))
    # and a full 128-token window of the training kind
    full = np.asarray(tok.encode(" ".join(["Once upon a time, there was a big dog named Max."] * 12)).ids)
    full = full[None, : cfg.n_positions]
    fm = np.ones_like(full)
    fp = positions(fm)
    ref2 = np.asarray(forward(jparams, cfg, jnp.asarray(full), jnp.asarray(fm), jnp.asarray(fp)))
    d, _ = cached(full, fm, fp)
    worst = max(worst, float(np.abs(d - ref2).max()))
    return worst


def main(params: dict, cfg: Config, tok, out_dir: Path = HERE) -> dict:
    """Export both models, check them, and write reference.json. Returns the check results."""
    eot = tok.token_to_id("<|endoftext|>")
    for cache, fname in ((True, "model.onnx"), (False, "model_nocache.onnx")):
        onnx.save(build(params, cfg, cache), str(out_dir / fname))
    cached = Runner(out_dir / "model.onnx", cfg)
    nocache = Runner(out_dir / "model_nocache.onnx", cfg)

    results = {"max_abs_logit_diff": check_logits(params, cfg, cached, nocache, tok)}
    assert results["max_abs_logit_diff"] < 1e-4, results

    prompts = [tok.encode(p).ids for p in PROMPTS]
    batch = PROMPTS[:3]
    batch_ids = [tok.encode(p).ids for p in batch]
    a = greedy_cached(cached, batch_ids, MAX_NEW_TOKENS, eot)
    b = greedy_nocache(nocache, batch_ids, MAX_NEW_TOKENS, eot)
    alone = [greedy_cached(cached, [p], MAX_NEW_TOKENS, eot)[0] for p in batch_ids]
    alone_nc = [greedy_nocache(nocache, [p], MAX_NEW_TOKENS, eot)[0] for p in batch_ids]
    results["batched_cached_eq_batched_nocache"] = bool((a == b).all())
    results["batched_eq_alone"] = bool(all((a[r] == alone[r]).all() for r in range(len(batch))))
    results["alone_cached_eq_alone_nocache"] = bool(
        all((alone[r] == alone_nc[r]).all() for r in range(len(batch))))
    assert all(v for k, v in results.items() if k != "max_abs_logit_diff"), results

    # reference.json: each prompt alone (and with <|endoftext|> put first), greedy, 20 new tokens,
    # stopping after <|endoftext|> if it comes.
    cases = []
    for text, ids in zip(PROMPTS, prompts):
        for with_bos in (False, True):
            p = ([eot] if with_bos else []) + ids
            margins: list = []
            gen = [int(t) for t in greedy_cached(cached, [p], MAX_NEW_TOKENS, eot, margins)[0]]
            if eot in gen:
                gen = gen[: gen.index(eot) + 1]
            margin = float(min(m[0] for m in margins[: len(gen)]))
            first, _ = cached(np.asarray([p]), np.ones((1, len(p))), positions(np.ones((1, len(p)))))
            last = first[0, -1]
            top = np.argsort(-last)[:5]
            cases.append({
                "prompt": text,
                "bos_prepended": with_bos,
                "prompt_ids": p,
                "new_ids": gen,
                "tokens": p + gen,
                "text": tok.decode(gen, skip_special_tokens=True),
                "first_step_top5": {"ids": [int(t) for t in top],
                                    "logits": [round(float(last[t]), 4) for t in top]},
                "min_top1_margin": round(margin, 4),
            })
    batched = {
        "prompts": batch,
        "prompt_ids": batch_ids,
        "padding": "left, with pad_token_id 0; attention_mask 0 on padding",
        "new_ids": [[int(t) for t in row] for row in a],
    }
    reference = {
        "model": "model.onnx (model_nocache.onnx gives the same tokens)",
        "tokenizer": "tokenizer.json (adds no special tokens; prompt_ids are its encode() output, "
                     "with <|endoftext|> = 0 put first where bos_prepended)",
        "decoding": "greedy (argmax; the lowest id wins a tie), max_new_tokens 20, stop after "
                    "eos_token_id 0 (kept in new_ids); text is decode(new_ids) without special tokens",
        "position_ids": "max(cumsum(attention_mask) - 1, 0)",
        "special_tokens": {"<|endoftext|>": eot, "bos_token_id": eot, "eos_token_id": eot,
                           "pad_token_id": eot},
        "cases": cases,
        "batched_left_padded": batched,
        "checks": results,
        "note": "min_top1_margin: the smallest gap between the best and second-best logit over "
                "the generated steps; the tokens are stable under float noise well below it",
    }
    text = json.dumps(reference, indent=1)
    # lists of numbers on one line
    text = re.sub(r"\[\s+(-?[\d.e+-]+(?:,\s+-?[\d.e+-]+)*)\s+\]",
                  lambda m: "[" + ", ".join(m.group(1).split(",")).replace(",  ", ", ").replace("\n", "")
                  .replace(" ", "").replace(",", ", ") + "]", text)
    (out_dir / "reference.json").write_text(text + "\n")
    return {"results": results, "cases": cases, "batched": batched}


if __name__ == "__main__":
    from tokenizers import Tokenizer

    cfg = Config(**json.loads((HERE / "build" / "config.json").read_text()))
    flat = dict(np.load(HERE / "build" / "params.npz"))
    params: dict = {}
    for k, v in flat.items():
        if "/" in k:
            a, b = k.split("/")
            params.setdefault(a, {})[b] = v
        else:
            params[k] = v
    out = main(params, cfg, Tokenizer.from_file(str(HERE / "tokenizer.json")))
    print(json.dumps(out["results"], indent=1))
    for c in out["cases"]:
        print(repr(c["prompt"]), "bos" if c["bos_prepended"] else "   ", "->", repr(c["text"]))
