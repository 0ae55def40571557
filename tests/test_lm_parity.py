"""One answer on every runtime: Keras, the SavedModel and TFLite give the same greedy tokens at every
prompt length (1, 2, context - 1, context, 2 x context) and past the context, the same sample for
the same seed, and a fresh sample for seed=None; on a model whose output depends on its context."""
import numpy as np
import pytest

from tests.conftest_lm import PERIOD

CTX = 32
LENGTHS = [1, 2, CTX - 1, CTX, 2 * CTX]
NEW = 2 * CTX + 5  # past the context: two cache rebuilds


def _prompt(length, start=3):
    return (PERIOD * 4)[start:start + length]


def test_the_model_depends_on_context(periodic_lm):
    """Long prompts continue the period exactly (also past the context); a one-character prompt
    cannot know the phase: so a wrong window would change the output."""
    text = PERIOD * 8
    for length in (8, CTX - 1, 2 * CTX):
        out = periodic_lm.generate(text[17:17 + length], NEW)
        assert out == text[17:17 + length + NEW]
    assert periodic_lm.generate(text[17:18], NEW) != text[17:18 + NEW]


@pytest.mark.parametrize("length", LENGTHS)
def test_greedy_equal_on_keras_saved_model_tflite_and_uncached(periodic_lm, periodic_runtimes, length):
    saved, tflite, _ = periodic_runtimes
    ids = periodic_lm.tokenizer.encode(_prompt(length))[None]
    keras_out = periodic_lm.generate_tokens(ids, NEW)
    assert keras_out.shape == (1, length + NEW)
    np.testing.assert_array_equal(periodic_lm.generate_tokens_uncached(ids, NEW), keras_out)
    np.testing.assert_array_equal(saved.generate_tokens(ids, NEW), keras_out)
    np.testing.assert_array_equal(tflite.generate_tokens(ids, NEW), keras_out)


def test_batched_prompts_equal_on_every_runtime(periodic_lm, periodic_runtimes):
    saved, tflite, _ = periodic_runtimes
    prompts = [_prompt(n, start) for n, start in zip(LENGTHS, (0, 5, 9, 13, 21))]
    expected = periodic_lm.generate(prompts, NEW)
    assert saved.generate(prompts, NEW) == expected
    assert tflite.generate(prompts, NEW) == expected
    short = prompts[:3]  # within the context every row computes what it computes alone
    assert periodic_lm.generate(short, CTX - 2 * CTX // 3) == [periodic_lm.generate(p, CTX - 2 * CTX // 3)
                                                               for p in short]


def test_longer_generation_starts_like_a_shorter_one(periodic_lm, periodic_runtimes):
    _, tflite, _ = periodic_runtimes
    for length in (2, CTX - 1):
        ids = periodic_lm.tokenizer.encode(_prompt(length, 11))[None]
        long = periodic_lm.generate_tokens(ids, 3 * CTX)
        for n in (1, CTX - length + 1, CTX + 3):
            np.testing.assert_array_equal(periodic_lm.generate_tokens(ids, n), long[:, :length + n])
        pieces = "".join(periodic_lm.stream(_prompt(length, 11), 3 * CTX))
        assert _prompt(length, 11) + pieces == periodic_lm.tokenizer.decode(long[0])
        assert "".join(tflite.stream(_prompt(length, 11), 3 * CTX)) == pieces


SAMPLE = dict(temperature=4.0, top_k=6, top_p=0.95)  # the model is confident: a high temperature


def test_same_seed_same_sample_on_every_runtime(periodic_lm, periodic_runtimes):
    saved, tflite, _ = periodic_runtimes
    prompts = [_prompt(5), _prompt(CTX + 4, 2)]
    for settings in (SAMPLE, dict(temperature=3.0)):
        a = periodic_lm.generate(prompts, NEW, seed=11, **settings)
        assert a != periodic_lm.generate(prompts, NEW)  # really sampled (not greedy)
        assert a == saved.generate(prompts, NEW, seed=11, **settings)
        assert a == tflite.generate(prompts, NEW, seed=11, **settings)
        assert a != periodic_lm.generate(prompts, NEW, seed=12, **settings)


