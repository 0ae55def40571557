"""TF-IDF features: texts -> sparse rows (scipy.sparse CSR, float32, unit L2 norm).

Tokens come from ``WordTokenizer.split`` (lower-case, punctuation and CJK split per character),
so Chinese needs no spaces. Features are word n-grams (words joined by a space) and, as an
option, character n-grams of each space-padded word (like scikit-learn's ``char_wb``), marked
with a leading ``\\x1f`` so they never collide with a word (tokens never hold control characters).

Single-character tokens (a letter, a digit, a punctuation mark) are dropped unless they are CJK
letters, which are words on their own (``keep_single_chars=False``, the default; scikit-learn's
default token pattern drops them too, and measured on the shared data sets keeping them costs
precision on TREC and the documentation topics).

Weights: ``1 + ln(tf)`` (sublinear) or ``tf``, times the smoothed idf ``ln((1 + n) / (1 + df)) + 1``
(scikit-learn's formula), then each row is scaled to unit length. The same rules run in-graph
in ``kerasllm.text.tfidf_graph``; ``ids_and_weights`` gives the fixed-width input of the TFLite
encoder.
"""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from functools import lru_cache
from itertools import chain, repeat

import numpy as np
import scipy.sparse as sp

from kerasllm.text.word import (_TF_UNLOWERED, CJK_RANGES, WordTokenizer, _to_ranges, check_texts, default_classes,
                                 lower, python_class, re2_class)

CHAR_MARK = "\x1f"
_CHUNK = 8192  # documents per chunk: keeps Python lists of feature ids short for million-doc corpora
MIN_WIDTH = 8


def bucket_width(longest):
    """Padded width of the encoders' inputs for rows of at most ``longest`` features: a power of
    two (at least MIN_WIDTH), so compiled encoders see few distinct shapes."""
    width = MIN_WIDTH
    while width < longest:
        width *= 2
    return width


OTHER, SPLIT, SEPARATOR = 0, 1, 2
# A one-character token is kept when it is a CJK letter (the same rule in-graph: tfidf_graph).
CJK_CLASS_RE2 = re2_class(CJK_RANGES)


@lru_cache(maxsize=1 << 16)
def keeps_single_char(ch):
    c = ord(ch)
    return unicodedata.category(ch)[0] == "L" and any(lo <= c <= hi for lo, hi in CJK_RANGES)


@lru_cache(maxsize=1 << 16)
def _char_class(ch):
    """The class ``default_classes`` gives one character (same rules, without tabulating Unicode)."""
    c = ord(ch)
    if 0xD800 <= c <= 0xDFFF:
        return OTHER
    category = unicodedata.category(ch)
    if ch.isspace() or category == "Cc":
        return SEPARATOR
    if category[0] in "PS" or any(lo <= c <= hi for lo, hi in CJK_RANGES):
        return SPLIT
    return OTHER


def _classes_of(codepoints):
    """(split_ranges, separator_ranges) of some code points, as ``default_classes`` would list them."""
    split = [c for c in codepoints if _char_class(chr(c)) == SPLIT]
    separators = [c for c in codepoints if _char_class(chr(c)) == SEPARATOR]
    return _to_ranges(split), _to_ranges(separators)


class _Padding(dict):
    """``str.translate`` table, filled on demand: a separator becomes a space and a split character
    is padded with spaces, so the ASCII regex then splits any text as the full classes would."""

    def __missing__(self, code):
        ch = chr(code)
        kind = OTHER if code < 128 else _char_class(ch)
        value = " " if kind == SEPARATOR else f" {ch} " if kind == SPLIT else ch
        self[code] = value
        return value


_PADDING = _Padding()
_UNLOWERED = frozenset(_TF_UNLOWERED)


