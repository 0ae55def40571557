"""The WordTokenizer's rules as TensorFlow string ops, for graphs that take raw strings."""
from kerasllm._tf import tf
from kerasllm.text.word import OOV, WordTokenizer, re2_class


class GraphWordTokenizer(tf.Module):
    """strings [batch] -> int32 ids [batch, max_length], identical to ``WordTokenizer.encode``."""

    def __init__(self, tokenizer: WordTokenizer, name="word_tokenizer"):
        super().__init__(name=name)
        tokenizer._require_fit()
        self.max_length = tokenizer.max_length
        self._separators = re2_class(tokenizer.separator_ranges) + "+"
        self._split = "(" + re2_class(tokenizer.split_ranges) + ")"
        vocab = tokenizer.vocabulary[2:]
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(vocab, tf.string), tf.range(2, len(vocab) + 2, dtype=tf.int32)
            ),
            default_value=OOV,
        )

    def tokens(self, texts):
        # Separators become plain spaces first: tf.strings.lower stops at a NUL character.
        x = tf.strings.regex_replace(texts, self._separators, " ")
        x = tf.strings.lower(x, encoding="utf-8")
        x = tf.strings.regex_replace(x, self._split, r" \1 ")
        return tf.strings.split(x)  # splits on runs of whitespace, drops empty pieces

    def __call__(self, texts):
        ids = tf.ragged.map_flat_values(self.table.lookup, self.tokens(texts))
        return ids.to_tensor(default_value=0, shape=[None, self.max_length])
