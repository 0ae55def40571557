"""Compression: each method changes what it claims, variants export and load, fallback survives a crash."""
import json

import numpy as np
import pytest

METHODS = ("prune", "qat", "ptq_int8", "distill", "prune+qat")


@pytest.fixture(scope="module")
def report(classifier, topic_split):
    import tasks

    train, train_labels, val, val_labels = topic_split
    # in-process conversion here (fast); test_int8_crash_falls_back covers the child process
    return tasks.compress(classifier, train, train_labels, validation=(val, val_labels), methods=METHODS,
                          prune_epochs=2, qat_epochs=1, distill_epochs=3, latency_runs=10, isolate=())


def largest_tensors(flatbuffer, tmp_path, n=2):
    """(dtype name, element count) of the n largest tensors of a TFLite model's first signature."""
    from kerasllm.export import tflite as tflite_lib

    path = tmp_path / "m.tflite"
    path.write_bytes(flatbuffer)
    details = tflite_lib.interpreter(path).get_tensor_details()
    sizes = sorted(((int(np.prod(d["shape"])), np.dtype(d["dtype"]).name) for d in details), reverse=True)
    return [(dtype, size) for size, dtype in sizes[:n]]


def zero_fraction(variant, layer):
    return float(np.mean(variant.classifier.model.get_layer(layer).get_weights()[0] == 0))


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


def test_prune_reaches_target_sparsity(report, classifier):
    pruned, float_row = report["prune"], report.rows[0]
    for layer in ("embedding", "ngram_logits_table"):
        assert report.details["prune"]["sparsity"][f"{layer}/embeddings"] >= 0.79
        assert zero_fraction(pruned, layer) >= 0.79
    assert np.mean(classifier.model.get_layer("ngram_logits_table").get_weights()[0] == 0) < 0.01  # teacher intact
    assert pruned.quantization is None
    assert pruned.gzip_bytes < 0.6 * float_row["gzip_bytes"]  # the zeros survive export


def test_pruning_preserving_qat_keeps_zeros(report):
    both = report["prune+qat"]
    assert both.quantization == "int8"
    assert zero_fraction(both, "ngram_logits_table") >= 0.79 and zero_fraction(both, "embedding") >= 0.79


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


def test_distilled_student_is_smaller(report, classifier):
    from kerasllm.compression.distill import count_parameters

    student = report["distill"]
    assert count_parameters(student.classifier.model) < count_parameters(classifier.model) / 2
    assert student.classifier.tokenizer is classifier.tokenizer  # same ids: the teacher's tokenizer
    assert student.tflite_bytes < report["float"].tflite_bytes
    assert report.details["distill"]["student_parameters"] == count_parameters(student.classifier.model)


def test_best_is_smallest_within_budget(report):
    for budget in (0.0, 0.05, 1.0):
        best = report.best(max_quality_drop=budget)
        fits = [r for r in report.rows if r["quality_drop"] <= budget + 1e-9]
        assert best.tflite_bytes == min(r["tflite_bytes"] for r in fits)
    with pytest.raises(ValueError, match="max_quality_drop"):
        report.best(-0.1)


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


def test_int8_crash_falls_back(classifier, topic_split):
    """int8 conversion of a model with a -inf intermediate aborts the converter (SIGSEGV in TF 2.21)
    or raises; the child process absorbs it and the next mode that works is used."""
    from kerasllm._tf import keras
    from kerasllm.compression.ptq import convert_with_fallback
    from kerasllm.models.classifier import build_model

    train, _, _, _ = topic_split
    ids = keras.Input(shape=classifier.model.input_shape[1:], dtype="int32", name="token_ids")
    probs = build_model(classifier.config, unroll=True, share=classifier.model)(ids)
    broken = keras.Model(ids, keras.layers.Lambda(_through_minus_infinity)(probs))
    flatbuffer, used, notes = convert_with_fallback(classifier, "int8", train[:50], model=broken)
    assert used == "dynamic"
    assert notes[0].startswith("int8 conversion failed") and notes[-1] == "used dynamic instead of int8"
    assert len(flatbuffer) > 1000


def test_cli_compress(classifier_export, topic_split, tmp_path):
    import kerasllm
    from kerasllm.cli import main

    train, train_labels, val, val_labels = topic_split
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": l})
                              for t, l in zip(train + val, train_labels + val_labels)), encoding="utf-8")
    out = tmp_path / "report"
    code = main(["compress", "--model", str(classifier_export["version_dir"].parent), "--data", str(data),
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
    report = tasks.compress(tiny_lm, lm_text, validation=validation, methods=("ptq_dynamic",), eval_tokens=300)
    float_row, int8_row = report.rows
    assert [float_row["name"], int8_row["name"]] == ["float", "ptq_dynamic"] and int8_row["tokens"] == 300
    assert int8_row["quantization"] == "dynamic" and int8_row["tflite_bytes"] < 0.7 * float_row["tflite_bytes"]
    dtypes = [d for d, _ in largest_tensors(report["ptq_dynamic"].flatbuffer, tmp_path, n=3)]
    assert "int8" in dtypes
    assert abs(int8_row["loss"] - float_row["loss"]) <= 0.02 * float_row["loss"]
    # the TFLite decode path measures the same loss the Keras model reports (windows differ slightly)
    assert abs(float_row["loss"] - tiny_lm.evaluate(validation)["loss"]) < 0.1 * float_row["loss"]
    tasks.export(report.best(max_quality_drop=0.02), tmp_path / "lm", formats=("tflite",))
    assert isinstance(kerasllm.load(tmp_path / "lm").generate("def ", max_new_tokens=5), str)
    with pytest.raises(ValueError, match="not yet"):
        tasks.compress(tiny_lm, lm_text, validation=validation, methods=("prune",))
