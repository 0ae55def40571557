"""Language models: generation parity (cached/uncached, batched/single, seeds, TFLite), API behaviour."""
import math

import numpy as np
import pytest

PROMPTS = ["def ", "The class of an object", "x"]


def test_cached_greedy_equals_uncached(tiny_lm):
    ids = np.stack([tiny_lm.tokenizer.encode("The return value"), tiny_lm.tokenizer.encode("A module is a fu")])
    cached = tiny_lm.generate_tokens(ids, max_new_tokens=40)
    uncached = tiny_lm.generate_tokens_uncached(ids, max_new_tokens=40)
    assert cached.dtype == np.int32 and cached.shape == (2, ids.shape[1] + 40)
    np.testing.assert_array_equal(cached, uncached)


# The tests reuse a few shapes (batch 1 or 3, prompts under 16 or 32 characters, 50 new tokens, one
# sampling kind) so they share compiled decode functions.
SAMPLE = dict(temperature=1.0, top_k=50, top_p=0.95)


def test_batched_equals_one_at_a_time(tiny_lm):
    batched = tiny_lm.generate(PROMPTS, max_new_tokens=50)
    single = [tiny_lm.generate(p, max_new_tokens=50) for p in PROMPTS]
    assert batched == single
    for p, out in zip(PROMPTS, batched):
        assert out.startswith(p) and len(out) == len(p) + 50


def test_seed_repeats_sample_and_top_k_1_is_greedy(tiny_lm):
    a = tiny_lm.generate("The ", 50, seed=7, **SAMPLE)
    assert tiny_lm.generate("The ", 50, seed=7, **SAMPLE) == a
    assert tiny_lm.generate("The ", 50, seed=8, **SAMPLE) != a
    assert tiny_lm.generate("The ", 50, seed=3, **{**SAMPLE, "top_k": 1}) == tiny_lm.generate("The ", 50)


def test_stream_pieces_join_to_generate(tiny_lm):
    pieces = list(tiny_lm.stream("The ", max_new_tokens=50))
    assert len(pieces) > 1  # produced in several compiled chunks
    assert "The " + "".join(pieces) == tiny_lm.generate("The ", max_new_tokens=50)
    sampled = "".join(tiny_lm.stream("The ", max_new_tokens=50, seed=5, **SAMPLE))
    assert "The " + sampled == tiny_lm.generate("The ", max_new_tokens=50, seed=5, **SAMPLE)


def test_stop_sequence_of_several_tokens(tiny_lm):
    full = tiny_lm.generate("The ", max_new_tokens=50)[len("The "):]
    stop = full[20:23]
    cut = tiny_lm.generate("The ", max_new_tokens=50, stop=[stop, "\x00never"])
    assert cut == "The " + full[:full.find(stop)]
    assert "".join(tiny_lm.stream("The ", max_new_tokens=50, stop=stop)) == full[:full.find(stop)]


def test_generation_beyond_context(tiny_lm):
    ids = tiny_lm.tokenizer.encode("The return value")[None]
    out = tiny_lm.generate_tokens(ids, max_new_tokens=100)  # 16 + 100 > context 64
    assert out.shape == (1, 16 + 100)
    first = tiny_lm.generate_tokens(ids, max_new_tokens=48)  # the part before the cache is rebuilt
    np.testing.assert_array_equal(out[:, :16 + 48], first)


def test_evaluate_units(tiny_lm, lm_text):
    r = tiny_lm.evaluate(lm_text[-3000:])
    assert set(r) >= {"loss", "perplexity", "bits_per_char"}
    assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
    assert r["bits_per_char"] == pytest.approx(r["loss"] / math.log(2))  # one token per character
    assert r["loss"] < math.log(tiny_lm.vocab_size)  # learned something beyond uniform
    assert tiny_lm.history["final_val_loss"] < math.log(tiny_lm.vocab_size)


