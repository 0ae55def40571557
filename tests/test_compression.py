"""Compression: each method changes what it claims, variants export and load, a crash is a failed row."""
import json

import numpy as np
import pytest

METHODS = ("prune", "qat", "ptq_int8", "distill", "prune+qat")


@pytest.fixture(scope="module")
def classifier(topic_split):
    """A small default classifier (SimpleRNN + LR-fitted bag of n-grams) for this module: few units
    and epochs keep every fine-tuning and conversion here quick; the maths are the default model's.
    Texts are cut at 16 words (length buckets 8 and 16, instead of 8 ... 128 for these texts): the
    recurrence is unrolled per bucket, so every training graph and TFLite conversion here is a
    fraction of the size, and float variants still have more than one bucket."""
    import tasks

    train, train_labels, _, _ = topic_split
    return tasks.train_classifier(train, train_labels, seed=0, epochs=4, units=10, embedding_dim=16,
                                  bigram_buckets=8192, max_length=16)


@pytest.fixture(scope="module")
def teacher_weights(classifier):
    return [w.copy() for w in classifier.model.get_weights()]


@pytest.fixture(scope="module")
def report(classifier, topic_split, teacher_weights):
    import tasks

    train, train_labels, val, val_labels = topic_split
    # in-process conversion here (fast); test_crashing_conversion_is_a_failed_row covers the child process
    return tasks.compress(classifier, train, train_labels, validation=(val, val_labels), methods=METHODS,
                          prune_epochs=2, qat_epochs=1, distill_epochs=3, latency_runs=10, isolate=False,
                          bootstrap=300)


def test_teacher_is_never_modified(report, classifier, teacher_weights):
    """Every method trains copies: the classifier compressed keeps its weights exactly."""
    assert len(report.rows) == 1 + len(METHODS)
    now = classifier.model.get_weights()
    assert len(now) == len(teacher_weights)
    for before, after in zip(teacher_weights, now):
        np.testing.assert_array_equal(before, after)


def largest_tensors(flatbuffer, tmp_path, n=2):
    """(dtype name, element count) of the n largest tensors of a TFLite model's first signature."""
    from kerasllm.export import tflite as tflite_lib

    path = tmp_path / "m.tflite"
    path.write_bytes(flatbuffer)
    details = tflite_lib.interpreter(path).get_tensor_details()
    sizes = sorted(((int(np.prod(d["shape"])), np.dtype(d["dtype"]).name) for d in details), reverse=True)
    return [(dtype, size) for size, dtype in sizes[:n]]


def zero_fraction(variant, layer):
    clf = getattr(variant, "classifier", variant)
    return float(np.mean(clf.model.get_layer(layer).get_weights()[0] == 0))


def test_parse_methods():
    from kerasllm.compression import parse_methods

    assert parse_methods(("prune", "prune+qat", "distill+ptq_int8")) == [("prune",), ("prune", "qat"),
                                                                       ("distill", "ptq_int8")]
    with pytest.raises(ValueError, match="unknown compression method 'prun'"):
        parse_methods(["prun"])
    with pytest.raises(ValueError, match="quantizes twice"):
        parse_methods(["qat+ptq_int8"])
    with pytest.raises(ValueError, match="must be the last step"):
        parse_methods(["ptq_int8+prune"])


def test_labels_keep_their_type():
    """Integer classes are matched as integers (not as their strings); unknown or None labels are errors."""
    from types import SimpleNamespace

    from kerasllm.compression.training import encode_labelled
    from kerasllm.text.word import WordTokenizer

    tokenizer = WordTokenizer(max_length=4)
    tokenizer.fit(["a b c", "a b"])
    ints = SimpleNamespace(classes=[3, 7], tokenizer=tokenizer)
    _, y = encode_labelled(ints, ["a b", "c"], [7, np.int64(3)])
    assert y.tolist() == [1, 0]
    with pytest.raises(ValueError, match="does not know"):
        encode_labelled(ints, ["a"], ["7"])
    with pytest.raises(TypeError, match="str or int"):
        encode_labelled(ints, ["a"], [None])


def test_bad_arguments(classifier, topic_split):
    import tasks
    from kerasllm.models.classifier import TextClassifier

    train, train_labels, val, val_labels = topic_split
    with pytest.raises(TypeError, match="trained"):
        tasks.compress(TextClassifier(), train, train_labels, validation=(val, val_labels))
    with pytest.raises(ValueError, match="train_labels are required"):
        tasks.compress(classifier, train, None, validation=(val, val_labels), methods=("prune",))
    with pytest.raises(ValueError, match="validation must be"):
        tasks.compress(classifier, train, train_labels, validation=None, methods=("ptq_dynamic",))
    with pytest.raises(TypeError, match="cannot compress"):
        tasks.compress(object(), train, train_labels)


