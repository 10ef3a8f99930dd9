"""Make tiny-gpt from nothing: corpus, tokenizer, training, ONNX export, checks, reference.

    .venv/bin/python examples/models/tiny-gpt/train.py

writes, beside this file: tokenizer.json, model.onnx, model_nocache.onnx, config.json,
generation_config.json and reference.json (and build/, ignored by git: the corpus as text, the
trained weights and a log). Everything is seeded and a rerun writes the same bytes; on the
2-core machine it was made on, the whole run takes about two minutes when the machine is quiet,
most of it training.

The corpus comes from stories.py (a grammar of children's stories, the project's own text).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

import export  # noqa: E402
import stories  # noqa: E402
from model import Config, count_params, forward, init_params  # noqa: E402

EOT = "<|endoftext|>"
N_STORIES = 3000
VAL_FRACTION = 0.05
CORPUS_SEED = 0
VOCAB_SIZE = 1024
CFG = Config(vocab_size=VOCAB_SIZE, n_layer=2, n_head=4, n_embd=96, n_positions=128)
BATCH = 8
STEPS = 1800
PEAK_LR = 6e-3
WARMUP = 30
WEIGHT_DECAY = 0.1
TRAIN_SEED = 0
MAX_LENGTH = 128


def make_tokenizer(texts: list[str]) -> Tokenizer:
    """Byte-level BPE (GPT-2's pre-tokenizer and decoder), <|endoftext|> = id 0."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    assert tok.token_to_id(EOT) == 0 and tok.get_vocab_size() == VOCAB_SIZE
    return tok


def stream(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """All texts as one token stream, each story preceded by <|endoftext|>."""
    eot = tok.token_to_id(EOT)
    out: list[int] = []
    for enc in tok.encode_batch(texts):
        out.append(eot)
        out.extend(enc.ids)
    out.append(eot)
    return np.asarray(out, np.int32)


def name_recall(params, cfg: Config, tok: Tokenizer, texts: list[str]) -> tuple[float, int]:
    """Top-1 accuracy on character names that already came up earlier in the same story.

    A name is mostly unpredictable the first time and fully predictable after, so this shows
    whether the model learned to carry a story's characters along (copying from the context).
    """
    names = set()
    for n in stories.GIRLS + stories.BOYS:
        for form in (n, " " + n):
            ids = tok.encode(form).ids
            if len(ids) == 1:
                names.add(ids[0])
    rows = [([tok.token_to_id(EOT)] + tok.encode(t).ids)[: cfg.n_positions] for t in texts]
    batch = np.zeros((len(rows), cfg.n_positions), np.int32)  # right padding: causal, harmless
    for r, ids in enumerate(rows):
        batch[r, : len(ids)] = ids
    predict = jax.jit(lambda p, x: forward(p, cfg, x).argmax(-1))
    pred = np.concatenate([np.asarray(predict(params, jnp.asarray(batch[i: i + 32])))
                           for i in range(0, len(batch), 32)])
    hit = total = 0
    for r, ids in enumerate(rows):
        for j in range(1, len(ids)):
            if ids[j] in names and ids[j] in ids[:j]:
                total += 1
                hit += int(pred[r, j - 1] == ids[j])
    return hit / max(total, 1), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--lr", type=float, default=PEAK_LR)
    ap.add_argument("--layers", type=int, default=CFG.n_layer)
    ap.add_argument("--embd", type=int, default=CFG.n_embd)
    ap.add_argument("--train-only", action="store_true", help="stop after training (for trying settings)")
    args = ap.parse_args()
    build = HERE / "build"
    build.mkdir(exist_ok=True)
    t_start = time.time()

    # corpus: the last 5% of the stories are held out
    texts = stories.stories(N_STORIES, CORPUS_SEED)
    n_val = int(round(N_STORIES * VAL_FRACTION))
    train_texts, val_texts = texts[:-n_val], texts[-n_val:]
    (build / "corpus.txt").write_text(f"\n{EOT}\n".join(texts) + "\n")

    tok = make_tokenizer(train_texts)
    tok.save(str(HERE / "tokenizer.json"))
    train_ids, val_ids = stream(tok, train_texts), stream(tok, val_texts)
    print(f"corpus: {len(train_texts)} train / {len(val_texts)} val stories, "
          f"{sum(map(len, texts)):,} characters; {len(train_ids):,} train / {len(val_ids):,} val tokens",
          flush=True)

    # model and optimiser
    cfg = Config(vocab_size=VOCAB_SIZE, n_layer=args.layers, n_head=CFG.n_head, n_embd=args.embd,
                 n_positions=CFG.n_positions)
    T = cfg.n_positions
    params = init_params(cfg, jax.random.PRNGKey(TRAIN_SEED))
    n_params = count_params(params)
    print(f"model: {cfg}, {n_params:,} parameters", flush=True)
    warmup = min(WARMUP, args.steps // 2)
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, args.steps, args.lr * 0.05)
    decay_mask = jax.tree_util.tree_map_with_path(
        lambda path, x: x.ndim == 2 and "wpe" not in jax.tree_util.keystr(path), params)
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=WEIGHT_DECAY, mask=decay_mask))
    state = opt.init(params)

    def loss_fn(p, batch):
        logits = forward(p, cfg, batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

    @jax.jit
    def step(p, s, batch):
        loss, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    @jax.jit
    def eval_loss(p, batch):
        logits = forward(p, cfg, batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).sum()

    # validation: the held-out stream cut into consecutive windows of T+1 tokens, T predicted each
    n_win = (len(val_ids) - 1) // T
    val_windows = np.stack([val_ids[i * T: i * T + T + 1] for i in range(n_win)])

    def validate(p) -> float:
        total = sum(float(eval_loss(p, jnp.asarray(val_windows[i:i + 32])))
                    for i in range(0, n_win, 32))
        return total / (n_win * T)

    rng = np.random.default_rng(TRAIN_SEED)
    log = []
    t0 = time.time()
    for i in range(1, args.steps + 1):
        starts = rng.integers(0, len(train_ids) - T - 1, args.batch)
        batch = jnp.asarray(np.stack([train_ids[s: s + T + 1] for s in starts]))
        params, state, loss = step(params, state, batch)
        if i % 100 == 0 or i == args.steps:
            loss = float(loss)
            entry = {"step": i, "train_loss": round(loss, 4), "seconds": round(time.time() - t0, 1)}
            if i % 300 == 0 or i == args.steps:
                entry["val_loss"] = round(validate(params), 4)
            log.append(entry)
            print(entry, flush=True)
    train_seconds = time.time() - t0
    val_loss = validate(params)
    print(f"training: {args.steps} steps of {args.batch}x{T} tokens in {train_seconds:.0f} s; "
          f"validation loss {val_loss:.4f} nats/token, perplexity {math.exp(val_loss):.3f}", flush=True)
    recall, n_recall = name_recall(params, cfg, tok, val_texts)
    print(f"repeated-name top-1 accuracy on the validation stories: {recall:.3f} ({n_recall} names)"
          f" [{time.time() - t_start:.0f} s]", flush=True)

    params = jax.tree_util.tree_map(np.asarray, params)
    flat = {}
    for k, v in params.items():
        if isinstance(v, dict):
            flat.update({f"{k}/{a}": b for a, b in v.items()})
        else:
            flat[k] = v
    np.savez(build / "params.npz", **flat)
    (build / "config.json").write_text(json.dumps(cfg.to_dict()) + "\n")
    if args.train_only:
        return

    eot = tok.token_to_id(EOT)
    write_configs(cfg, eot, HERE)

    out = export.main(params, cfg, tok)
    print("checks:", json.dumps(out["results"]), f"[{time.time() - t_start:.0f} s]", flush=True)
    for c in out["cases"]:
        print(f"  {c['prompt']!r}{' (bos first)' if c['bos_prepended'] else ''} -> {c['text']!r}")

    # a few longer greedy stories for the model card
    cached = export.Runner(HERE / "model.onnx", cfg)
    samples = []
    for prompt in ["Once upon a time,", "There once was a brave little",
                   "Sam was a tiny bird who lived near a big tree. One day, Sam found three",
                   "Lily was a small bunny. One day, Lily wanted to make"]:
        ids = [eot] + tok.encode(prompt).ids
        gen = [int(t) for t in export.greedy_cached(cached, [ids], MAX_LENGTH - len(ids), eot)[0]]
        if eot in gen:
            gen = gen[: gen.index(eot)]
        samples.append(prompt + tok.decode(gen))
        print("  sample:", samples[-1], f"[{time.time() - t_start:.0f} s]", flush=True)
    total_seconds = time.time() - t_start
    summary = {
        "parameters": n_params,
        "config": cfg.to_dict(),
        "steps": args.steps,
        "batch": args.batch,
        "peak_lr": args.lr,
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(total_seconds, 1),
        "val_loss": round(val_loss, 4),
        "val_perplexity": round(math.exp(val_loss), 3),
        "val_repeated_name_accuracy": round(recall, 4),
        "val_repeated_names": n_recall,
        "log": log,
        "checks": out["results"],
        "samples": samples,
        "jax": jax.__version__,
        "cpus": os.cpu_count(),
    }
    (build / "train_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    sizes = {f: (HERE / f).stat().st_size for f in
             ["model.onnx", "model_nocache.onnx", "tokenizer.json", "config.json",
              "generation_config.json", "reference.json"]}
    print("sizes:", sizes)
    print(f"done in {total_seconds:.0f} s")


def write_configs(cfg, eot: int, out: Path) -> None:
    """config.json and generation_config.json for pipe's model.generate (and for transformers):
    GPT-2's config keys, end-of-text as bos, eos and pad."""
    hf_config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "n_inner": 4 * cfg.n_embd,
        "n_positions": cfg.n_positions,
        "n_ctx": cfg.n_positions,
        "activation_function": "gelu",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    gen_config = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
                  "max_length": MAX_LENGTH, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen_config, indent=2) + "\n")


if __name__ == "__main__":
    main()