def test_save_load_roundtrip(tiny_lm, tmp_path):
    import kerasllm

    tiny_lm.save(tmp_path / "lm")
    tiny_lm.save(tmp_path / "lm")  # replacing an earlier save works
    loaded = kerasllm.load_language_model(tmp_path / "lm")
    assert loaded.generate(PROMPTS, max_new_tokens=20) == tiny_lm.generate(PROMPTS, max_new_tokens=20)
    assert loaded.tokenizer.get_config() == tiny_lm.tokenizer.get_config()


def test_tflite_greedy_equals_keras_for_64_steps_from_file_alone(tiny_lm, tmp_path):
    import shutil

    import tasks
    from kerasllm.runtime.language_model import load_tflite

    paths = tasks.export(tiny_lm, tmp_path / "lm", formats=("tflite",))
    alone = tmp_path / "alone.tflite"
    shutil.copy(paths["tflite"], alone)  # nothing else beside it
    runner = load_tflite(alone)
    ids = tiny_lm.tokenizer.encode("The return value")[None]
    np.testing.assert_array_equal(runner.generate_tokens(ids, max_new_tokens=64),
                                  tiny_lm.generate_tokens(ids, max_new_tokens=64))
    assert runner.generate("def ", max_new_tokens=50) == tiny_lm.generate("def ", max_new_tokens=50)


def test_saved_model_signatures_and_runtime(tiny_lm, tmp_path):
    import kerasllm
    import tasks
    from kerasllm._tf import tf

    paths = tasks.export(tiny_lm, tmp_path / "lm", formats=("saved_model",))
    expected = tiny_lm.generate(PROMPTS, max_new_tokens=50)
    runtime = kerasllm.load(tmp_path / "lm")  # no TFLite in this export: the SavedModel runtime
    assert runtime.generate(PROMPTS, max_new_tokens=50) == expected
    loaded = tf.saved_model.load(str(paths["saved_model"]))
    out = loaded.signatures["generate"](prompts=tf.constant(PROMPTS), max_new_tokens=tf.constant(50),
                                        temperature=tf.constant(0.0), top_k=tf.constant(0),
                                        top_p=tf.constant(0.0), seed=tf.constant(0))
    assert [s.decode("utf-8") for s in out["outputs"].numpy()] == expected


def test_lstm_trains_generates_and_caches(tiny_lstm, lm_text):
    assert tiny_lstm.architecture == "lstm"
    assert tiny_lstm.history["final_val_loss"] < math.log(tiny_lstm.vocab_size)
    ids = np.stack([tiny_lstm.tokenizer.encode("The value"), tiny_lstm.tokenizer.encode("A module ")])
    np.testing.assert_array_equal(tiny_lstm.generate_tokens(ids, max_new_tokens=30),
                                  tiny_lstm.generate_tokens_uncached(ids, max_new_tokens=30))
    assert tiny_lstm.generate(PROMPTS, 50) == [tiny_lstm.generate(p, 50) for p in PROMPTS]
    assert "".join(tiny_lstm.stream("def ", max_new_tokens=50)) == tiny_lstm.generate("def ", 50)[4:]


def test_resume_from_checkpoint(lm_text, tmp_path):
    import tasks

    kw = dict(architecture="lstm", context_length=32, hidden=32, layers=1, batch_size=8, verbose=0,
              checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=5)
    first = tasks.train_language_model(lm_text[:5000], steps=6, **kw)
    resumed = tasks.train_language_model(lm_text[:5000], steps=9, **kw)  # as if the first run had been killed
    assert first.history["steps"] == 6
    assert resumed.history["step"] == [7, 8, 9]


def test_subword_tokenizer_model(lm_text):
    import tasks
    from kerasllm.text.subword import SubwordTokenizer

    tok = SubwordTokenizer(vocab_size=400).fit(lm_text)
    for s in ["def f(x):\n    return x", "中文也可以 🙂"]:
        assert tok.decode(tok.encode(s)) == s
    lm = tasks.train_language_model(lm_text[:20000], tokenizer="subword", vocab_size=400, steps=3, context_length=32,
                                    hidden=32, layers=1, heads=2, ff=64, verbose=0)
    assert lm.vocab_size == lm.tokenizer.vocab_size <= 400
    out = lm.generate(["def ", "中文"], max_new_tokens=5)
    assert out[0].startswith("def ") and out[1].startswith("中文")
    assert lm.evaluate(lm_text[-2000:])["bits_per_char"] > 0


