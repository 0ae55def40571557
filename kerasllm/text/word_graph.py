"""The WordTokenizer's rules as TensorFlow string ops, for graphs that take raw strings."""
from kerasllm._tf import tf
from kerasllm.text.word import MAX_GRAM_CHARS, OOV, OOV_SHAPES, SPECIAL_TOKENS, WordTokenizer, re2_class


class GraphWordTokenizer(tf.Module):
    """strings [batch] -> int32 ids [batch, width], identical to ``WordTokenizer.encode``."""

    def __init__(self, tokenizer: WordTokenizer, name="word_tokenizer"):
        super().__init__(name=name)
        tokenizer._require_fit()
        self.max_length = tokenizer.max_length
        self._separators = re2_class(tokenizer.separator_ranges) + "+"
        self._split = "(" + re2_class(tokenizer.split_ranges) + ")"
        first = len(SPECIAL_TOKENS)
        vocab = tokenizer.vocabulary[first:]
        # a table needs one key: with no word seen twice, a space (never a token) maps to "not found"
        keys, values = (vocab, tf.range(first, len(vocab) + first, dtype=tf.int32)) if vocab else ([" "], [-1])
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string), tf.constant(values, tf.int32)),
            default_value=-1,
        )
        self.char_ngrams, self.max_char_grams = tokenizer.char_ngrams, tokenizer.max_char_grams
        if self.char_ngrams:
            grams = tokenizer.char_vocabulary or ["<>"]  # a table needs one key; "<>" is never a gram id > 0
            offset = tokenizer.vocab_size
            self.char_table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(grams, tf.string),
                    tf.range(offset, offset + len(grams), dtype=tf.int32) if tokenizer.char_vocabulary
                    else tf.zeros([1], tf.int32),
                ),
                default_value=0,
            )

    def tokens(self, texts):
        # Separators become plain spaces first: tf.strings.lower stops at a NUL character.
        x = tf.strings.regex_replace(texts, self._separators, " ")
        x = tf.strings.lower(x, encoding="utf-8")
        x = tf.strings.regex_replace(x, self._split, r" \1 ")
        return tf.strings.split(x)  # splits on runs of whitespace, drops empty pieces

    def _lookup(self, tokens):
        ids = self.table.lookup(tokens)
        oov = tf.fill(tf.shape(ids), OOV)
        for shape_id, pattern in reversed(OOV_SHAPES):  # the first matching shape wins
            oov = tf.where(tf.strings.regex_full_match(tokens, pattern), shape_id, oov)
        return tf.where(ids < 0, oov, ids)

    def _gram_ids(self, tokens):
        marked = tf.strings.join(["<", tf.strings.substr(tokens, 0, MAX_GRAM_CHARS, unit="UTF8_CHAR"), ">"])
        chars = tf.strings.unicode_split(marked, "UTF-8")
        grams = tf.strings.ngrams(chars, self.char_ngrams, separator="").merge_dims(1, 2)
        ids = tf.ragged.map_flat_values(self.char_table.lookup, grams)
        ids = tf.ragged.boolean_mask(ids, ids > 0)  # unknown n-grams are dropped, as in Python
        return ids.to_tensor(default_value=0, shape=[None, self.max_char_grams])

    def __call__(self, texts):
        tokens = self.tokens(texts)[:, : self.max_length]
        ids = tf.ragged.map_flat_values(self._lookup, tokens).to_tensor(default_value=0, shape=[None, self.max_length])
        if self.char_ngrams:
            ids = tf.concat([ids, self._gram_ids(tokens)], axis=1)
        return ids
