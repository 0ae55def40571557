"""Classifier: raw strings in, labels out; Keras, SavedModel and TFLite agree."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import kerasllm
import tasks


def test_predictions_are_probabilities_over_the_classes(classifier, topic_split):
    _, train_labels, test, test_labels = topic_split
    probs = classifier.predict_proba(test)
    assert probs.shape == (len(test), len(set(train_labels)))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert classifier.classes == sorted(set(train_labels))
    assert classifier.predict(test) == [classifier.classes[i] for i in probs.argmax(axis=1)]
    metrics = classifier.evaluate(test, test_labels)
    assert metrics["accuracy"] > 0.7  # five documentation topics; chance is about 0.3
    assert set(metrics["per_class"]) == set(classifier.classes)
    assert np.array(metrics["confusion_matrix"]).sum() == len(test)


def test_beats_tfidf_logistic_regression_on_builtin_topics(classifier, topic_split):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train, train_labels, test, test_labels = topic_split
    vectorizer = TfidfVectorizer()
    baseline = LogisticRegression(max_iter=1000).fit(vectorizer.fit_transform(train), train_labels)
    baseline_accuracy = np.mean(baseline.predict(vectorizer.transform(test)) == np.array(test_labels))
    assert classifier.evaluate(test, test_labels)["accuracy"] >= baseline_accuracy - 0.02


def test_bad_input(classifier):
    assert classifier.predict([]) == []
    assert classifier.predict_proba([]).shape == (0, len(classifier.classes))
    with pytest.raises(TypeError, match=r"texts\[2\]"):
        classifier.predict(["a", "b", None])
    with pytest.raises(ValueError, match="architecture must be one of"):
        tasks.train_classifier(["a", "b"], ["x", "y"], architecture="transformer")
    with pytest.raises(ValueError, match="at least two classes"):
        tasks.train_classifier(["a", "b"], ["x", "x"])
    for weight in (-1.0, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="recurrent_weight must be None"):
            tasks.train_classifier(["a", "b"], ["x", "y"], recurrent_weight=weight)


def test_save_and_load_give_identical_probabilities(classifier, topic_split, tmp_path):
    test = topic_split[2]
    path = classifier.save(tmp_path / "clf")
    again = kerasllm.load_classifier(path)
    np.testing.assert_array_equal(again.predict_proba(test), classifier.predict_proba(test))
    classifier.save(path)  # saving over an existing save replaces it whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]
    # saved before bag_tf existed: loads with the raw term frequency that model was fitted with
    saved = json.loads((path / "classifier.json").read_text())
    del saved["config"]["bag_sublinear"], saved["config"]["bag_tf"], saved["settings"]["bag_tf"]
    (path / "classifier.json").write_text(json.dumps(saved))
    older = kerasllm.load_classifier(path)
    assert older.config_.bag_sublinear is None  # counted raw, as such a model was fitted
    assert not np.allclose(older.predict_proba(test), classifier.predict_proba(test), atol=1e-3)
    (tmp_path / "clf" / "classifier.json").write_text("{broken")
    with pytest.raises(ValueError, match="damaged"):
        kerasllm.load_classifier(path)


def test_keras_savedmodel_and_tflite_agree(classifier, classifier_export, topic_split):
    texts = topic_split[2] + ["", "我爱北京", "👍🏽 ok", "word " * 500]
    keras_probs = classifier.predict_proba(texts)
    tflite = kerasllm.load(classifier_export["version_dir"].parent)
    saved = kerasllm.load(classifier_export["version_dir"].parent, prefer="saved_model")
    assert type(tflite).__name__ == "TFLiteClassifier" and type(saved).__name__ == "SavedModelClassifier"
    np.testing.assert_allclose(saved.predict_proba(texts), keras_probs, atol=1e-4)
    np.testing.assert_allclose(tflite.predict_proba(texts), keras_probs, atol=1e-4)
    # one text at a time takes the length-bucketed signatures: same answers
    singles = np.concatenate([tflite.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(singles, keras_probs, atol=1e-4)
    assert tflite.predict(texts) == classifier.predict(texts)


def test_tflite_file_is_usable_on_its_own(classifier, classifier_export, topic_split, tmp_path):
    from kerasllm.runtime.classifier import TFLiteClassifier

    alone = tmp_path / "alone.tflite"
    shutil.copy(classifier_export["tflite"], alone)
    predictor = TFLiteClassifier(alone)
    assert predictor.classes == classifier.classes
    assert predictor.predict(topic_split[2][:20]) == classifier.predict(topic_split[2][:20])


def test_savedmodel_loads_with_plain_tensorflow(classifier, classifier_export, tmp_path):
    script = (
        "import os, json, sys; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'\n"
        "import tensorflow as tf\n"
        f"m = tf.saved_model.load({str(classifier_export['saved_model'])!r})\n"
        "out = m.signatures['serving_default'](texts=tf.constant(['how do I format a float?', '']))\n"
        "print(json.dumps({'labels': [l.decode() for l in out['label'].numpy()],"
        " 'sums': out['probabilities'].numpy().sum(axis=1).tolist()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["labels"] == classifier.predict(["how do I format a float?", ""])
    np.testing.assert_allclose(out["sums"], 1.0, rtol=1e-5)


def test_export_writes_serving_layout_with_increasing_versions(classifier, classifier_export, tmp_path):
    import shutil

    first = classifier_export["version_dir"]  # the session export: version 1 (one conversion fewer)
    shutil.copytree(first.parent, tmp_path / "m")
    second = tasks.export(classifier, tmp_path / "m", formats=("tflite",))
    assert (first.name, second["version_dir"].name) == ("1", "2")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]  # no temporary folders left
    with pytest.raises(ValueError, match="unknown export formats"):
        tasks.export(classifier, tmp_path / "m", formats=("onnx",))


def test_same_seed_trains_the_same_model(topic_split):
    train, labels = topic_split[0][:80], topic_split[1][:80]
    # a short max_length: 16 unrolled recurrent steps instead of 128 build and run faster
    a = tasks.train_classifier(train, labels, epochs=1, seed=3, max_length=16)
    b = tasks.train_classifier(train, labels, epochs=1, seed=3, max_length=16)
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("options", [
    {"architecture": "lstm", "bidirectional": True, "bag_of_ngrams": False},
    # and the bag's raw term frequency: the session's classifier counts n-grams sublinearly
    {"architecture": "gru", "pooling": "average", "class_weight": "balanced", "bag_tf": "raw"},
])
def test_other_architectures_train_and_export_with_parity(options, topic_split, tmp_path):
    train, labels = topic_split[0][:200], topic_split[1][:200]
    test = topic_split[2][:40] + ["", "a", "list list list list of lists", "list " * 40, "日本語 🙂🙂🙂 list"]
    clf = tasks.train_classifier(train, labels, epochs=1, max_length=12, **options)  # buckets 8 and 12
    tasks.export(clf, tmp_path / "m", formats=("tflite",))
    np.testing.assert_allclose(kerasllm.load(tmp_path / "m").predict_proba(test), clf.predict_proba(test), atol=1e-4)


@pytest.mark.slow
def test_sms_spam_quality(shared_data):
    from kerasllm.data import read_table, stratified_split

    train, train_labels, test, test_labels = stratified_split(
        *read_table(shared_data / "sms_spam.tsv", "text", "label"), test_size=0.2, seed=0)
    metrics = tasks.train_classifier(train, train_labels).evaluate(test, test_labels)
    assert metrics["accuracy"] >= 0.985 and metrics["macro_f1"] >= 0.965, metrics


# -- correctness: threads, the ids contract, estimator settings, labels, odd input ---------------------
def _expected(classifier, texts):
    return classifier.predict_proba(texts)


def test_tflite_predictor_is_safe_to_share_between_threads(classifier, classifier_export, topic_split):
    from concurrent.futures import ThreadPoolExecutor

    texts = topic_split[2][:40] + ["", "word " * 300]
    expected = _expected(classifier, texts)
    predictor = kerasllm.load(classifier_export["version_dir"].parent)
    assert type(predictor).__name__ == "TFLiteClassifier"

    def work(worker):
        wrong = 0
        for i in range(300):
            j = (i * 7 + worker) % len(texts)
            if i % 50 == 0:  # batches too (another interpreter, bucketed)
                got = predictor.predict_proba(texts)
                wrong += int(not np.allclose(got, expected, atol=1e-4))
            else:
                wrong += int(not np.allclose(predictor.predict_proba([texts[j]])[0], expected[j], atol=1e-4))
        return wrong

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, range(4))) == [0, 0, 0, 0]


def test_tflite_batches_of_any_size_give_the_keras_answer_and_run_at_their_own_buckets(classifier, classifier_export,
                                                                                       topic_split):
    texts = ["short", "word " * 300, "", *topic_split[2][:40]]
    expected = _expected(classifier, texts)
    predictor = kerasllm.load(classifier_export["version_dir"].parent)
    for k in (2, 3, 5, 8, 9, 43):
        np.testing.assert_allclose(predictor.predict_proba(texts[:k]), expected[:k], atol=1e-4)
    # two texts of different length buckets: each at its own bucket and batch 1, no padded block
    fresh = kerasllm.load(classifier_export["version_dir"].parent)
    np.testing.assert_allclose(fresh.predict_proba(texts[:2]), expected[:2], atol=1e-4)
    assert fresh._state().runners == {}
    # a few texts of one bucket: still the batch-1 interpreter; four: one call in a block of 4
    same = ["short", "words", "a few", "more words"]
    np.testing.assert_allclose(fresh.predict_proba(same[:3]), _expected(classifier, same[:3]), atol=1e-4)
    assert fresh._state().runners == {}
    np.testing.assert_allclose(fresh.predict_proba(same), _expected(classifier, same), atol=1e-4)
    assert list(fresh._state().runners) == [(4, 0)]


def test_savedmodel_predictor_is_safe_to_share_between_threads(classifier, classifier_export, topic_split):
    from concurrent.futures import ThreadPoolExecutor

    texts = topic_split[2][:12]
    expected = _expected(classifier, texts)
    predictor = kerasllm.load(classifier_export["version_dir"].parent, prefer="saved_model")

    def work(worker):
        return sum(int(not np.allclose(predictor.predict_proba(texts[: 1 + (i + worker) % 12]),
                                       expected[: 1 + (i + worker) % 12], atol=1e-4)) for i in range(12))

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, range(4))) == [0, 0, 0, 0]


def test_tflite_ids_padded_on_either_side_give_the_keras_answer(classifier, classifier_export, topic_split):
    """The documented layout: [word ids | char n-gram ids] per bucket, 0 = padding on any side."""
    from kerasllm.export import tflite as tflite_lib

    texts = ["how do I format a float?", "import a module from a package", "", "split a string on commas"]
    expected = classifier.predict_proba(texts)
    config = tflite_lib.read_attached(classifier_export["tflite"])
    interpreter = tflite_lib.interpreter(classifier_export["tflite"])
    for n, g in config["buckets"]:
        runner = interpreter.get_signature_runner(f"predict_{n}")
        rows = np.zeros((len(texts), n + g), np.int32)
        for row, text in zip(rows, texts):
            words, grams = classifier.tokenizer.ids_one(text)
            if len(words) > n or len(grams) > g:
                continue
            row[n - len(words):n] = words  # words padded on the left
            row[n + g - len(grams):] = grams  # n-grams padded on the left
        fits = [len(classifier.tokenizer.ids_one(t)[0]) <= n for t in texts]
        got = runner(token_ids=rows)["probabilities"]
        np.testing.assert_allclose(got[fits], expected[fits], atol=1e-4)
    # the SavedModel's ids signature takes the full width, padded either way too
    import tensorflow as tf

    saved = tf.saved_model.load(str(classifier_export["saved_model"]))
    right = classifier.tokenizer.encode(texts)
    n = classifier.config.max_length
    left = np.zeros_like(right)
    for i, (words, grams) in enumerate(classifier.tokenizer.ids_one(t) for t in texts):
        left[i, n - len(words):n] = words
        left[i, right.shape[1] - len(grams):] = grams
    got = saved.signatures["predict_ids"](token_ids=tf.constant(left))["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def _log_loss(z, y):
    z = z - z.max(1, keepdims=True)
    return -(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(len(y)), y].mean()


def _best_temperature_loss(z, y):
    from scipy.optimize import minimize_scalar

    return minimize_scalar(lambda t: _log_loss(t * z, y), bounds=(1e-3, 1e3), method="bounded").fun


def test_recurrent_mix_never_makes_the_sum_worse_than_the_bag_on_validation():
    from kerasllm.models.classifier import choose_recurrent_mix

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    prior = np.bincount(y, minlength=3)
    bag = rng.normal(size=(200, 3)) + 2.0 * np.eye(3)[y]  # informative
    noise = 5.0 * rng.normal(size=(200, 3))  # a recurrent path that learned nothing
    weight, offset, gain_se = choose_recurrent_mix(noise, bag, y, prior)
    assert (weight, offset) == (0.0, [0.0] * 3) and gain_se < 2  # no significant gain: the bag
    helpful = 3.0 * np.eye(3)[y] + rng.normal(size=(200, 3))
    weight, offset, gain_se = choose_recurrent_mix(helpful, bag, y, prior)
    assert weight > 0 and gain_se >= 2 and _log_loss(bag + weight * helpful + offset, y) < _log_loss(bag, y)
    np.testing.assert_allclose(offset, -weight * np.log(prior / prior.sum()), rtol=1e-6)  # the prior, once
    for recurrent in (noise, helpful, -helpful):
        weight, offset, _ = choose_recurrent_mix(recurrent, bag, y, prior)
        assert _best_temperature_loss(bag + weight * recurrent + offset, y) <= _best_temperature_loss(bag, y) + 1e-9


def test_recurrent_mix_keeps_only_a_gain_of_two_standard_errors():
    """A recurrent path that repeats the bag's evidence, with a little of its own, lowers the
    validation log-loss a bit by chance; unless the gain reaches MIN_GAIN_SE standard errors
    its weight is 0. One that knows what the bag does not keeps its weight."""
    from kerasllm.models.classifier import MIN_GAIN_SE, choose_recurrent_mix

    assert MIN_GAIN_SE == 2.0
    rng = np.random.default_rng(3)
    n = 300
    y = rng.integers(0, 2, n)
    prior = np.bincount(y, minlength=2)
    signal = np.eye(2)[y] - 0.5
    bag = 2.0 * signal + rng.normal(size=(n, 2))
    echo = bag + 0.3 * signal + 2.0 * rng.normal(size=(n, 2))  # the bag again, plus a little and noise
    assert choose_recurrent_mix(echo, bag, y, prior)[0] == 0.0
    own = 2.0 * signal + rng.normal(size=(n, 2))  # as informative as the bag, and independent of it
    assert choose_recurrent_mix(own, bag, y, prior)[0] > 0.5


def test_recurrent_mix_needs_enough_validation_texts():
    """On fewer than MIN_GAIN_TEXTS validation texts even a helpful-looking recurrent path gets
    weight 0 (so few texts cannot tell help from luck); at MIN_GAIN_TEXTS it gets its weight."""
    from kerasllm.models.classifier import MIN_GAIN_TEXTS, choose_recurrent_mix

    rng = np.random.default_rng(2)
    n = MIN_GAIN_TEXTS
    y = rng.integers(0, 5, n)
    prior = np.bincount(y, minlength=5)
    bag = rng.normal(size=(n, 5)) + 2.5 * np.eye(5)[y]
    helpful = 4.0 * np.eye(5)[y] + rng.normal(size=(n, 5))
    assert choose_recurrent_mix(helpful, bag, y, prior)[0] > 0
    weight, offset, gain_se = choose_recurrent_mix(helpful[:n - 1], bag[:n - 1], y[:n - 1], prior)
    assert (weight, offset) == (0.0, [0.0] * 5) and np.isnan(gain_se)


def test_recurrent_mix_is_not_chosen_to_fix_an_under_confident_bag():
    """A small-data bag is under-confident; any added logits then lower its log-loss, so a weight
    chosen on the plain log-loss let a recurrent path that carries no signal into the sum."""
    from kerasllm.models.classifier import choose_recurrent_mix

    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 150)  # enough texts for a weight to be chosen at all (MIN_GAIN_TEXTS)
    bag = 0.3 * (rng.normal(size=(150, 5)) + 3.0 * np.eye(5)[y])  # right, but timid
    confident_noise = 2.0 * rng.normal(size=(150, 5)) + 0.8 * np.eye(5)[y]  # mostly wrong on its own
    assert np.mean(confident_noise.argmax(1) == y) < np.mean(bag.argmax(1) == y) - 0.3
    weight, offset, _ = choose_recurrent_mix(confident_noise, bag, y, np.bincount(y, minlength=5))
    assert np.mean((bag + weight * confident_noise + offset).argmax(1) == y) >= np.mean(bag.argmax(1) == y)


def test_default_bag_path_is_the_bag_alone_after_the_refit(classifier, topic_split):
    """With its own held-out split, the default learns everything again from all texts: its bag
    path is the model that recurrent=False gives (same vocabulary, idf and logistic regression)."""
    from kerasllm.models.classifier import paths_model

    train, labels, test = topic_split[0], topic_split[1], topic_split[2]
    bag_alone = tasks.train_classifier(train, labels, seed=0, recurrent=False)
    assert classifier.history_["refit_epochs"] and classifier.tokenizer.vocabulary == bag_alone.tokenizer.vocabulary
    recurrent, bag = paths_model(classifier.model_).predict(classifier.tokenizer.encode(test), verbose=0)
    np.testing.assert_allclose(bag, paths_model(bag_alone.model_).predict(bag_alone.tokenizer.encode(test), verbose=0),
                               atol=1e-5)
    cfg = classifier.config_
    np.testing.assert_allclose(np.log(classifier.predict_proba(test)),
                               np.log(_softmax(bag + cfg.recurrent_scale * recurrent + cfg.recurrent_offset)),
                               atol=1e-4)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_svd_embeddings_start_words_of_one_topic_close():
    from kerasllm.models.classifier import ema_momentum, svd_embeddings

    rng = np.random.default_rng(0)
    # ids 2-11 occur in texts of one kind, 12-21 in the other; 0 padding, 1 the unknown word
    words = np.array([np.r_[rng.choice(np.arange(2, 12) + 10 * (i % 2), 6), [1, 0, 0]] for i in range(80)])
    vectors = svd_embeddings(words, 22, 8)
    assert vectors.shape == (22, 8) and not vectors[:2].any()  # padding and unknown stay at their start
    unit = vectors[2:] / np.linalg.norm(vectors[2:], axis=1, keepdims=True)
    cos = unit @ unit.T
    same = np.mean([cos[i, j] for i in range(20) for j in range(20) if i != j and i // 10 == j // 10])
    other = np.mean([cos[i, j] for i in range(20) for j in range(20) if i // 10 != j // 10])
    assert same > other + 0.5
    # the weights' average spans about an epoch at most: on 300 texts (10 steps) it must not stall training
    assert ema_momentum(0.995, 10) == 0.9 and ema_momentum(0.995, 1000) == 0.995


def test_float16_tflite_gives_finite_probabilities(classifier, topic_split, tmp_path):
    """float16 conversion stores float constants in half precision: a tiny epsilon (1e-12) became 0
    and an empty text's TF-IDF norm 0/0 = NaN."""
    from kerasllm.export.classifier import length_buckets, write_tflite
    from kerasllm.runtime.classifier import TFLiteClassifier

    texts = ["", "qqqzzz xxyyk", *topic_split[2][:20]]
    short = [t for t in texts if len(classifier.tokenizer.ids_one(t)[0]) <= length_buckets(classifier.config)[0][0]]
    write_tflite(classifier, tmp_path, "float16", buckets=length_buckets(classifier.config)[:1])
    got = TFLiteClassifier(tmp_path / "model.tflite").predict_proba(short)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, classifier.predict_proba(short), atol=2e-3)