def test_rows_one_per_variant(report):
    assert [r["name"] for r in report.rows] == ["float", *METHODS]
    for r in report.rows:
        assert {"name", "tflite_bytes", "gzip_bytes", "accuracy", "macro_f1", "p50_ms", "quantization"} <= set(r)
        assert r["tflite_bytes"] == len(report[r["name"]].flatbuffer) and r["p50_ms"] > 0
    assert report.rows[0]["size_ratio"] == 1.0 and report.rows[0]["quality_drop"] == 0.0


def tensor_shapes(flatbuffer, tmp_path):
    from kerasllm.export import tflite as tflite_lib

    path = tmp_path / "shapes.tflite"
    path.write_bytes(flatbuffer)
    return [tuple(d["shape"]) for d in tflite_lib.interpreter(path).get_tensor_details()]


def test_pruned_file_is_smaller_on_disk(report, classifier, tmp_path):
    pruned, float_variant = report["prune"], report["float"]
    info = report.details["prune"]
    cfg, units = classifier.config, pruned.classifier.config.units
    assert info["pruning"] == "units" and units == round(0.2 * cfg.units) and pruned.quantization is None
    assert pruned.classifier.config.bigram_buckets == cfg.bigram_buckets // 4
    # the folded word table (vocabulary x units of both directions) in the file has the pruned width,
    # and so has the pruned model's own embedding (its columns feed only the kept units)
    assert pruned.classifier.config.embedding_dim == 2 * units
    assert pruned.classifier.model.get_layer("embedding").get_weights()[0].shape == (cfg.vocab_size, 2 * units)
    assert (cfg.vocab_size, 2 * units) in tensor_shapes(pruned.flatbuffer, tmp_path)
    assert (cfg.vocab_size, 2 * cfg.units) in tensor_shapes(float_variant.flatbuffer, tmp_path)
    removed = 4 * (cfg.vocab_size * 2 * (cfg.units - units) + len(cfg.labels) * cfg.bigram_buckets * 3 // 4)
    assert pruned.tflite_bytes < float_variant.tflite_bytes - 0.9 * removed
    ratio = report.rows[[r["name"] for r in report.rows].index("prune")]["size_ratio"]
    assert ratio == pruned.tflite_bytes / float_variant.tflite_bytes < 0.8


def test_magnitude_pruning_reaches_target_sparsity(classifier, topic_split):
    """tfmot magnitude pruning zeroes 80% of the word and n-gram tables (in the refolded table the
    export ships) and trains copies of the teacher's layers."""
    from kerasllm.compression.prune import prune_classifier

    train, train_labels, _, _ = topic_split
    before = [w.copy() for w in classifier.model.get_weights()]
    pruned, info = prune_classifier(classifier, train, train_labels, sparsity=0.8, epochs=1, pruning="magnitude")
    for layer in ("embedding", "ngram_logits_table"):
        assert info["sparsity"][f"{layer}/embeddings"] >= 0.79
        assert zero_fraction(pruned, layer) >= 0.79
    # the teacher is untouched (the pruning wrappers hold copies of its layers, not the layers)
    for old, new in zip(before, classifier.model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_pruning_preserving_qat(report, classifier):
    both = report["prune+qat"]
    assert both.quantization == "int8" and both.classifier.config.units == round(0.2 * classifier.config.units)
    assert both.tflite_bytes < report["qat"].tflite_bytes


@pytest.mark.parametrize("name", ["ptq_int8", "qat"])
def test_int8_tensors_present(report, name, tmp_path):
    variant = report[name]
    assert variant.quantization == "int8"
    assert [dtype for dtype, _ in largest_tensors(variant.flatbuffer, tmp_path)] == ["int8", "int8"]
    assert [dtype for dtype, _ in largest_tensors(report["float"].flatbuffer, tmp_path)] == ["float32", "float32"]
    assert variant.tflite_bytes < 0.5 * report["float"].tflite_bytes


def test_qat_reports_quantized_layers(report):
    info = report.details["qat"]
    assert {"embedding", "ngram_logits_table", "rnn_logits"} <= set(info["quantized_layers"])
    assert info["float_layers"] == ["simple_rnn"]
    assert report.rows[[r["name"] for r in report.rows].index("qat")]["quantization"] == "int8 (QAT graph)"


def quantization_scales(flatbuffer, tmp_path):
    from kerasllm.export import tflite as tflite_lib

    path = tmp_path / "q.tflite"
    path.write_bytes(flatbuffer)
    return [(np.dtype(d["dtype"]).name, tuple(d["shape"]), d["quantization"])
            for d in tflite_lib.interpreter(path).get_tensor_details()]


def test_qat_file_carries_trained_ranges(report, tmp_path):
    """The shipped QAT file is the QAT graph: its scales are the trained quantizer ranges, so a
    range changed in the QAT model (as training would) shows up in the file, unrecalibrated."""
    from kerasllm.compression.qat import qat_tflite_bytes

    qat = report["qat"].classifier
    model = qat.qat_model
    table = model.get_layer("quant_embedding")
    lo, hi = (float(v.numpy()) for v in table.weights if "_min" in v.name or "_max" in v.name)
    scales = quantization_scales(report["qat"].flatbuffer, tmp_path)
    vocab = qat.config.vocab_size
    # the word table QAT trained is the refolded input projection (vocabulary x both directions' units)
    assert qat.config.embedding_dim == 2 * qat.config.units
    shipped = [q[0] for dtype, shape, q in scales if shape == (vocab, qat.config.embedding_dim) and dtype == "int8"]
    assert shipped and abs(shipped[0] - (hi - lo) / 255) < 1e-6 * abs(hi - lo)
    # the recurrence stayed float: its float32 recurrent matrix (both directions' units) is in the file
    width = 2 * qat.config.units
    assert any(dtype == "float32" and shape == (width, width) for dtype, shape, _ in scales)
    # set the output layer's learned activation range to a value no calibration would produce
    out = model.get_layer("quant_rnn_logits")
    ranges = {v.name.split("/")[-1].split(":")[0]: v for v in out.weights}
    saved = {k: ranges[k].numpy() for k in ("post_activation_min", "post_activation_max")}
    ranges["post_activation_min"].assign(-7.5)
    ranges["post_activation_max"].assign(5.25)
    try:
        flatbuffer = qat_tflite_bytes(qat)
    finally:
        for k, v in saved.items():
            ranges[k].assign(v)
    assert not any(dtype == "int8" and abs(q[0] - 12.75 / 255) < 1e-6 for dtype, _, q in scales)
    assert any(dtype == "int8" and abs(q[0] - 12.75 / 255) < 1e-6
               for dtype, _, q in quantization_scales(flatbuffer, tmp_path))


def test_distilled_student_is_smaller(report, classifier):
    from kerasllm.compression.distill import count_parameters

    student = report["distill"]
    assert count_parameters(student.classifier.model) < count_parameters(classifier.model) / 2
    assert student.classifier.tokenizer is classifier.tokenizer  # same ids: the teacher's tokenizer
    assert student.tflite_bytes < report["float"].tflite_bytes
    assert report.details["distill"]["student_parameters"] == count_parameters(student.classifier.model)


def test_best_is_smallest_within_budget_on_the_selection_half(report, topic_split):
    for metric in ("macro_f1", "accuracy"):
        for budget in (0.0, 0.05, 1.0):
            best = report.best(max_quality_drop=budget, metric=metric)
            fits = [r for r in report.rows if r["selection_drops"][metric] <= budget + 1e-9]
            assert best.tflite_bytes == min(r["tflite_bytes"] for r in fits)
    first = report.rows[0]
    assert first["test_size"] + first["selection_size"] == len(topic_split[2])
    for r in report.rows:
        lo, hi = r["drop_ci"]["accuracy"]
        assert lo <= r["drops"]["accuracy"] + 1e-9 and r["drops"]["accuracy"] <= hi + 1e-9
    with pytest.raises(ValueError, match="max_quality_drop"):
        report.best(-0.1)
    with pytest.raises(ValueError, match="metric"):
        report.best(0.01, metric="loss")


def test_bootstrap_interval():
    from kerasllm.compression.report import bootstrap_drop, classification_scores

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.9, y, 1 - y)
    worse = np.where(rng.random(400) < 0.8, y, 1 - y)
    lo, hi = bootstrap_drop(y, good, worse, 2, "accuracy", n=500)
    drop = classification_scores(y, good, 2)["accuracy"] - classification_scores(y, worse, 2)["accuracy"]
    assert lo < drop < hi and lo > 0 and hi - lo < 0.15
    assert bootstrap_drop(y, good, good, 2, "macro_f1", n=200) == [0.0, 0.0]
    from sklearn.metrics import f1_score

    assert abs(classification_scores(y, worse, 2)["macro_f1"] - f1_score(y, worse, average="macro")) < 1e-12


def test_variant_exports_and_loads(report, topic_split, tmp_path):
    import kerasllm
    import tasks

    _, _, val, _ = topic_split
    best = report.best(max_quality_drop=1.0)
    paths = tasks.export(best, tmp_path / "small", formats=("tflite",))
    manifest = json.loads((paths["version_dir"] / "kerasllm.json").read_text())
    assert manifest["kind"] == "classifier" and manifest["compression"]["method"] == best.name
    loaded = kerasllm.load(tmp_path / "small")
    assert loaded.predict(val[:40]) == best.predict(val[:40])
    np.testing.assert_allclose(loaded.predict_proba(val[:5]), best.predict_proba(val[:5]), atol=1e-6)
    with pytest.raises(ValueError, match="only as TFLite"):
        tasks.export(report["ptq_int8"], tmp_path / "sm", formats=("saved_model",))


def test_markdown_plot_and_save(report, tmp_path):
    md = report.to_markdown()
    assert md.splitlines()[0].startswith("| variant | quantization | TFLite KB")
    for name in ("float", *METHODS):
        assert f"| {name} |" in md
    png = report.plot(tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    saved = report.save(tmp_path / "out")
    assert json.loads(saved["json"].read_text())["rows"][0]["name"] == "float"
    assert saved["plot"].exists() and saved["markdown"].read_text() == md


def _through_minus_infinity(probs):
    """The same probabilities, computed through a tensor of -inf (exp(-inf) = 0): fine in float,
    but int8 calibration cannot give -inf a scale."""
    from kerasllm._tf import tf

    return tf.nn.softmax(tf.math.log(probs) + tf.exp(tf.math.log(probs * 0.0)))


def test_crashing_conversion_is_a_failed_row(classifier, topic_split):
    """int8 conversion of a model with a -inf intermediate aborts the converter (SIGSEGV in TF 2.21)
    or raises; the child process absorbs it and the method is reported failed, not as another mode."""
    from kerasllm._tf import keras
    from kerasllm.compression.ptq import ConversionFailed, convert
    train, _, _, _ = topic_split
    ids = keras.Input(shape=classifier.model.input_shape[1:], dtype="int32", name="token_ids")
    probs = classifier.model(ids)
    broken = keras.Model(ids, keras.layers.Lambda(_through_minus_infinity)(probs))
    with pytest.raises(ConversionFailed):
        convert(classifier, "int8", train[:50], model=broken)


def test_failed_method_is_a_failed_row(classifier, topic_split, monkeypatch):
    """A method whose conversion fails is a row marked failed (and a warning); best() skips it."""
    import tasks
    from kerasllm.compression import classifier as compression_classifier
    from kerasllm.compression.ptq import ConversionFailed, convert

    def failing_int8(clf, mode, *args, **kwargs):
        if mode == "int8":
            raise ConversionFailed("int8 conversion failed: simulated")
        return convert(clf, mode, *args, **kwargs)

    monkeypatch.setattr(compression_classifier, "convert", failing_int8)
    train, train_labels, val, val_labels = topic_split
    with pytest.warns(RuntimeWarning, match="'ptq_int8' failed"):
        report = tasks.compress(classifier, train, train_labels, validation=(val, val_labels),
                                methods=("ptq_int8",), latency_runs=5, isolate=False, bootstrap=50)
    rows = {r["name"]: r for r in report.rows}
    assert rows["ptq_int8"]["status"] == "failed" and "simulated" in rows["ptq_int8"]["error"]
    assert "tflite_bytes" not in rows["ptq_int8"] and "ptq_int8" not in report.variants
    assert rows["float"]["status"] == "ok" and rows["float"]["quantization"] == "float32"
    assert "| ptq_int8 | FAILED (int8) |" in report.to_markdown()
    assert report.best(1.0).name == "float"


def test_a_bug_is_not_a_failed_conversion(classifier, topic_split, monkeypatch):
    """An exception from kerasllm's own code propagates instead of becoming a failed row."""
    from kerasllm.compression import ptq
    from kerasllm.export import classifier as export_classifier

    def buggy(*args, **kwargs):
        raise KeyError("a bug in kerasllm")

    monkeypatch.setattr(export_classifier, "tflite_bytes", buggy)
    train, _, _, _ = topic_split
    with pytest.raises(KeyError, match="a bug in kerasllm"):
        ptq.convert(classifier, "dynamic", train[:20], isolate=False)


def test_smoke_test_compares_with_the_keras_model(classifier, topic_split):
    """A file that runs but computes something else (here: another model's file) fails the smoke test."""
    from kerasllm.compression.ptq import ConversionFailed, convert_here, smoke_test
    from kerasllm.export.classifier import length_buckets

    train, _, _, _ = topic_split
    flatbuffer, notes = convert_here(classifier, None, train[:100], buckets=length_buckets(classifier.config)[-1:])
    assert "same label as its Keras model on 100.0%" in notes[0]
    from kerasllm._tf import keras

    shuffled = keras.models.clone_model(classifier.model)  # same graph, fresh random weights
    with pytest.raises(ConversionFailed, match="agrees with its Keras model on only"):
        smoke_test(classifier, flatbuffer, None, train[:100], buckets=length_buckets(classifier.config)[-1:],
                   reference=shuffled)


def test_cli_compress(classifier, topic_split, tmp_path):
    import kerasllm
    from kerasllm.cli import main

    train, train_labels, val, val_labels = topic_split
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": l})
                              for t, l in zip(train + val, train_labels + val_labels)), encoding="utf-8")
    out = tmp_path / "report"
    classifier.save(tmp_path / "clf")
    code = main(["compress", "--model", str(tmp_path / "clf"), "--data", str(data),
                 "--methods", "ptq_dynamic", "--out", str(out), "--export", str(tmp_path / "small")])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"report.md", "report.json", "report.png"}
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["float", "ptq_dynamic"]
    assert kerasllm.load(tmp_path / "small").predict(val[:3])


