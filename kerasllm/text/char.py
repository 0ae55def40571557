"""Character tokenizer for language models: one id per Unicode code point (Chinese included).

Ids: 0 is padding and end-of-text (decodes to nothing), 1 is every character not seen in training
(decodes to ``unknown``), 2.. are the learned characters; so any text can be encoded and unknown
characters never look like padding. Tokenizers saved before this layout (no ``"layout"`` in the
config: 0 unknown, characters from 1, no end-of-text) load with their old ids.
Plain Python/NumPy, so the TFLite runtime needs no TensorFlow.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

PAD = END_OF_TEXT = 0
UNK = 1
LAYOUT = 2


class CharTokenizer:
    kind = "char"

    def __init__(self, unknown="\ufffd"):
        self.unknown = unknown
        self.chars = None
        self.layout = LAYOUT

    def fit(self, text, max_chars=None):
        """Learn the vocabulary: every distinct character of ``text`` (the ``max_chars`` most frequent, if given)."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"text must be a non-empty str, got {type(text).__name__}")
        counts = Counter(text)
        chars = sorted(counts) if max_chars is None else sorted(c for c, _ in counts.most_common(max_chars))
        self._set(chars)
        return self

    @property
    def unknown_id(self):
        return UNK if self.layout == LAYOUT else 0

    @property
    def end_of_text_id(self):
        return END_OF_TEXT if self.layout == LAYOUT else None

    @property
    def first_char_id(self):
        return 2 if self.layout == LAYOUT else 1

    def _set(self, chars):
        self.chars = list(chars)
        first = self.first_char_id
        self._index = {c: i + first for i, c in enumerate(self.chars)}
        self._lookup = np.array(([""] if self.layout == LAYOUT else []) + [self.unknown] + self.chars, dtype=object)

    def _check(self):
        if self.chars is None:
            raise RuntimeError("CharTokenizer is not fitted: call fit(text) first")

    @property
    def vocab_size(self) -> int:
        self._check()
        return len(self.chars) + self.first_char_id

    def encode(self, text) -> np.ndarray:
        """``text`` -> int32 ids (unseen characters -> ``unknown_id``)."""
        self._check()
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        get, unk = self._index.get, self.unknown_id
        return np.fromiter((get(c, unk) for c in text), dtype=np.int32, count=len(text))

    def decode(self, ids) -> str:
        self._check()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        ids = np.where((ids < 0) | (ids >= len(self._lookup)), self.unknown_id, ids)
        return "".join(self._lookup[ids])

    def get_config(self) -> dict:
        self._check()
        return {"kind": self.kind, "chars": "".join(self.chars), "unknown": self.unknown, "layout": self.layout}

    @classmethod
    def from_config(cls, config):
        tok = cls(unknown=config.get("unknown", "\ufffd"))
        tok.layout = config.get("layout", 1)
        tok._set(list(config["chars"]))
        return tok