def test_savedmodel_signature_is_xla_compiled(classifier_export):
    import tensorflow as tf

    saved = tf.saved_model.load(str(classifier_export["saved_model"]))
    graph = saved.signatures["serving_default"].graph.as_graph_def()
    functions = list(graph.library.function)
    marked = [f.signature.name for f in functions if f.attr["_XlaMustCompile"].b]
    marked += [n.name for f in functions for n in f.node_def if n.attr["_XlaMustCompile"].b]
    marked += [n.name for n in graph.node if n.attr["_XlaMustCompile"].b]
    assert marked, "no XLA-compiled function in the SavedModel's serving signature"


def test_savedmodel_pads_to_a_few_batch_sizes(classifier_export, topic_split):
    import time

    from kerasllm.export.classifier import SERVING_BATCH_SIZES, padded_batch_size

    assert [padded_batch_size(n) for n in (0, 1, 2, 8, 9, 64, 65, 256, 257)] == [1, 1, 8, 8, 64, 64, 256, 256, 512]
    assert SERVING_BATCH_SIZES[:2] == (1, 8)
    predictor = kerasllm.load(classifier_export["version_dir"].parent, prefer="saved_model")
    texts = topic_split[2]
    t0 = time.perf_counter()
    predictor.predict_proba(texts[:2])  # compiles batch size 8
    first = time.perf_counter() - t0
    later = []
    for n in (3, 4, 5, 6, 7):  # same padded size: no compilation
        t0 = time.perf_counter()
        predictor.predict_proba(texts[:n])
        later.append(time.perf_counter() - t0)
    assert max(later) < first / 3, (first, later)