def _ascii_token_re(split_ranges, separator_ranges, words_only=False):
    """The tokens of ASCII text; ``words_only``: only runs of 2+ word characters (single-character
    tokens dropped by the regex itself, faster than filtering a list)."""
    def cut(ranges):
        return [[lo, min(hi, 127)] for lo, hi in ranges if lo <= 127]

    split, sep = cut(split_ranges), cut(separator_ranges)
    split_class = python_class(split) if split else "(?!)"
    other = "[^" + (python_class(split)[1:-1] if split else "") + python_class(sep)[1:-1] + "]"
    return re.compile(f"{other}{{2,}}" if words_only else f"{split_class}|{other}+")


def _check_range(value, name):
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min_n, max_n) of positive integers, got {value!r}") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"{name} must satisfy 1 <= min_n <= max_n, got {value!r}")
    return lo, hi


class TfidfFeatures:
    """Word (and optional character) n-gram TF-IDF, fitted on a corpus.

    Args:
        ngram_range: (min_n, max_n) word n-grams; (1, 2) is words and word pairs.
        char_ngram_range: None, or (min_n, max_n) character n-grams inside each space-padded word.
        min_df: a feature is kept when at least this many documents hold it (int) or this share (float).
        max_df: ... and at most this many documents (int) or this share (float in (0, 1]).
        max_features: keep only the features found in the most documents (None: no cap).
        sublinear_tf: use ``1 + ln(count)`` instead of the raw count.
        keep_single_chars: keep one-character tokens (letters, digits, punctuation); CJK letters are
            always kept.
    """

    def __init__(self, ngram_range=(1, 1), char_ngram_range=None, min_df=1, max_df=1.0, max_features=None,
                 sublinear_tf=True, keep_single_chars=False, split_ranges=None, separator_ranges=None,
                 vocabulary=None, idf=None):
        self.ngram_range = _check_range(ngram_range, "ngram_range")
        self.char_ngram_range = None if char_ngram_range is None else _check_range(char_ngram_range, "char_ngram_range")
        for name, value in (("min_df", min_df), ("max_df", max_df)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or \
                    (isinstance(value, float) and value > 1):
                raise ValueError(f"{name} must be a positive int (documents) or a float in (0, 1] (share), "
                                 f"got {value!r}")
        self.min_df, self.max_df = min_df, max_df
        if max_features is not None and (isinstance(max_features, bool) or not isinstance(max_features, int)
                                         or max_features < 1):
            raise ValueError(f"max_features must be None or a positive int, got {max_features!r}")
        self.max_features = max_features
        self.sublinear_tf = bool(sublinear_tf)
        self.keep_single_chars = bool(keep_single_chars)
        if split_ranges is None or separator_ranges is None:
            # This Python's Unicode classes: tabulating all of Unicode takes a third of a second, so
            # it waits until a config is written; meanwhile characters are classified one by one.
            self._tokenizer = None
            classes = _classes_of(range(128))
            self._ascii_re = _ascii_token_re(*classes)
            self._ascii_words_re = _ascii_token_re(*classes, words_only=True)
        else:
            self._tokenizer = WordTokenizer(split_ranges=split_ranges, separator_ranges=separator_ranges)
            classes = self._tokenizer.split_ranges, self._tokenizer.separator_ranges
            self._ascii_re = _ascii_token_re(*classes)
            self._ascii_words_re = _ascii_token_re(*classes, words_only=True)
        self.vocabulary = None if vocabulary is None else list(vocabulary)
        self._index = None if vocabulary is None else {f: i for i, f in enumerate(self.vocabulary)}
        self.idf = None if idf is None else np.asarray(idf, dtype=np.float32)

    # -- features ---------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The ``WordTokenizer`` whose rules (and stored character classes) this uses."""
        if self._tokenizer is None:
            split, separators = default_classes()
            self._tokenizer = WordTokenizer(split_ranges=split, separator_ranges=separators)
        return self._tokenizer

    def split(self, text):
        """``WordTokenizer.split``, with a small regex for ASCII text (same classes, cut to ASCII):
        the full Unicode classes make Python's ``re`` several times slower."""
        if text.isascii():
            return self._ascii_re.findall(text.lower())
        # ``lower`` keeps a few characters TensorFlow cannot lower-case; a set test skips its regex.
        text = text.lower() if _UNLOWERED.isdisjoint(text) else lower(text)
        if self._tokenizer is None:
            return self._ascii_re.findall(text.translate(_PADDING))
        return self._tokenizer._token_re.findall(text)

    def tokens(self, text):
        """``split``, without the one-character tokens this drops (see ``keep_single_chars``)."""
        if self.keep_single_chars:
            return self.split(text)
        if text.isascii():
            return self._ascii_words_re.findall(text.lower())
        return [t for t in self.split(text) if len(t) > 1 or keeps_single_char(t)]

    def features(self, text):
        """The list of feature strings of one text (with repeats)."""
        tokens = self.tokens(text)
        lo, hi = self.ngram_range
        if hi == 1 and self.char_ngram_range is None:
            return tokens
        out = list(tokens) if lo == 1 else []
        for n in range(max(lo, 2), hi + 1):
            out += [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        if self.char_ngram_range is not None:
            clo, chi = self.char_ngram_range
            for token in tokens:
                word = f" {token} "
                for n in range(clo, chi + 1):
                    out += [CHAR_MARK + word[i:i + n] for i in range(len(word) - n + 1)]
        return out

    @property
    def n_features(self):
        self._require_fit()
        return len(self.vocabulary)

    def _require_fit(self):
        if self.vocabulary is None:
            raise RuntimeError("the TF-IDF features are not fitted yet: call fit(texts) first")

    # -- fitting ----------------------------------------------------------------------------
    def fit_transform(self, texts):
        """Learn the vocabulary and idf from ``texts``; returns their TF-IDF rows."""
        texts = check_texts(texts)
        if not texts:
            raise ValueError("texts is empty: TF-IDF needs at least one document to fit")
        vocabulary = defaultdict()
        vocabulary.default_factory = vocabulary.__len__  # a new feature gets the next id
        counts = self._counts(texts, lambda feats: list(map(vocabulary.__getitem__, feats)), lambda: len(vocabulary))
        n_docs = counts.shape[0]
        df = np.bincount(counts.indices, minlength=counts.shape[1])
        low = self.min_df if isinstance(self.min_df, int) else int(np.ceil(self.min_df * n_docs))
        high = self.max_df if isinstance(self.max_df, int) else int(np.floor(self.max_df * n_docs))
        keep = (df >= low) & (df <= high)
        if self.max_features is not None and keep.sum() > self.max_features:
            kept = np.flatnonzero(keep)
            order = np.argsort(-df[kept], kind="stable")  # ties: first seen first
            keep = np.zeros_like(keep)
            keep[kept[order[: self.max_features]]] = True
        if not keep.any():
            raise ValueError(f"no feature is in at least min_df={self.min_df} and at most max_df={self.max_df} of the "
                             f"{n_docs} documents: lower min_df or raise max_df")
        features = list(vocabulary)
        self.vocabulary = [f for f, k in zip(features, keep) if k]
        self._index = {f: i for i, f in enumerate(self.vocabulary)}
        df = df[keep]
        self.idf = (np.log((1.0 + n_docs) / (1.0 + df)) + 1.0).astype(np.float32)
        return self._weigh(counts[:, keep])

    def fit(self, texts):
        self.fit_transform(texts)
        return self

    # -- transforming -----------------------------------------------------------------------
    def transform(self, texts, return_unknown=False):
        """TF-IDF rows of ``texts`` (unknown features are dropped; a text with none gets an empty row).

        ``return_unknown=True`` returns (rows, feature occurrences, occurrences not in the vocabulary).
        """
        self._require_fit()
        texts = check_texts(texts)
        get = self._index.get
        tally = [0, 0]
        counts = self._counts(texts, lambda feats: list(map(get, feats, repeat(-1))),  # -1: unknown
                              lambda: len(self.vocabulary), tally)
        return (self._weigh(counts), *tally) if return_unknown else self._weigh(counts)

    def ids_and_weights(self, texts, width=None):
        """The fixed-width input of the exported encoders: (ids int32 [n, width], weights float32 [n, width]).

        Row i holds the features of text i with their unit-normalised TF-IDF weights, padded with
        id 0 and weight 0 (a zero weight adds nothing). ``width`` defaults to the longest row (at least 1).
        """
        x = self.transform(texts)
        lengths = np.diff(x.indptr)
        longest = int(lengths.max()) if len(lengths) else 0
        width = max(longest, 1) if width is None else int(width)
        if width < longest:
            raise ValueError(f"width={width} is too small: a text has {longest} distinct features")
        ids = np.zeros((x.shape[0], width), np.int32)
        weights = np.zeros((x.shape[0], width), np.float32)
        cols = np.arange(x.nnz) - np.repeat(x.indptr[:-1], lengths)
        rows = np.repeat(np.arange(x.shape[0]), lengths)
        ids[rows, cols] = x.indices
        weights[rows, cols] = x.data
        return ids, weights

    def _counts(self, texts, to_ids, n_columns, tally=None):
        """CSR matrix of feature counts, built chunk by chunk (int32 arrays, not Python lists).
        ``tally`` ([occurrences, unknown occurrences]) is increased when given."""
        indices, indptr = [], [np.zeros(1, np.int64)]
        offset = 0
        features = self.features
        for start in range(0, len(texts), _CHUNK):
            rows = [to_ids(features(t)) for t in texts[start:start + _CHUNK]]
            lengths = np.fromiter(map(len, rows), np.int64, len(rows))
            flat = np.fromiter(chain.from_iterable(rows), np.int32, int(lengths.sum()))
            known = flat >= 0
            if tally is not None:
                tally[0] += len(flat)
                tally[1] += len(flat) - int(np.count_nonzero(known))
            if not known.all():  # drop unknown features and shorten their rows
                lengths = np.bincount(np.repeat(np.arange(len(rows)), lengths)[known], minlength=len(rows))
                flat = flat[known]
            indices.append(flat)
            indptr.append(offset + np.cumsum(lengths))
            offset += int(lengths.sum())
        indices = np.concatenate(indices) if indices else np.zeros(0, np.int32)
        indptr = np.concatenate(indptr)
        data = np.ones(len(indices), np.float32)
        counts = sp.csr_matrix((data, indices, indptr), shape=(len(texts), n_columns()))
        counts.sum_duplicates()  # repeats of a feature in a row become one entry holding its count
        return counts

    def _weigh(self, counts):
        x = counts.astype(np.float32)
        if self.sublinear_tf:
            np.log(x.data, out=x.data)
            x.data += 1.0
        x.data *= self.idf[x.indices]
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        x.data /= np.repeat(norms, np.diff(x.indptr)).astype(np.float32)
        return x

    # -- persistence ------------------------------------------------------------------------
    def get_config(self):
        """Settings and the split classes (JSON); the vocabulary and idf are saved apart (they are large)."""
        return {
            "ngram_range": list(self.ngram_range),
            "char_ngram_range": None if self.char_ngram_range is None else list(self.char_ngram_range),
            "min_df": self.min_df,
            "max_df": self.max_df,
            "max_features": self.max_features,
            "sublinear_tf": self.sublinear_tf,
            "keep_single_chars": self.keep_single_chars,
            "split_ranges": self.tokenizer.split_ranges,
            "separator_ranges": self.tokenizer.separator_ranges,
        }

    @classmethod
    def from_config(cls, config, vocabulary=None, idf=None):
        config = {"keep_single_chars": True, **config}  # saved before the option: every token was kept
        features = cls(**config, vocabulary=vocabulary, idf=idf)
        if (vocabulary is None) != (idf is None) or (idf is not None and len(features.idf) != len(vocabulary)):
            raise ValueError("vocabulary and idf must be given together and have the same length")
        return features
