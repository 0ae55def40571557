"""``TfidfFeatures`` as TensorFlow string ops: strings -> (feature ids, unit TF-IDF weights).

The output is the fixed-width pair ``TfidfFeatures.ids_and_weights`` gives in Python (ids padded
with 0, weights with 0), so the numeric encoder after it (XLA or TFLite) is the same either way.
Width is rounded up to a power of two so an XLA-compiled consumer sees few distinct shapes.
"""
from kerasllm._tf import tf
from kerasllm.text.tfidf import CHAR_MARK, CJK_CLASS_RE2, MIN_WIDTH, TfidfFeatures
from kerasllm.text.word import SPECIAL_TOKENS, WordTokenizer
from kerasllm.text.word_graph import GraphWordTokenizer


class GraphTfidfFeatures(tf.Module):
    """strings [batch] -> (ids int32 [batch, width], weights float32 [batch, width])."""

    def __init__(self, features: TfidfFeatures, name="tfidf_features"):
        super().__init__(name=name)
        features._require_fit()
        # The word tokenizer's rules (its id table is not used: features are looked up below).
        words = WordTokenizer(vocabulary=SPECIAL_TOKENS + ["[UNUSED]"], split_ranges=features.tokenizer.split_ranges,
                              separator_ranges=features.tokenizer.separator_ranges)
        self.tokenizer = GraphWordTokenizer(words)
        self.ngram_range = features.ngram_range
        self.char_ngram_range = features.char_ngram_range
        self.sublinear_tf = features.sublinear_tf
        self.keep_single_chars = features.keep_single_chars
        self.n_features = features.n_features
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(features.vocabulary, tf.string),
                                                tf.range(features.n_features, dtype=tf.int64)),
            default_value=-1)
        self.idf = tf.constant(features.idf, tf.float32)

    def features(self, texts):
        """Ragged [batch, None] feature strings, as ``TfidfFeatures.features`` (order aside)."""
        tokens = self.tokenizer.tokens(texts)
        if not self.keep_single_chars:  # TfidfFeatures.tokens: one-character tokens only when CJK letters
            flat = tokens.flat_values
            keep = (tf.strings.length(flat, unit="UTF8_CHAR") > 1) | (
                tf.strings.regex_full_match(flat, CJK_CLASS_RE2) & tf.strings.regex_full_match(flat, r"\p{L}"))
            tokens = tf.ragged.boolean_mask(tokens, tokens.with_flat_values(keep))
        lo, hi = self.ngram_range
        parts = [tokens] if lo == 1 else []
        for n in range(max(lo, 2), hi + 1):
            parts.append(tf.strings.ngrams(tokens, n, separator=" "))
        if self.char_ngram_range is not None:
            clo, chi = self.char_ngram_range
            padded = tf.strings.join([" ", tokens.flat_values, " "])
            chars = tf.strings.unicode_split(padded, "UTF-8")
            grams = tf.strings.ngrams(chars, tuple(range(clo, chi + 1)), separator="")
            grams = grams.with_flat_values(tf.strings.join([CHAR_MARK, grams.flat_values]))
            parts.append(tokens.with_flat_values(grams).merge_dims(1, 2))
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)

    def __call__(self, texts):
        texts = tf.reshape(texts, [-1])
        batch = tf.shape(texts, out_type=tf.int64)[0]
        feats = self.features(texts)
        ids = self.table.lookup(feats.flat_values)
        rows = feats.value_rowids()
        known = ids >= 0
        ids, rows = tf.boolean_mask(ids, known), tf.boolean_mask(rows, known)
        # One entry per (row, feature) with its count; first occurrences keep the rows in order.
        keys, _, counts = tf.unique_with_counts(rows * self.n_features + ids)
        rows, ids = keys // self.n_features, keys % self.n_features
        tf_ = tf.cast(counts, tf.float32)
        if self.sublinear_tf:
            tf_ = 1.0 + tf.math.log(tf_)
        weights = tf_ * tf.gather(self.idf, ids)
        norms = tf.sqrt(tf.math.unsorted_segment_sum(weights * weights, rows, batch))
        weights = weights / tf.gather(norms, rows)
        ids = tf.RaggedTensor.from_value_rowids(tf.cast(ids, tf.int32), rows, nrows=batch)
        weights = tf.RaggedTensor.from_value_rowids(weights, rows, nrows=batch)
        longest = tf.reduce_max(tf.concat([ids.row_lengths(), [1]], axis=0))
        power = tf.math.ceil(tf.math.log(tf.cast(longest, tf.float32)) / tf.math.log(2.0))
        width = tf.maximum(tf.constant(MIN_WIDTH, tf.int64), tf.cast(2.0 ** power, tf.int64))
        width = tf.where(width < longest, width * 2, width)  # guard the float log against rounding down
        return ids.to_tensor(0, shape=tf.stack([batch, width])), weights.to_tensor(0.0, shape=tf.stack([batch, width]))