def test_default_max_length_covers_all_but_the_longest_percent():
    from kerasllm.models.classifier import default_max_length

    # 5% of the texts are 40 words long: a 95th-percentile rule would cut them at 16 words
    texts = ["w " * 10] * 95 + ["w " * 40] * 5
    assert default_max_length(texts) == 40
    assert default_max_length(["a b"] * 10) == 16 and default_max_length(["w " * 300] * 10) == 300
    assert default_max_length(["w " * 5000] * 10) == 2048


def test_recurrent_path_reads_the_first_recurrent_length_words_and_the_bag_reads_all(topic_split, tmp_path):
    """A long text: the bag of n-grams reads every word up to max_length, the recurrent path the
    first recurrent_length words, whichever side the ids are padded on (Keras, SavedModel, TFLite)."""
    import tensorflow as tf

    from kerasllm.export import tflite as tflite_lib
    from kerasllm.models.classifier_layers import paths_model

    train, labels = topic_split[0][:200], topic_split[1][:200]
    clf = tasks.train_classifier(train, labels, epochs=2, max_length=40, recurrent_length=16, recurrent_weight=0.5)
    assert clf.config_.recurrent_length == 16 and clf.get_params()["recurrent_length"] == 16
    base = "how do I read a file line by line in python and print each line "  # 15 words
    texts = [base + "then sort it", base + "then sort it " + "thread lock queue " * 6,
             base + "then sort it " + "socket server request " * 6, "", base * 3]
    rec, bag = paths_model(clf.model_).predict(clf.tokenizer_.encode(texts), verbose=0)
    np.testing.assert_allclose(rec[1], rec[0], atol=1e-6)  # words after the 16th: the recurrent path never sees them
    np.testing.assert_allclose(rec[2], rec[0], atol=1e-6)
    assert np.abs(bag[1] - bag[2]).max() > 1e-3  # ... the bag does
    expected = clf.predict_proba(texts)
    paths = tasks.export(clf, tmp_path / "m")
    tflite = kerasllm.load(tmp_path / "m")
    np.testing.assert_allclose(tflite.predict_proba(texts), expected, atol=1e-4)
    np.testing.assert_allclose(np.concatenate([tflite.predict_proba([t]) for t in texts]), expected, atol=1e-4)
    # ids padded on the left, at every bucket and in the SavedModel's full width
    ids = [clf.tokenizer_.ids_one(t) for t in texts]

    def left_padded(n, g):
        rows = np.zeros((len(texts), n + g), np.int32)
        for row, (words, grams) in zip(rows, ids):
            if len(words) <= n and len(grams) <= g:
                row[n - len(words):n], row[n + g - len(grams):] = words, grams
        return rows, np.array([len(w) <= n and len(gr) <= g for w, gr in ids])

    interpreter = tflite_lib.interpreter(paths["tflite"])
    buckets = tflite_lib.read_attached(paths["tflite"])["buckets"]
    assert [n for n, _ in buckets] == [8, 24, 40]  # 24 and 40: longer than the recurrent path reads
    assert tflite_lib.read_attached(paths["tflite"])["recurrent_length"] == 16
    for n, g in buckets:
        rows, fits = left_padded(n, g)
        got = interpreter.get_signature_runner(f"predict_{n}")(token_ids=rows)["probabilities"]
        np.testing.assert_allclose(got[fits], expected[fits], atol=1e-4)
    rows, fits = left_padded(clf.config_.max_length, clf.tokenizer_.max_char_grams)
    assert fits.all()
    saved = tf.saved_model.load(str(paths["saved_model"]))
    got = saved.signatures["predict_ids"](token_ids=tf.constant(rows))["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_settings_are_kept_apart_from_learned_state(topic_split):
    from sklearn.base import clone

    from kerasllm.models.classifier import TextClassifier

    clf = TextClassifier(units=8, embedding_dim=8, bigram_buckets=256, class_weight="balanced")
    params = clf.get_params()
    assert params["units"] == 8 and params["max_length"] is None and "labels" not in params
    assert clone(clf).get_params() == params
    short = ["a b", "c d", "a c", "b d"] * 5
    clf.fit(short, ["x", "y", "x", "y"] * 5, epochs=1)
    assert clf.get_params() == params  # fit changed no setting
    assert clf.config_.max_length == 16 and clf.classes_ == ["x", "y"]
    fitted = [name for name in vars(clf) if name.endswith("_") and not name.startswith("_")]
    assert {"config_", "tokenizer_", "model_", "history_"} <= set(fitted)
    long_texts = topic_split[0][:60]
    clf.set_params(units=4).fit(long_texts, topic_split[1][:60], epochs=1)
    assert clf.config_.max_length > 16 and clf.config_.units == 4  # the second fit started from the settings
    with pytest.raises(ValueError, match="unknown TextClassifier settings|Invalid parameter"):
        clf.set_params(colour="blue")
    with pytest.raises(TypeError, match="unknown TextClassifier settings"):
        TextClassifier(colour="blue")


def test_works_in_a_pipeline_and_grid_search():
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from kerasllm.models.classifier import TextClassifier

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(["good", "great", "fine"] if k else ["bad", "awful", "poor"], 4)) for k in
             [0, 1] * 20]
    labels = [0, 1] * 20
    pipe = make_pipeline(FunctionTransformer(lambda xs: [x.upper() for x in xs]),
                         TextClassifier(units=4, embedding_dim=4, bigram_buckets=64, max_length=8))
    search = GridSearchCV(pipe, {"textclassifier__dropout": [0.0, 0.3]}, cv=2)
    search.fit(texts, labels, textclassifier__epochs=3)
    assert search.best_score_ > 0.9
    assert search.predict(["GREAT FINE"]) == [1]
    assert all(type(label) is int for label in search.predict(texts))


