"""Subword tokenizer for language models: byte-level BPE trained with Hugging Face ``tokenizers``.

Byte-level, so any text (any script, emoji) encodes without unknown tokens. The trained
tokenizer is stored as its JSON inside the model's config, so it travels with the model.
"""
from __future__ import annotations

import numpy as np


class SubwordTokenizer:
    kind = "subword"

    def __init__(self, vocab_size=2048):
        if not isinstance(vocab_size, int) or vocab_size < 300:
            raise ValueError(f"vocab_size must be an int >= 300 (256 bytes + merges), got {vocab_size!r}")
        self.requested_vocab_size = vocab_size
        self._tok = None

    def fit(self, text):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if not isinstance(text, str) or not text:
            raise ValueError(f"text must be a non-empty str, got {type(text).__name__}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=self.requested_vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        lines = text.splitlines(keepends=True)
        tok.train_from_iterator((lines[i:i + 1000] for i in range(0, len(lines), 1000)), trainer)
        self._tok = tok
        return self

    def _check(self):
        if self._tok is None:
            raise RuntimeError("SubwordTokenizer is not fitted: call fit(text) first")

    @property
    def vocab_size(self) -> int:
        self._check()
        return self._tok.get_vocab_size()

    def encode(self, text) -> np.ndarray:
        self._check()
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return np.asarray(self._tok.encode(text).ids, dtype=np.int32)

    def encode_long(self, text, chunk_chars=100_000) -> np.ndarray:
        """Encode a whole corpus (in line-aligned chunks, in parallel)."""
        self._check()
        lines = text.splitlines(keepends=True)
        chunks, cur, size = [], [], 0
        for line in lines:
            cur.append(line)
            size += len(line)
            if size >= chunk_chars:
                chunks.append("".join(cur))
                cur, size = [], 0
        if cur:
            chunks.append("".join(cur))
        ids = [e.ids for e in self._tok.encode_batch(chunks)]
        return np.asarray([i for part in ids for i in part], dtype=np.int32)

    def decode(self, ids) -> str:
        self._check()
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)])

    def get_config(self) -> dict:
        self._check()
        return {"kind": self.kind, "vocab_size": self.requested_vocab_size, "json": self._tok.to_str()}

    @classmethod
    def from_config(cls, config):
        from tokenizers import Tokenizer

        tok = cls(vocab_size=config["vocab_size"])
        tok._tok = Tokenizer.from_str(config["json"])
        return tok


def tokenizer_from_config(config):
    """Rebuild a language-model tokenizer from its ``get_config()``."""
    from kerasllm.text.char import CharTokenizer

    kinds = {"char": CharTokenizer, "subword": SubwordTokenizer}
    if config.get("kind") not in kinds:
        raise ValueError(f"unknown tokenizer kind {config.get('kind')!r}; expected one of {sorted(kinds)}")
    return kinds[config["kind"]].from_config(config)