def test_char_tokenizer_any_unicode():
    from kerasllm.text.char import CharTokenizer

    tok = CharTokenizer().fit("春眠不觉晓，处处闻啼鸟。 hello")
    assert tok.decode(tok.encode("处处闻鸟 hello")) == "处处闻鸟 hello"
    assert tok.encode("é")[0] == tok.unknown_id == 1 and tok.decode(tok.encode("é")) == "\ufffd"
    legacy = CharTokenizer.from_config({"kind": "char", "chars": "ab", "unknown": "?"})  # saved before layout 2
    assert legacy.encode("abz").tolist() == [1, 2, 0] and legacy.vocab_size == 3 and legacy.end_of_text_id is None
    assert CharTokenizer.from_config(tok.get_config()).encode("春眠").tolist() == tok.encode("春眠").tolist()


def test_language_model_from_config_param_count():
    import kerasllm

    lm = kerasllm.language_model_from_config("transformer", vocab_size=65, hidden=32, layers=2, heads=2, ff=64,
                                             context_length=64)
    assert lm.num_params == lm.model.count_params()
    out = lm.generate_tokens(np.zeros((3, 5), np.int32), max_new_tokens=7)
    assert out.shape == (3, 12) and out.dtype == np.int32
    with pytest.raises(RuntimeError, match="tokenizer"):
        lm.generate("hi")
    lstm = kerasllm.language_model_from_config("lstm", vocab_size=65, hidden=16, layers=2, heads=None, ff=None,
                                               context_length=64)
    assert lstm.num_params == lstm.model.count_params()


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-1), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=-2), "max_new_tokens"), (dict(stop=""), "stop"), (dict(seed="x"), "seed"),
])
def test_bad_generation_arguments(tiny_lm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_lm.generate("x", **kwargs)


def test_bad_inputs(tiny_lm):
    import tasks

    with pytest.raises(TypeError, match="prompt"):
        tiny_lm.generate(123)
    with pytest.raises(ValueError, match="token_ids"):
        tiny_lm.generate_tokens(np.array([[1, 2, 10_000]]))
    with pytest.raises(ValueError, match="architecture"):
        tasks.train_language_model("some text", architecture="rnn")
    with pytest.raises(TypeError, match="bogus"):
        tasks.train_language_model("some text", bogus=1)
    with pytest.raises(ValueError, match="context_length"):
        tasks.train_language_model("tiny", context_length=64, steps=1, verbose=0)


def test_text_argument_is_text_unless_it_names_a_file(tmp_path):
    from tasks.language_model import _read

    long_line = "hello world, " * 100  # one line longer than a file name may be: text, not an OSError
    assert _read(long_line) == long_line
    path = tmp_path / "corpus.txt"
    path.write_text("from a file\n", encoding="utf-8")
    assert _read(str(path)) == "from a file\n"
    assert _read("no such file") == "no such file"


def test_lstm_tflite_batched_decode_equals_keras_across_chunks(tiny_lstm, tmp_path):
    """The LSTM's TFLite generate/resume signatures carry the state from chunk to chunk: greedy and
    a seeded sample equal the Keras loop past one chunk (300 tokens: chunks of 256 and 44)."""
    import tasks
    from kerasllm.runtime.language_model import load_tflite

    runner = load_tflite(tasks.export(tiny_lstm, tmp_path / "lstm", formats=("tflite",))["tflite"])
    assert runner._chunk == 256
    ids = np.stack([tiny_lstm.tokenizer.encode("The value"), tiny_lstm.tokenizer.encode("A module ")])
    n = 300  # two chunks
    np.testing.assert_array_equal(runner.generate_tokens(ids, n), tiny_lstm.generate_tokens(ids, n))
    np.testing.assert_array_equal(runner.generate_tokens(ids, n, temperature=1.5, seed=2),
                                  tiny_lstm.generate_tokens(ids, n, temperature=1.5, seed=2))
