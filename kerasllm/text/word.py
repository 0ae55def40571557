"""Word tokenizer: one definition, run two ways with identical ids.

- ``WordTokenizer.encode`` runs in plain Python/NumPy (the TFLite path: TFLite has no string ops).
- ``kerasllm.text.word_graph.GraphWordTokenizer`` runs the same rules as TensorFlow string ops,
  so a SavedModel takes raw strings.

Rules: lower-case; every punctuation or symbol character (emoji included) and every CJK
character is a token of its own (so Chinese and Japanese need no spaces); any other run of
non-separator characters is a token. Ids: 0 is padding; a token outside the vocabulary gets
one of four out-of-vocabulary ids by its shape (short number, long number such as a phone
number, letters mixed with digits, anything else), which keeps the signal an unseen number
carries (it matters for spam) without growing the vocabulary.

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
# Character n-grams come from a token's first MAX_GRAM_CHARS characters: a 10 MB "word" costs
# no more than a long one (the graph tokenizer applies the same cut).
MAX_GRAM_CHARS = 64
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[NUM]", "[LONGNUM]", "[ALNUM]"]
# Out-of-vocabulary shapes, tried in order; ASCII digits only so Python and RE2 agree.
OOV_SHAPES = ((3, "[0-9]{5,}"), (2, "[0-9]+"), (4, ".*[0-9].*"))

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
_FIRST_UNLOWERED = min(_TF_UNLOWERED)
_ASTRAL = "\U00010000"  # the first character outside the Basic Multilingual Plane


def lower(text: str, top: str | None = None) -> str:
    """Lower-case exactly as ``tf.strings.lower(..., encoding='utf-8')`` does. ``top``: ``max(text)``
    if the caller has it (a text below the first exception is plain ``str.lower``: the common case,
    and a C-speed test where the exception regex costs microseconds)."""
    if text.isascii():
        return text.lower()
    if (top or max(text)) < _FIRST_UNLOWERED or _UNLOWERED_RE.search(text) is None:
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
        if not t.isascii():
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                # a lone surrogate (e.g. from decoding with errors="surrogateescape"): it has no
                # UTF-8 form, so the SavedModel could not take it; reject it the same way everywhere
                raise ValueError(f"{name}[{i}] holds a lone surrogate {t[e.start]!r} at character {e.start}: "
                                 "texts must be valid Unicode (decode bytes with errors='replace')") from None
    return texts


class WordTokenizer:
    """Lower-case, punctuation- and CJK-splitting word tokenizer with a capped vocabulary.

    With ``char_ngrams=n`` it also emits the ids of the character n-grams of each word
    (``<word>`` with boundary marks, fastText's subword idea) from a second vocabulary whose ids
    follow the word ids; ``encode`` then returns ``[word ids | n-gram ids]`` side by side,
    ``max_length + max_char_grams`` columns. Unknown n-grams are dropped (id 0).
    """

    def __init__(self, vocabulary=None, max_length=64, split_ranges=None, separator_ranges=None,
                 char_ngrams=0, char_vocabulary=None, max_char_grams=None):
        if split_ranges is None or separator_ranges is None:
            split_ranges, separator_ranges = default_classes()
        self.split_ranges = [list(r) for r in split_ranges]
        self.separator_ranges = [list(r) for r in separator_ranges]
        self.max_length = int(max_length)
        self.char_ngrams = int(char_ngrams)
        self.max_char_grams = int(max_char_grams) if max_char_grams is not None else 4 * self.max_length
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        self.char_vocabulary = list(char_vocabulary or [])
        self._token_re = _token_regex(self.split_ranges, self.separator_ranges)
        # Most text is ASCII: the same rules restricted to ASCII make a much smaller, faster regex.
        self._ascii_token_re = _token_regex(_clip(self.split_ranges, 127), _clip(self.separator_ranges, 127))
        # Likewise below U+10000: Python's regex tests the classes' ranges above it one by one for
        # every character, so a text without emoji or rare CJK takes the clipped regex (measured:
        # 47 -> 5 us for an SMS with a pound sign); same tokens, as no character is left out.
        self._bmp_token_re = _token_regex(_clip(self.split_ranges, 0xFFFF), _clip(self.separator_ranges, 0xFFFF))
        self._shapes = [(i, re.compile(p)) for i, p in OOV_SHAPES]
        self._build_index()

    def _build_index(self):
        self._index = None if self.vocabulary is None else {t: i for i, t in enumerate(self.vocabulary)}
        offset = len(self.vocabulary or ())
        self._char_index = {g: offset + i for i, g in enumerate(self.char_vocabulary)}
        self._cache = {}  # token -> (word id, n-gram ids): the fast path looks each token up once

    def _oov(self, token):
        for i, pattern in self._shapes:
            if pattern.fullmatch(token):
                return i
        return OOV

    def _ids(self, tokens):
        index = self._index
        return [index[t] if t in index else self._oov(t) for t in tokens]

    def _grams(self, token):
        n, marked = self.char_ngrams, f"<{token[:MAX_GRAM_CHARS]}>"
        return [marked[i:i + n] for i in range(len(marked) - n + 1)]

    def _gram_ids(self, tokens):
        get = self._char_index.get
        ids = [get(g, 0) for t in tokens for g in self._grams(t)]
        return [i for i in ids if i][: self.max_char_grams]

    # -- vocabulary ---------------------------------------------------------------------------
    def fit(self, texts, max_tokens=20000, min_count=2, max_char_tokens=20000):
        """Build the vocabularies from ``texts``: the most frequent tokens (and character n-grams),
        at least ``min_count`` times, ties broken by text."""
        texts = check_texts(texts)
        if max_tokens <= len(SPECIAL_TOKENS):
            raise ValueError(f"max_tokens must exceed the {len(SPECIAL_TOKENS)} special tokens, got {max_tokens}")
        counts, gram_counts = Counter(), Counter()
        for t in texts:
            tokens = self.split(t)
            counts.update(tokens)
            if self.char_ngrams:
                for tok in tokens[: self.max_length]:
                    gram_counts.update(self._grams(tok))
        self.vocabulary = SPECIAL_TOKENS + _most_common(counts, min_count, max_tokens - len(SPECIAL_TOKENS))
        self.char_vocabulary = _most_common(gram_counts, min_count, max_char_tokens)
        self._build_index()
        return self

    @property
    def vocab_size(self):
        """Number of word ids (padding and OOV ids included)."""
        self._require_fit()
        return len(self.vocabulary)

    @property
    def total_vocab_size(self):
        """Word ids plus character n-gram ids."""
        return self.vocab_size + len(self.char_vocabulary)

    @property
    def width(self):
        """Columns of ``encode``'s output."""
        return self.max_length + (self.max_char_grams if self.char_ngrams else 0)

    def _require_fit(self):
        if self.vocabulary is None:
            raise RuntimeError("the tokenizer has no vocabulary yet: call fit(texts) first")

    # -- Python way ---------------------------------------------------------------------------
    def split(self, text: str):
        if text.isascii():
            return self._ascii_token_re.findall(text.lower())
        top = max(text)  # str.lower keeps every character below U+10000 there
        return (self._bmp_token_re if top < _ASTRAL else self._token_re).findall(lower(text, top))

    def _token_ids(self, token):
        """(word id, n-gram ids) of one token, memoised (bounded, so odd input cannot grow it forever)."""
        found = self._cache.get(token)
        if found is None:
            word = self._index[token] if token in self._index else self._oov(token)
            found = (word, tuple(self._gram_ids([token])) if self.char_ngrams else ())
            if len(self._cache) < 200_000 and len(token) <= MAX_GRAM_CHARS:
                self._cache[token] = found
        return found

    def encode(self, texts):
        """int32 array [len(texts), width]: word ids right-padded with 0 and truncated at
        max_length, then (with char_ngrams) the n-gram ids of those words, likewise padded."""
        self._require_fit()
        texts = check_texts(texts)
        out = np.zeros((len(texts), self.width), dtype=np.int32)
        for row, text in enumerate(texts):
            self.encode_one(text, out[row])
        return out

    def ids_one(self, text: str):
        """(word ids, character n-gram ids) of one text, truncated, unpadded."""
        words, grams = [], []
        get = self._cache.get
        for token in self.split(text)[: self.max_length]:
            found = get(token) or self._token_ids(token)  # the cache inlined: ~20% of this call
            words.append(found[0])
            grams += found[1]
        return words, grams[: self.max_char_grams] if len(grams) > self.max_char_grams else grams

    def encode_one(self, text: str, out, max_length=None):
        """Fill the preallocated int32 row ``out`` with the ids of one text: word ids in the first
        ``max_length`` columns (default: the tokenizer's), n-gram ids after them."""
        words, grams = self.ids_one(text)
        return fill_row(out, words, grams, max_length or self.max_length)

    def lengths(self, texts):
        return [len(self.split(t)) for t in check_texts(texts)]

    # -- persistence --------------------------------------------------------------------------
    def get_config(self):
        self._require_fit()
        return {
            "type": "word",
            "vocabulary": self.vocabulary,
            "max_length": self.max_length,
            "char_ngrams": self.char_ngrams,
            "char_vocabulary": self.char_vocabulary,
            "max_char_grams": self.max_char_grams,
            "split_ranges": self.split_ranges,
            "separator_ranges": self.separator_ranges,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.pop("type", "word") != "word":
            raise ValueError(f"not a word tokenizer config: type={config.get('type')!r}")
        return cls(**config)


def _token_regex(split_ranges, separator_ranges):
    """A token is one split character, or a run of characters that are neither split nor separator."""
    split = python_class(split_ranges)
    other = "[^" + split[1:-1] + python_class(separator_ranges)[1:-1] + "]"
    return re.compile(f"{split}|{other}+")


def _clip(ranges, top):
    return [[lo, min(hi, top)] for lo, hi in ranges if lo <= top]


def fill_row(out, words, grams, max_length):
    """Write word ids then n-gram ids into the int32 row ``out``, zero-padded (ids must fit)."""
    out[:] = 0
    out[: len(words)] = words
    out[max_length: max_length + len(grams)] = grams
    return out


def _most_common(counts, min_count, limit):
    ranked = sorted((kv for kv in counts.items() if kv[1] >= min_count), key=lambda kv: (-kv[1], kv[0]))
    return [item for item, _ in ranked[:limit]]
