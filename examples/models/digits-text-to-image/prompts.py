"""The prompts the digits text-to-image model is trained on, and its CLIP-style tokenizer.

``phrases(digit)`` lists the training phrasings of one digit ("a handwritten seven", "the digit
7", ...). ``train_tokenizer`` learns byte-level BPE merges on them with ``tokenizers`` and writes
them in CLIP's slow layout (``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json``, as
``optimum-cli export onnx`` copies Stable Diffusion's tokenizer): the vocabulary is ordered as
CLIP's (the 256 byte symbols, the same with ``</w>``, one token per merge, then
``<|startoftext|>`` and ``<|endoftext|>``, so the end token has the highest id, which CLIP's
pooler relies on). ``load`` reads such a folder into the same ``tokenizers`` pipeline that pipe's
``preprocess.tokenize`` builds from it (stages/preprocess/src/tokenize.rs), and ``encode`` pads
and truncates to 77 ids with the end token, as ``CLIPTokenizer(padding="max_length")`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

MAX_LENGTH = 77
START, END = "<|startoftext|>", "<|endoftext|>"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = [
    "a handwritten {w}",
    "a handwritten digit {w}",
    "the digit {w}",
    "the number {w}",
    "a drawing of a {w}",
    "a photo of the number {w}",
    "{w}",
    "the digit {n}",
    "a handwritten {n}",
    "number {n}",
    "{n}",
]
"""Phrasings per digit: ``{w}`` is the digit's word, ``{n}`` its numeral."""

CLIP_SPLIT = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
"""transformers' CLIPTokenizer split of a text into words (the same regex as pipe's)."""


def phrases(digit: int) -> list[str]:
    """Every training phrasing of ``digit`` (0..9)."""
    return [t.format(w=WORDS[digit], n=digit) for t in TEMPLATES]


def _pipeline(model) -> Tokenizer:
    """CLIP's normalizer and pre-tokenizer around a BPE ``model`` (as transformers converts it)."""
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return tok


def byte_symbols() -> list[str]:
    """GPT-2's (and CLIP's) printable symbol of each byte 0..255, in CLIP's vocabulary order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), 256)
    symbols = {b: chr(b) for b in keep}
    extra = (b for b in range(256) if b not in symbols)
    symbols.update({b: chr(256 + i) for i, b in enumerate(extra)})
    return [symbols[b] for b in keep] + [symbols[b] for b in range(256) if b not in keep]


def train_tokenizer(folder: Path) -> None:
    """Learns BPE merges on every phrase and writes CLIP's tokenizer files into ``folder``."""
    texts = [p for d in range(10) for p in phrases(d)]
    tok = _pipeline(models.BPE(unk_token=END, end_of_word_suffix="</w>"))
    trainer = trainers.BpeTrainer(
        vocab_size=10_000,
        min_frequency=1,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
    )
    tok.train_from_iterator(texts, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in merges]
    alphabet = byte_symbols()
    vocab = alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges] + [START, END]
    folder.mkdir(parents=True, exist_ok=True)
    ids = {token: i for i, token in enumerate(dict.fromkeys(vocab))}
    (folder / "vocab.json").write_text(json.dumps(ids, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": MAX_LENGTH,
                "do_lower_case": True,
                "bos_token": START,
                "eos_token": END,
                "unk_token": END,
                "pad_token": END,
            },
            indent=2,
        )
        + "\n"
    )


class Encoder:
    """A tokenizer folder read as pipe reads it; ``encode`` gives CLIP's padded ids."""

    def __init__(self, folder: Path):
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#")]
        self.tok = _pipeline(
            models.BPE(vocab=vocab, merges=merges, unk_token=END, end_of_word_suffix="</w>")
        )
        self.start, self.end = vocab[START], vocab[END]
        self.vocab_size = len(vocab)

    def encode(self, text: str) -> list[int]:
        """``[START] + BPE ids + [END]``, truncated to 77 and padded with END."""
        ids = [self.start] + self.tok.encode(text, add_special_tokens=False).ids
        ids = ids[: MAX_LENGTH - 1] + [self.end]
        return ids + [self.end] * (MAX_LENGTH - len(ids))

    def batch(self, texts: list[str]) -> np.ndarray:
        """int32 ``[len(texts), 77]``."""
        return np.array([self.encode(t) for t in texts], dtype=np.int32)
