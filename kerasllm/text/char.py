"""Character tokenizer for language models: one id per Unicode code point (Chinese included).

Id 0 is reserved for characters not seen in training (they decode to ``unknown``), so any
text can be encoded. Plain Python/NumPy, so the TFLite runtime needs no TensorFlow.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

UNK = 0


class CharTokenizer:
    kind = "char"

    def __init__(self, unknown="\ufffd"):
        self.unknown = unknown
        self.chars = None

    def fit(self, text, max_chars=None):
        """Learn the vocabulary: every distinct character of ``text`` (the ``max_chars`` most frequent, if given)."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"text must be a non-empty str, got {type(text).__name__}")
        counts = Counter(text)
        chars = sorted(counts) if max_chars is None else sorted(c for c, _ in counts.most_common(max_chars))
        self._set(chars)
        return self

    def _set(self, chars):
        self.chars = list(chars)
        self._index = {c: i + 1 for i, c in enumerate(self.chars)}
        self._lookup = np.array([self.unknown] + self.chars, dtype=object)

    def _check(self):
        if self.chars is None:
            raise RuntimeError("CharTokenizer is not fitted: call fit(text) first")

    @property
    def vocab_size(self) -> int:
        self._check()
        return len(self.chars) + 1

    def encode(self, text) -> np.ndarray:
        """``text`` -> int32 ids (unseen characters -> 0)."""
        self._check()
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        get = self._index.get
        return np.fromiter((get(c, UNK) for c in text), dtype=np.int32, count=len(text))

    def decode(self, ids) -> str:
        self._check()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        ids = np.where((ids < 0) | (ids >= len(self._lookup)), UNK, ids)
        return "".join(self._lookup[ids])

    def get_config(self) -> dict:
        self._check()
        return {"kind": self.kind, "chars": "".join(self.chars), "unknown": self.unknown}

    @classmethod
    def from_config(cls, config):
        tok = cls(unknown=config.get("unknown", "\ufffd"))
        tok._set(list(config["chars"]))
        return tok