def test_labels_keep_their_type_and_none_is_refused(topic_split):
    texts, names = topic_split[0][:120], topic_split[1][:120]
    codes = sorted(set(names))
    labels = [np.int64(codes.index(n)) for n in names]  # numpy ints, as pandas gives them
    clf = tasks.train_classifier(texts, labels, epochs=1, units=4, embedding_dim=4, bigram_buckets=256,
                                 class_weight={0: 2.0, 1: 1.0})
    assert clf.classes_ == list(range(len(codes)))
    assert all(type(p) is int for p in clf.predict(texts[:5]))
    assert set(clf.evaluate(texts, labels)["per_class"]) == set(range(len(codes)))
    with pytest.raises(ValueError, match="class_weight names unknown labels"):
        tasks.train_classifier(texts, labels, epochs=1, class_weight={"0": 2.0})
    with pytest.raises(TypeError, match=r"labels\[1\] is None"):
        tasks.train_classifier(["a", "b", "c"], ["x", None, "y"], epochs=1)
    with pytest.raises(TypeError, match="mix str and int"):
        tasks.train_classifier(["a", "b", "c"], ["x", 1, "y"], epochs=1)


def test_a_class_with_one_example_never_breaks_the_validation_split():
    from kerasllm.models.classifier import holdout

    texts = [f"text number {i} about {'cats' if i % 2 else 'dogs'}" for i in range(40)] + ["a lone fish"]
    labels = ["cat" if i % 2 else "dog" for i in range(40)] + ["fish"]
    train, val = holdout(labels, 0.1, seed=0)
    assert 40 in train and sorted(train + val) == list(range(41)) and len(val) == 4
    clf = tasks.train_classifier(texts, labels, max_epochs=1, units=4, embedding_dim=4, bigram_buckets=64)
    assert "fish" in clf.classes_
    fixed = tasks.train_classifier(texts, labels, epochs=1, units=4, embedding_dim=4, bigram_buckets=64)
    assert "val_loss" not in fixed.history_  # fixed epochs: nothing held out
    assert fixed.tokenizer_.vocabulary.count("fish") == 0 and "cats" in fixed.tokenizer_.vocabulary