def test_seed_none_is_fresh_on_every_runtime(periodic_lm, periodic_runtimes):
    import kerasllm  # noqa: F401
    from kerasllm._tf import tf

    saved, tflite, _ = periodic_runtimes
    for runtime in (periodic_lm, saved, tflite):
        outs = {runtime.generate(_prompt(4), 40, temperature=2.0) for _ in range(3)}
        assert len(outs) > 1, type(runtime).__name__
    signature = saved._loaded.signatures["generate"]  # the loaded runtime's (its XLA functions are compiled)
    outs = {signature(prompts=tf.constant([_prompt(4)]), max_new_tokens=tf.constant(40),
                      temperature=tf.constant(2.0), top_k=tf.constant(0), top_p=tf.constant(0.0),
                      seed=tf.constant(-1))["outputs"].numpy()[0] for _ in range(3)}
    assert len(outs) > 1


def test_saved_model_text_signature_generates_past_the_context(periodic_lm, periodic_runtimes):
    from kerasllm._tf import tf

    saved, _, _ = periodic_runtimes
    loaded = saved._loaded
    prompts = [_prompt(1), _prompt(CTX - 1, 4), _prompt(2 * CTX, 7)]

    def call(prompts, seed, **settings):
        settings = {"temperature": 0.0, "top_k": 0, "top_p": 0.0, **settings}
        out = loaded.signatures["generate"](prompts=tf.constant(prompts), max_new_tokens=tf.constant(NEW),
                                            seed=tf.constant(seed), **{k: tf.constant(v) for k, v in settings.items()})
        return [s.decode("utf-8") for s in out["outputs"].numpy()]

    assert call(prompts, 0) == periodic_lm.generate(prompts, NEW)
    assert call(prompts, 5, **SAMPLE) == periodic_lm.generate(prompts, NEW, seed=5, **SAMPLE)
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty"):
        call(["", "abc"], 0)
    generate_tokens = loaded.signatures["generate_tokens"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature"):
        generate_tokens(tokens=tf.constant([[3, 4]]), pad=tf.constant([0]), max_new_tokens=tf.constant(3),
                        temperature=tf.constant(float("nan")), top_k=tf.constant(0), top_p=tf.constant(1.0),
                        seed=tf.constant(0))
    with pytest.raises(tf.errors.InvalidArgumentError, match="prefill takes at most"):
        loaded.signatures["prefill"](tokens=tf.zeros([1, CTX + 1], tf.int32), pad=tf.constant([0]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=float("nan")), "temperature"), (dict(temperature=-1), "temperature"),
    (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_p=float("nan")), "top_p"), (dict(max_new_tokens=-2), "max_new_tokens"),
    (dict(max_new_tokens=10 ** 9), "max_new_tokens"), (dict(stop=""), "stop"), (dict(seed="x"), "seed"),
])
def test_bad_arguments_fail_before_generating_on_every_runtime(periodic_lm, periodic_runtimes, kwargs, match):
    saved, tflite, _ = periodic_runtimes
    for runtime in (periodic_lm, saved, tflite):
        with pytest.raises(ValueError, match=match):
            runtime.generate("the", **{"max_new_tokens": 5, **kwargs})


def test_prompt_checks_and_unknown_characters(periodic_lm, periodic_runtimes):
    saved, tflite, _ = periodic_runtimes
    tok = periodic_lm.tokenizer
    long_prompt = _prompt(CTX + 1)
    for runtime in (periodic_lm, saved, tflite):
        with pytest.raises(ValueError, match="empty"):
            runtime.generate("", 5)
        with pytest.raises(ValueError, match="empty"):
            runtime.generate(["the", ""], 5)
        with pytest.raises(ValueError, match="context length 32.*crop=True"):
            runtime.generate(long_prompt, 5, crop=False)
        with pytest.raises(ValueError, match="token_ids"):
            runtime.generate_tokens(np.zeros((1, 0), np.int32), 5)
        assert runtime.generate(long_prompt, 5) == long_prompt[:1] + periodic_lm.generate(long_prompt[1:], 5)
    # unknown characters: their own id, neither padding nor a known character; they round-trip as U+FFFD
    ids = tok.encode("tXe")
    assert ids[1] == tok.unknown_id not in (0, *tok.encode(PERIOD))
    assert tok.decode(ids) == "t\ufffde"
    assert saved.generate("Zthe", 10) == periodic_lm.generate("Zthe", 10) == tflite.generate("Zthe", 10)


