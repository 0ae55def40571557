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


def test_save_and_load_give_identical_probabilities(classifier, topic_split, tmp_path):
    test = topic_split[2]
    path = classifier.save(tmp_path / "clf")
    again = kerasllm.load_classifier(path)
    np.testing.assert_array_equal(again.predict_proba(test), classifier.predict_proba(test))
    classifier.save(path)  # saving over an existing save replaces it whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]
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


def test_export_writes_serving_layout_with_increasing_versions(classifier, tmp_path):
    first = tasks.export(classifier, tmp_path / "m", formats=("tflite",))
    second = tasks.export(classifier, tmp_path / "m", formats=("tflite",))
    assert (first["version_dir"].name, second["version_dir"].name) == ("1", "2")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]  # no temporary folders left
    with pytest.raises(ValueError, match="unknown export formats"):
        tasks.export(classifier, tmp_path / "m", formats=("onnx",))


def test_same_seed_trains_the_same_model(topic_split):
    train, labels = topic_split[0][:150], topic_split[1][:150]
    a = tasks.train_classifier(train, labels, epochs=2, seed=3)
    b = tasks.train_classifier(train, labels, epochs=2, seed=3)
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("options", [
    {"architecture": "lstm", "bidirectional": True, "bag_of_ngrams": False},
    {"architecture": "gru", "pooling": "average", "class_weight": "balanced"},
])
def test_other_architectures_train_and_export_with_parity(options, topic_split, tmp_path):
    train, labels, test = topic_split[0][:200], topic_split[1][:200], topic_split[2][:40]
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
