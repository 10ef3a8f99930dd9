"""Validation loss of the exported tiny-gpt, measured through ONNX Runtime.

Regenerates the corpus with stories.py (deterministic: the same 3,000 stories train.py used),
takes the held-out last 5% of the stories, tokenizes them with the committed tokenizer.json into
one stream (each story preceded by <|endoftext|>), cuts it into consecutive windows of 128 + 1
tokens, and runs model_nocache.onnx over them: the mean cross-entropy of the 128 predicted tokens
per window is the validation loss the model card states.

    .venv/bin/python examples/models/tiny-gpt/evaluate.py
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

import stories

HERE = Path(__file__).parent
N_STORIES = 3000
VAL_FRACTION = 0.05
CORPUS_SEED = 0
T = 128


def main() -> None:
    texts = stories.stories(N_STORIES, seed=CORPUS_SEED)
    n_val = int(round(N_STORIES * VAL_FRACTION))
    tok = Tokenizer.from_file(str(HERE / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for enc in tok.encode_batch(texts[-n_val:]):
        ids.append(eot)
        ids.extend(enc.ids)
    ids.append(eot)
    stream = np.asarray(ids, np.int64)
    n_win = (len(stream) - 1) // T
    windows = np.stack([stream[i * T: i * T + T + 1] for i in range(n_win)])
    session = ort.InferenceSession(str(HERE / "model_nocache.onnx"), providers=["CPUExecutionProvider"])
    total = 0.0
    for i in range(0, n_win, 32):
        batch = windows[i:i + 32]
        x, y = batch[:, :-1], batch[:, 1:]
        mask = np.ones_like(x)
        pos = np.broadcast_to(np.arange(T, dtype=np.int64), x.shape).copy()
        (logits,) = session.run(["logits"], {"input_ids": x, "attention_mask": mask, "position_ids": pos})
        logits = logits.astype(np.float64)
        m = logits.max(-1, keepdims=True)
        logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
        picked = np.take_along_axis(logits, y[..., None], -1)[..., 0]
        total += float((logz - picked).sum())
    loss = total / (n_win * T)
    print(f"tiny-gpt: validation loss {loss:.4f} nats/token, perplexity {math.exp(loss):.3f} "
          f"({n_win * T:,} tokens of {n_val} held-out stories, through ONNX Runtime)")


if __name__ == "__main__":
    main()