def test_generate_tokens_honours_stop_ids_and_end_of_text(periodic_lm, periodic_runtimes):
    saved, tflite, _ = periodic_runtimes
    tok = periodic_lm.tokenizer
    ids = np.stack([tok.encode(_prompt(6, 0)), tok.encode(_prompt(6, 20))])
    full = periodic_lm.generate_tokens(ids, 40)
    dot = int(tok.encode("o")[0])
    for runtime in (periodic_lm, saved, tflite):
        out = runtime.generate_tokens(ids, 40, stop=dot)
        assert out.shape == full.shape
        for row, ref in zip(out, full):
            at = 6 + list(ref[6:]).index(dot)  # the stop id is kept, the rest is padding (0)
            np.testing.assert_array_equal(row[:at + 1], ref[:at + 1])
            assert (row[at + 1:] == 0).all()
    assert tok.end_of_text_id == 0 and periodic_lm._stop_ids(None) == [0]
    with pytest.raises(ValueError, match="stop"):
        periodic_lm.generate_tokens(ids, 5, stop=[10 ** 6])


def test_tflite_batched_decode_equals_xla_in_one_invoke_per_group(periodic_lm, periodic_runtimes):
    """Nine rows of different lengths (groups of 8 + 1 row: both batch signatures, the second with
    first_row 8), past the context: TFLite greedy and seeded samples equal the XLA loop's. Per
    window segment each group of rows is ONE ``start`` invoke (prefill) and one ``step`` invoke
    per further token; the cache stays in the step signature's inputs (only the step's new
    keys/values are written into them, checked by the equal tokens) and moves to the next longer
    step signature when it is full."""
    from kerasllm.export.lm import step_length
    from kerasllm.generation.window import segments

    _, tflite, _ = periodic_runtimes
    lengths = tflite.config["step_lengths"]
    assert {"start_1", "start_8"} | {f"step{n}_{b}" for n in lengths for b in (1, 8)} <= \
        set(tflite.interpreter.get_signature_list())
    prompts = [_prompt(n, start) for n, start in zip([1, 2, 5, 9, 17, CTX - 1, CTX, 2 * CTX, 3], range(9))]
    assert tflite.generate(prompts, NEW) == periodic_lm.generate(prompts, NEW)
    assert tflite.generate(prompts, NEW, seed=4, **SAMPLE) == periodic_lm.generate(prompts, NEW, seed=4, **SAMPLE)
    calls = []
    wrapper = tflite.interpreter._interpreter
    names = {wrapper.GetSubgraphIndexFromSignature(n): n for n in tflite.interpreter.get_signature_list()}

    class Counting:  # the interpreter's own calls, counted per signature
        def __getattr__(self, name):
            return getattr(wrapper, name)

        def Invoke(self, subgraph=0):
            calls.append(names[subgraph])
            return wrapper.Invoke(subgraph)

    for width in (CTX, 5):  # 5: the first segment's steps move the cache from step16 to step32
        calls.clear()
        tflite.interpreter._interpreter, tflite._runners = Counting(), {}
        try:
            ids = periodic_lm.tokenizer.encode(_prompt(width, 1))
            tokens = np.stack([ids] * 9)
            np.testing.assert_array_equal(tflite.generate_tokens(tokens, NEW), periodic_lm.generate_tokens(tokens, NEW))
        finally:
            tflite.interpreter._interpreter, tflite._runners = wrapper, {}
        expected = []
        for seg in segments(len(ids), NEW, CTX):  # no row is padded: slot = window width + step - 1
            for b in (8, 1):  # the step signature grows with the filled slots
                expected += [f"start_{b}"] + [f"step{step_length(lengths, seg.width + i - 1)}_{b}"
                                              for i in range(1, seg.count)]
        assert calls == expected
    assert lengths == [16, 32] and "step16_8" in expected and "step32_8" in expected
