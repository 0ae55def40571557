"""The TF Serving bundle: config files parse as TF Serving's protos, warm-up records replay on the SavedModel."""
from __future__ import annotations

import shlex

import numpy as np
import pytest

from kerasllm.export import tf_serving
from kerasllm.export.tf_serving import read_warmup_requests, write_serving_bundle

from tests.serving_models import write_model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle root")  # a space in the path: commands must quote it
    write_model(root / "sms", version_tag=1)
    write_model(root / "lm", version_tag=1)
    write_model(root / "lm", version_tag=2)
    (root / "lm" / ".tmp-abc").mkdir()
    (root / "tflite_only" / "1").mkdir(parents=True)  # nothing TF Serving could load: left out
    (root / "tflite_only" / "1" / "model.tflite").write_bytes(b"TFL3")
    written = write_serving_bundle(root, max_batch_size=16, batch_timeout_micros=1500, num_batch_threads=3,
                                   allowed_batch_sizes=(4, 16), version_labels={"sms": {"stable": 1}})
    return root, written


def test_models_config_names_every_model(bundle):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    root, written = bundle
    config = text_format.Parse(written["models_config"].read_text(), model_server_config_pb2.ModelServerConfig())
    entries = {c.name: c for c in config.model_config_list.config}
    assert sorted(entries) == ["lm", "sms"]
    assert entries["lm"].base_path == str((root / "lm").resolve())
    assert entries["lm"].model_platform == "tensorflow"
    assert entries["lm"].model_version_policy.latest.num_versions == 1
    assert dict(entries["sms"].version_labels) == {"stable": 1}


def test_batching_monitoring_and_launch_files(bundle):
    root, written = bundle
    lines = written["batching_parameters"].read_text().splitlines()
    assert lines == ["max_batch_size { value: 16 }", "batch_timeout_micros { value: 1500 }",
                     "max_enqueued_batches { value: 128 }", "num_batch_threads { value: 3 }",
                     "allowed_batch_sizes: 4", "allowed_batch_sizes: 16"]
    assert 'path: "/monitoring/prometheus/metrics"' in written["monitoring_config"].read_text()
    launch = written["launch"].read_text()
    for command in (written["docker"], written["binary"]):
        assert command in launch
        args = shlex.split(command)
        assert "--xla_cpu_compilation_enabled=true" in args and "--enable_batching=true" in args
        assert f"--model_config_file={root.resolve() / 'models.config'}" in args
        assert f"--batching_parameters_file={root.resolve() / 'batching_parameters.txt'}" in args
        assert f"--monitoring_config_file={root.resolve() / 'monitoring.config'}" in args
    assert f"{root.resolve()}:{root.resolve()}:ro" in shlex.split(written["docker"])
    assert shlex.split(written["binary"])[0] == "tensorflow_model_server"


def test_bad_batching_parameters_are_refused(tmp_path):
    with pytest.raises(ValueError, match="allowed_batch_sizes"):
        tf_serving.batching_parameters(max_batch_size=32, allowed_batch_sizes=(8, 16))
    assert "allowed_batch_sizes: 1\nallowed_batch_sizes: 2\nallowed_batch_sizes: 4\nallowed_batch_sizes: 6\n" in (
        tf_serving.batching_parameters(max_batch_size=6))  # "auto": powers of two, then the maximum
    with pytest.raises(FileNotFoundError, match="no model"):
        write_serving_bundle(tmp_path)


def test_warmup_records_replay_on_the_saved_model(bundle):
    from kerasllm._tf import tf

    root, written = bundle
    assert set(written["warmup"]) == {"lm", "sms"}
    path = written["warmup"]["lm"]
    assert path == root / "lm" / "2" / "assets.extra" / "tf_serving_warmup_requests"
    assert not (root / "lm" / "1" / "assets.extra").exists()  # only the served (newest) version
    records = read_warmup_requests(path)
    requests = [r.predict_log.request for r in records]
    assert {r.model_spec.name for r in requests} == {"lm"}
    by_signature = {}
    for r in requests:
        by_signature.setdefault(r.model_spec.signature_name, []).append(r)
    assert set(by_signature) == {"serving_default", "scale", "count", "generate", "query"}
    # batched signatures are warmed at every allowed batch size (XLA compiles once per shape)
    assert sorted(len(tf.make_ndarray(r.inputs["texts"])) for r in by_signature["serving_default"]) == [4, 16]
    loaded = tf.saved_model.load(str(path.parent.parent))
    for request in requests:
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](**{k: tf.constant(v) for k, v in inputs.items()})
        if request.model_spec.signature_name == "serving_default":
            assert outputs["probabilities"].shape == (len(inputs["texts"]), 2)
            np.testing.assert_array_equal(outputs["version"].numpy(), 2)


def test_embedded_server_replays_warmup_on_load(bundle):
    from kerasllm.serving.registry import load_servable, warm_up

    root, _ = bundle
    servable = load_servable("lm", root / "lm" / "2")
    assert warm_up(servable) == len(read_warmup_requests(root / "lm" / "2" / tf_serving.WARMUP_FILE))