def test_degenerate_vocabulary_huge_token_and_surrogates(tmp_path):
    import time

    texts = [f"w{i}x" for i in range(30)]  # no word seen twice: only the special ids
    labels = ["a", "b"] * 15
    clf = tasks.train_classifier(texts, labels, epochs=1, units=4, embedding_dim=4, bigram_buckets=64)
    assert clf.tokenizer_.vocab_size == 5
    tasks.export(clf, tmp_path / "m")
    huge = "x" * 10_000_000
    probe = ["w1x", "", huge, "ok " + huge[:1000]]
    expected = clf.predict_proba(probe)
    for prefer in ("tflite", "saved_model"):
        t0 = time.perf_counter()
        got = kerasllm.load(tmp_path / "m", prefer=prefer).predict_proba(probe)
        assert time.perf_counter() - t0 < 60
        np.testing.assert_allclose(got, expected, atol=1e-4)
    for bad in (["fine", "lone \ud800 surrogate"],):
        with pytest.raises(ValueError, match=r"texts\[1\] holds a lone surrogate"):
            clf.predict(bad)
        with pytest.raises(ValueError, match="lone surrogate"):
            kerasllm.load(tmp_path / "m").predict(bad)


def test_cli_predict_reads_a_file_and_stdin(classifier_export, tmp_path, monkeypatch, capsys):
    import io

    from kerasllm.cli import main

    model = str(classifier_export["version_dir"].parent)
    data = tmp_path / "texts.txt"
    data.write_text("how do I format a float?\n\nimport a module\n", encoding="utf-8")
    assert main(["classify", "predict", "--model", model, "--file", str(data)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[-1] for line in lines] == ["how do I format a float?", "import a module"]
    monkeypatch.setattr("sys.stdin", io.StringIO("split a string\n"))
    assert main(["classify", "predict", "--model", model]) == 0
    assert capsys.readouterr().out.strip().split("\t")[-1] == "split a string"


def test_texts_that_repeat_each_other_are_one_group_held_out_together():
    from kerasllm.models.classifier import containment_groups, effective_bag_c, holdout

    sentences = [f"review {i} says the {'food was great' if i % 2 else 'service was slow'} today" for i in range(40)]
    texts, labels = [], []
    for i, s in enumerate(sentences):  # each sentence, two of its phrases and a copy in other case
        words = s.split()
        for t in (s, " ".join(words[:3]), " ".join(words[1:5]), s.upper()):
            texts.append(t)
            labels.append("good" if i % 2 else "bad")
    groups = containment_groups(texts)
    assert list(groups) == [4 * (i // 4) for i in range(len(texts))]  # every text joins its sentence
    assert list(containment_groups(sentences)) == list(range(40))  # distinct sentences: one group each
    assert effective_bag_c(10.0, groups) == 2.5 and effective_bag_c(10.0, range(40)) == 10.0
    train, val = holdout(labels, 0.1, seed=0, groups=groups)
    assert sorted(train + val) == list(range(len(texts))) and len(val) == 16  # 4 of 40 sentences
    assert not {groups[i] for i in train} & {groups[i] for i in val}
    assert {labels[i] for i in val} == {"good", "bad"}
    # without groups the same call splits the sentences' phrases between the two sides
    train, val = holdout(labels, 0.1, seed=0)
    assert {groups[i] for i in train} & {groups[i] for i in val}


def test_every_text_twice_fits_the_same_bag_as_once(topic_split):
    """The bag's C counts independent examples: copies (or phrases) of a text do not loosen its
    regularisation, so a logistic regression on every text twice is the one on every text once."""
    from kerasllm.models.classifier import containment_groups, effective_bag_c, fit_bag

    train, train_labels, _, _ = topic_split
    twice = tasks.train_classifier(train + train, train_labels + train_labels, recurrent=False)
    assert twice.history_["bag_c"] == [5.0]  # the classifier fits its bag at the effective C
    rng = np.random.default_rng(0)
    grams, y = rng.integers(1, 200, (120, 12)), rng.integers(0, 3, 120)
    idf = rng.uniform(0.5, 3.0, 200).astype(np.float32)
    groups = containment_groups([f"text {i}" for i in range(120)] * 2)
    once = fit_bag(grams, idf, y, 3, 10.0)
    doubled = fit_bag(np.concatenate([grams, grams]), idf, np.concatenate([y, y]), 3, effective_bag_c(10.0, groups))
    np.testing.assert_allclose(doubled[0], once[0], atol=2e-3)
    np.testing.assert_allclose(doubled[1], once[1], atol=2e-3)
    looser = fit_bag(np.concatenate([grams, grams]), idf, np.concatenate([y, y]), 3, 10.0)  # the old rule
    assert np.abs(looser[0] - once[0]).max() > 0.1


def test_nb_scaling_is_folded_into_the_table():
    """With nb scaling the bag is logistic regression on features scaled by their naive-Bayes
    log-count ratios; the scale lives in the table, so the exported model computes the same."""
    from sklearn.linear_model import LogisticRegression

    from kerasllm.models.classifier import bag_features, fit_bag, nb_ratios

    rng = np.random.default_rng(0)
    grams, y = rng.integers(1, 300, (200, 10)), rng.integers(0, 3, 200)
    grams[:, 0] = 300 + y  # one id per class: the largest ratio
    idf = rng.uniform(0.5, 3.0, 310).astype(np.float32)
    x = bag_features(grams, idf)
    scale = nb_ratios(x, y, 3)
    assert scale[300:303].min() > 3 * np.median(scale[1:300])
    table, offset = fit_bag(grams, idf, y, 3, 10.0, nb=True)
    reference = LogisticRegression(C=10.0, max_iter=1000).fit(x.multiply(scale[None, :]).tocsr(), y)
    np.testing.assert_allclose(x @ table + offset, reference.decision_function(x.multiply(scale[None, :])),
                               rtol=1e-4, atol=1e-4)
    plain = fit_bag(grams, idf, y, 3, 10.0)
    assert np.abs(plain[0] - table).max() > 0.1  # the scaling changes the fit


def test_sublinear_bag_is_tfidf_with_sublinear_tf_on_every_runtime(tmp_path):
    """bag_tf="sublinear": each n-gram counts 1 + ln(its count in the row), as scikit-learn's
    TfidfTransformer(sublinear_tf=True) computes, in the numpy features the bag is fitted on, the
    Keras layer, its folded export form under XLA and in TFLite; rows at the edges: all padding,
    one id, one id repeated over the whole width, all ids distinct, padding on both sides."""
    from scipy.sparse import csr_matrix
    from sklearn.feature_extraction.text import TfidfTransformer

    from kerasllm._tf import tf
    from kerasllm.export import tflite as tflite_lib
    from kerasllm.models.classifier import bag_features
    from kerasllm.models.classifier_layers import IdfBag, idf_weights

    rng = np.random.default_rng(0)
    width, size = 48, 60
    grams = np.where(rng.random((40, width)) < 0.3, 0, rng.zipf(1.5, (40, width)) % size).astype(np.int32)
    grams[0] = 0
    grams[1, :] = 0
    grams[1, 7] = 5
    grams[2, :] = 9
    grams[3] = np.arange(1, width + 1)
    grams[4, :10] = grams[4, -10:] = 0
    idf = idf_weights(grams[5:], size)  # rows 0-4 then hold ids never seen (idf 0) too
    table = rng.normal(size=(size, 3)).astype(np.float32)
    counts = csr_matrix((np.ones(grams.size), (np.repeat(np.arange(len(grams)), width), grams.ravel())),
                        shape=(len(grams), size))
    counts.sum_duplicates()
    counts = counts.multiply(idf[None, :] > 0).tocsr()
    counts.eliminate_zeros()
    sklearn = TfidfTransformer(sublinear_tf=True).fit(counts[5:])
    np.testing.assert_allclose(sklearn.idf_[idf > 0], idf[idf > 0], rtol=1e-6)
    expected = sklearn.transform(counts) @ table
    features = bag_features(grams, idf, sublinear=True)
    np.testing.assert_allclose(features @ table, expected, atol=1e-6)

    bag = IdfBag(idf, sublinear=True)
    folded = bag.fold(tf.constant(table))
    np.testing.assert_allclose(bag([tf.gather(table, grams), tf.constant(grams)]).numpy(), expected, rtol=1e-6, atol=2e-6)
    xla = tf.function(lambda ids: bag.call_folded(folded, ids), jit_compile=True)
    np.testing.assert_allclose(xla(tf.constant(grams)).numpy(), expected, rtol=1e-6, atol=2e-6)
    spec = tf.TensorSpec([None, width], tf.int32, name="token_ids")
    function = tf.function(lambda token_ids: {"logits": bag.call_folded(folded, token_ids)}, input_signature=[spec])
    (tmp_path / "bag.tflite").write_bytes(tflite_lib.convert([function.get_concrete_function()], tf.Module()))
    runner = tflite_lib.interpreter(tmp_path / "bag.tflite").get_signature_runner()
    np.testing.assert_allclose(runner(token_ids=grams)["logits"], expected, rtol=1e-6, atol=2e-6)
    # the raw rule (models saved before bag_tf) is unchanged: each occurrence weighs its idf
    raw = IdfBag(idf)([tf.gather(table, grams), tf.constant(grams)]).numpy()
    np.testing.assert_allclose(bag_features(grams, idf) @ table, raw, rtol=1e-6, atol=2e-6)
    assert np.abs(raw[2:5] - expected[2:5]).max() > 0.1


def test_bag_scaling_is_kept_only_on_a_two_standard_error_gain():
    """``bag_scaling="auto"`` scales by naive-Bayes ratios only when that gains two standard errors
    of held-out log-loss: yes where a few words carry the label among Zipf-distributed common
    ones (as in text), no where the labels are noise or the texts too few."""
    from kerasllm.models.classifier import MIN_GAIN_SE, choose_bag_features

    assert MIN_GAIN_SE == 2.0
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.integers(0, 2, n)
    zipf = 1.0 / np.arange(1, 5001)
    words = 1 + rng.choice(5000, (n, 15), p=zipf / zipf.sum())
    cues = 5001 + 100 * y[:, None] + rng.integers(0, 100, (n, 15))  # 100 words per class
    grams = np.where(rng.random((n, 15)) < 0.05, cues, words)
    idf = np.ones(5201, np.float32)
    (nb, sublinear), gain = choose_bag_features(grams, idf, y, 2, 10.0, np.arange(n), 0, sublinear=(False,))
    assert nb and not sublinear and gain >= 2.0
    (nb, _), gain = choose_bag_features(grams, idf, rng.permutation(y), 2, 10.0, np.arange(n), 0, sublinear=(False,))
    assert not nb and gain < 2.0
    (nb, _), gain = choose_bag_features(grams[:90], idf, y[:90], 2, 10.0, np.arange(90), 0)
    assert not nb and np.isnan(gain)  # under BAG_SCALING_MIN_TEXTS texts: no choice


def test_term_frequency_changes_only_where_the_other_one_gains():
    """The folds keep the first (plain) term frequency unless the other gains two standard errors:
    sublinear beats raw counts where a word repeated many times in a text would swamp its L2 norm
    and hide the words that carry the label; where no n-gram repeats both are the same features,
    and the plain one stays, whichever it is."""
    from kerasllm.models.classifier import choose_bag_features

    rng = np.random.default_rng(1)
    n, width = 1200, 43
    y = rng.integers(0, 2, n)
    noisy = np.where(rng.random((n, 3)) < 0.7, y[:, None], 1 - y[:, None])  # 70% of cues point the right way
    grams = np.zeros((n, width), np.int64)
    grams[:, :3] = 1 + 50 * noisy + rng.integers(0, 50, (n, 3))
    repeats = rng.integers(1, width - 3, n)
    filler = 101 + rng.integers(0, 20, n)  # one label-free word per text, repeated 1-39 times
    for i in range(n):
        grams[i, 3:3 + repeats[i]] = filler[i]
    idf = np.ones(121, np.float32)
    idf[0] = 0.0
    (nb, sublinear), gain = choose_bag_features(grams, idf, y, 2, 10.0, np.arange(n), 0, nb=(False,),
                                                sublinear=(False, True))
    assert sublinear and gain >= 2.0
    (nb, sublinear), gain = choose_bag_features(grams, idf, y, 2, 10.0, np.arange(n), 0, nb=(False,))
    assert sublinear and gain < 0  # the default order: sublinear first, raw loses
    distinct = np.stack([rng.permutation(np.arange(1, 121))[:10] for _ in range(n)])
    distinct[:, 0] = 1 + 50 * y + rng.integers(0, 50, n)
    distinct[:, 1:] = np.where(np.isin(distinct[:, 1:], distinct[:, :1]), 0, distinct[:, 1:])
    for order in ((False, True), (True, False)):
        (nb, sublinear), _ = choose_bag_features(distinct, idf, y, 2, 10.0, np.arange(n), 0, nb=(False,),
                                                 sublinear=order)
        assert sublinear == order[0]


def test_bag_scaling_setting_is_checked_and_kept_apart_from_the_choice(topic_split):
    train, train_labels = topic_split[0], topic_split[1]
    with pytest.raises(ValueError, match="bag_scaling must be one of"):
        tasks.train_classifier(train, train_labels, recurrent=False, bag_scaling="tfidf")
    with pytest.raises(ValueError, match="bag_tf must be one of"):
        tasks.train_classifier(train, train_labels, recurrent=False, bag_tf="log")
    forced = tasks.train_classifier(train[:60], train_labels[:60], recurrent=False, bag_scaling="nb")
    assert forced.config_.bag_nb is True and "bag_nb" not in forced.history_  # forced, not chosen
    assert forced.get_params()["bag_scaling"] == "nb"  # the setting is kept, the choice is learned state
    chosen = tasks.train_classifier(train[:60], train_labels[:60], recurrent=False)
    assert chosen.config_.bag_nb is False and np.isnan(chosen.history_["bag_choice_gain_se"][0])  # too few texts
    assert chosen.config_.bag_sublinear is True and chosen.get_params()["bag_tf"] == "auto"
    forced = tasks.train_classifier(train[:60], train_labels[:60], recurrent=False, bag_tf="raw")
    assert forced.config_.bag_sublinear is False and "bag_sublinear" not in forced.history_
