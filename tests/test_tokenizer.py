"""The word tokenizer gives identical ids in Python (TFLite path) and in the TensorFlow graph."""
import numpy as np
import pytest

from kerasllm.text.word import PAD, SPECIAL_TOKENS, WordTokenizer, check_texts, lower

AWKWARD = [
    "",
    "   ",
    "Hello, World!! I'm here :) call 08001234567 now, 2nite, 150p/msg £1000",
    "我爱北京天安门。今天天气很好！日本語のテキストも分かります",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷 ok",
    "ΟΔΟΣ ΟΔΟΣ. straße İstanbul ǅ Ⱟ ꟀꟐ 𐕰",
    "tabs\tnew\nlines\r\nnbsp\xa0ideographic\u3000space nul\x00 unit\x1f del\x7f",
    "x" * 5000 + " tail",
    " ".join(["word"] * 3000),
    "http://example.com/a?b=c&d=e #tag @user $9.99 3.14159 (nested [brackets])",
]


@pytest.fixture(scope="module")
def corpus():
    from kerasllm.data import default_documents

    texts, _ = default_documents()
    return texts[:400] + AWKWARD


@pytest.mark.parametrize("char_ngrams", [0, 3])
def test_python_and_graph_ids_are_identical(corpus, char_ngrams):
    from kerasllm.text.word_graph import GraphWordTokenizer

    tok = WordTokenizer(max_length=64, char_ngrams=char_ngrams, max_char_grams=200).fit(corpus[::2], max_tokens=3000)
    python_ids = tok.encode(corpus)
    graph_ids = GraphWordTokenizer(tok)(corpus).numpy()
    assert python_ids.shape == graph_ids.shape == (len(corpus), tok.width)
    mismatched = [corpus[i][:60] for i in np.flatnonzero((python_ids != graph_ids).any(axis=1))]
    assert not mismatched
    assert (python_ids[:, 0] > 0).sum() > 0.9 * len(corpus)  # real text produced real ids


def test_lowercasing_matches_tensorflow_for_every_code_point():
    from kerasllm._tf import tf

    chars = [chr(c) for c in range(1, 0x30000) if not 0xD800 <= c <= 0xDFFF]
    joined = "".join(chars)
    assert lower(joined) == tf.strings.lower(joined, encoding="utf-8").numpy().decode("utf-8")


def test_rules_split_punctuation_cjk_and_emoji():
    tok = WordTokenizer()
    assert tok.split("Hello, World!") == ["hello", ",", "world", "!"]
    assert tok.split("我爱北京") == ["我", "爱", "北", "京"]
    assert tok.split("ok👍🏽go") == ["ok", "👍", "🏽", "go"]
    assert tok.split("") == [] and tok.split(" \t\n") == []


def test_vocabulary_cap_padding_and_out_of_vocabulary_shapes():
    texts = ["the cat sat", "the dog sat", "the cat ran"] * 3
    tok = WordTokenizer(max_length=6).fit(texts, max_tokens=len(SPECIAL_TOKENS) + 2)
    assert tok.vocabulary[len(SPECIAL_TOKENS):] == ["the", "cat"]  # most frequent first, ties by text
    ids = tok.encode(["the cat flew to 12 or 0800123456 via r2d2"])[0]
    names = [tok.vocabulary[i] for i in ids]
    assert names == ["the", "cat", "[UNK]", "[UNK]", "[NUM]", "[UNK]"]  # truncated at max_length 6
    tail = tok.encode(["0800123456 r2d2"])[0]
    assert [tok.vocabulary[i] for i in tail[:2]] == ["[LONGNUM]", "[ALNUM]"] and (tail[2:] == PAD).all()


def test_config_round_trip_keeps_ids(corpus):
    tok = WordTokenizer(max_length=32, char_ngrams=3).fit(corpus[:100])
    again = WordTokenizer.from_config(tok.get_config())
    np.testing.assert_array_equal(tok.encode(corpus), again.encode(corpus))


def test_bad_input_names_the_problem():
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        check_texts(["ok", 3])
    with pytest.raises(TypeError, match="single str"):
        check_texts("not a list")
    with pytest.raises(RuntimeError, match="call fit"):
        WordTokenizer().encode(["x"])
