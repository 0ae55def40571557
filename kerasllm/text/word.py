"""Word tokenizer: one definition, run two ways with identical ids.

- ``WordTokenizer.encode`` runs in plain Python/NumPy (the TFLite path: TFLite has no string ops).
- ``kerasllm.text.word_graph.GraphWordTokenizer`` runs the same rules as TensorFlow string ops,
  so a SavedModel takes raw strings.

Rules: lower-case; every punctuation or symbol character (emoji included) and every CJK
character is a token of its own (so Chinese and Japanese need no spaces); any other run of
non-separator characters is a token. Ids: 0 is padding, 1 is out-of-vocabulary.

The character classes are computed from ``unicodedata`` once and stored in the tokenizer's
config, so a model saved under one Python keeps the same classes under another.
"""
from __future__ import annotations

import re
import sys
import unicodedata
from collections import Counter
from functools import lru_cache

import numpy as np

PAD, OOV = 0, 1
SPECIAL_TOKENS = ["[PAD]", "[UNK]"]

# Han ideographs, kana, CJK punctuation and full-width forms: split per character.
CJK_RANGES = [
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3000, 0x30FF),  # CJK symbols and punctuation, Hiragana, Katakana
    (0x3100, 0x31FF),  # Bopomofo, Katakana extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF00, 0xFFEF),  # half-width and full-width forms
    (0x20000, 0x3134F),  # CJK extensions B-G
]

# Characters that Python's str.lower() changes but TensorFlow 2.21's ICU does not know yet
# (Unicode 14 additions). Kept as they are on the Python side so both ways agree.
_TF_UNLOWERED = "\u2c2f\ua7c0\ua7d0\ua7d6\ua7d8" + "".join(
    chr(c) for c in range(0x10570, 0x10596) if c not in (0x1057B, 0x1058B, 0x10593)
)


def _to_ranges(codepoints):
    ranges = []
    for c in codepoints:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return ranges


@lru_cache(maxsize=1)
def default_classes():
    """(split_ranges, separator_ranges) from this Python's Unicode tables."""
    split, sep = [], []
    cjk = set()
    for lo, hi in CJK_RANGES:
        cjk.update(range(lo, hi + 1))
    for c in range(sys.maxunicode + 1):
        if 0xD800 <= c <= 0xDFFF:
            continue
        ch = chr(c)
        cat = unicodedata.category(ch)
        if ch.isspace() or cat == "Cc":
            sep.append(c)
        elif cat[0] in "PS" or c in cjk:
            split.append(c)
    return _to_ranges(split), _to_ranges(sep)


def _class(ranges, escape):
    parts = []
    for lo, hi in ranges:
        parts.append(escape(lo) if lo == hi else f"{escape(lo)}-{escape(hi)}")
    return "[" + "".join(parts) + "]"


def python_class(ranges):
    return _class(ranges, lambda c: f"\\U{c:08x}")


def re2_class(ranges):
    return _class(ranges, lambda c: f"\\x{{{c:x}}}")


_UNLOWERED_RE = re.compile("([" + re.escape(_TF_UNLOWERED) + "])")


def lower(text: str) -> str:
    """Lower-case exactly as ``tf.strings.lower(..., encoding='utf-8')`` does."""
    if text.isascii():
        return text.lower()
    if _UNLOWERED_RE.search(text) is None:
        return text.lower()
    return "".join(p if i % 2 else p.lower() for i, p in enumerate(_UNLOWERED_RE.split(text)))


def check_texts(texts, name="texts"):
    """Validate a list of strings; returns it as a list. A bare string is a mistake, not a list."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a list of strings, got a single {type(texts).__name__}; wrap it in a list")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(t).__name__}: {t!r:.60}")
    return texts


class WordTokenizer:
    """Lower-case, punctuation- and CJK-splitting word tokenizer with a capped vocabulary."""

    def __init__(self, vocabulary=None, max_length=64, split_ranges=None, separator_ranges=None):
        if split_ranges is None or separator_ranges is None:
            split_ranges, separator_ranges = default_classes()
        self.split_ranges = [list(r) for r in split_ranges]
        self.separator_ranges = [list(r) for r in separator_ranges]
        self.max_length = int(max_length)
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        split = python_class(self.split_ranges)
        other = "[^" + python_class(self.split_ranges)[1:-1] + python_class(self.separator_ranges)[1:-1] + "]"
        self._token_re = re.compile(f"{split}|{other}+")
        self._index = None if vocabulary is None else {t: i for i, t in enumerate(self.vocabulary)}

    # -- vocabulary ---------------------------------------------------------------------------
    def fit(self, texts, max_tokens=20000, min_count=1):
        """Build the vocabulary from ``texts``: the most frequent tokens, ties broken by text."""
        texts = check_texts(texts)
        if max_tokens < 3:
            raise ValueError(f"max_tokens must be at least 3 (padding, OOV and one token), got {max_tokens}")
        counts = Counter()
        for t in texts:
            counts.update(self.split(t))
        ranked = sorted((c for c in counts.items() if c[1] >= min_count), key=lambda kv: (-kv[1], kv[0]))
        self.vocabulary = SPECIAL_TOKENS + [tok for tok, _ in ranked[: max_tokens - len(SPECIAL_TOKENS)]]
        self._index = {t: i for i, t in enumerate(self.vocabulary)}
        return self

    @property
    def vocab_size(self):
        self._require_fit()
        return len(self.vocabulary)

    def _require_fit(self):
        if self.vocabulary is None:
            raise RuntimeError("the tokenizer has no vocabulary yet: call fit(texts) first")

    # -- Python way ---------------------------------------------------------------------------
    def split(self, text: str):
        return self._token_re.findall(lower(text))

    def encode(self, texts, max_length=None):
        """int32 array [len(texts), max_length]: ids, right-padded with 0, truncated at max_length."""
        self._require_fit()
        texts = check_texts(texts)
        length = self.max_length if max_length is None else int(max_length)
        out = np.zeros((len(texts), length), dtype=np.int32)
        get = self._index.get
        for row, text in enumerate(texts):
            ids = [get(tok, OOV) for tok in self.split(text)[:length]]
            out[row, : len(ids)] = ids
        return out

    def encode_one(self, text: str, out):
        """Fill the preallocated int32 row ``out`` with the ids of one text (the fast path)."""
        get = self._index.get
        ids = [get(tok, OOV) for tok in self._token_re.findall(lower(text))[: out.shape[-1]]]
        out[:] = 0
        out[: len(ids)] = ids
        return out

    def lengths(self, texts):
        return [len(self.split(t)) for t in check_texts(texts)]

    # -- persistence --------------------------------------------------------------------------
    def get_config(self):
        self._require_fit()
        return {
            "type": "word",
            "vocabulary": self.vocabulary,
            "max_length": self.max_length,
            "split_ranges": self.split_ranges,
            "separator_ranges": self.separator_ranges,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.pop("type", "word") != "word":
            raise ValueError(f"not a word tokenizer config: type={config.get('type')!r}")
        return cls(**config)