def test_language_model_int8_weights(tiny_lm, lm_text, tmp_path):
    import kerasllm
    import tasks

    validation = lm_text[-3000:]
    # in-process conversion (fast; test_crashing_conversion_is_a_failed_row covers the child process);
    # a student distilled and a pruned model fine-tuned for a few steps
    report = tasks.compress(tiny_lm, lm_text, validation=validation, methods=("ptq_dynamic", "distill", "prune"),
                            eval_tokens=300, isolate=False, prune_steps=10,
                            student={"hidden": 24, "ff": 48, "heads": 2, "layers": 2, "steps": 30,
                                     "batch_size": 16, "warmup_steps": 5})
    float_row, int8_row, student_row, pruned_row = report.rows
    assert [float_row["name"], int8_row["name"]] == ["float", "ptq_dynamic"] and int8_row["tokens"] == 300
    # a character tokenizer: one token per character, so nats per character equal nats per token
    assert float_row["loss_per_char"] == pytest.approx(float_row["loss"], rel=1e-6)
    assert student_row["name"] == "distill" and student_row["parameters"] < 0.5 * float_row["parameters"]
    # (the file also holds the export's fixed parts, a large share at this tiny size: not half)
    assert student_row["tflite_bytes"] < 0.8 * float_row["tflite_bytes"]
    assert report["distill"].lm.tokenizer is tiny_lm.tokenizer
    assert float_row["xla_tokens_per_s"] > 0 and int8_row["xla_tokens_per_s"] is None
    assert report["prune"].lm.config.ff == round(0.2 * tiny_lm.config.ff)
    assert pruned_row["tflite_bytes"] < float_row["tflite_bytes"] and pruned_row["loss"] < 1.2 * float_row["loss"]
    lo, hi = int8_row["drop_ci"]["loss"]
    assert lo <= int8_row["quality_drop"] <= hi
    # smaller, though far from 4x at this tiny size (the export's fixed parts: one TFLite decode step
    # graph per batch size and cache length); its largest tensors are int8
    assert int8_row["quantization"] == "dynamic" and int8_row["tflite_bytes"] < float_row["tflite_bytes"]
    dtypes = [d for d, _ in largest_tensors(report["ptq_dynamic"].flatbuffer, tmp_path, n=3)]
    assert "int8" in dtypes
    assert abs(int8_row["loss"] - float_row["loss"]) <= 0.02 * float_row["loss"]
    # the TFLite decode path measures the same loss the Keras model reports (windows differ slightly)
    assert abs(float_row["loss"] - tiny_lm.evaluate(validation)["loss"]) < 0.1 * float_row["loss"]
    tasks.export(report.best(max_quality_drop=0.02), tmp_path / "lm", formats=("tflite",))
    assert isinstance(kerasllm.load(tmp_path / "lm").generate("def ", max_new_tokens=5), str)
    with pytest.raises(ValueError, match="not yet"):
        tasks.compress(tiny_lm, lm_text, validation=validation, methods=("qat",))
