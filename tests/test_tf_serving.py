"""The TF Serving bundle checked against TF Serving's rules (tensorflow/serving sources cited in docs/serving.md):
config files parse as TF Serving's protos, per-model batching only where batching_session.cc can batch, warm-up
records TF Serving can replay, files readable by another user."""
from __future__ import annotations

import shlex

import numpy as np
import pytest

from kerasllm.export import tf_serving
from kerasllm.export.tf_serving import read_warmup_requests, write_serving_bundle

from kerasllm.export.batching_params import BATCHING_PARAMS_FILE, BatchingOptions

from tests.serving_models import write_batchable_model, write_model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle root")  # a space in the path: commands must quote it
    write_model(root / "sms", version_tag=1)
    write_batchable_model(root / "enc")
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
    assert sorted(entries) == ["enc", "lm", "sms"]
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
        # per-model files decide which models batch (the global file then only sizes the thread pool)
        assert "--enable_per_model_batching_parameters=true" in args
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


def _shapes(signature_def):
    return {k: (None if v.tensor_shape.unknown_rank else [d.size for d in v.tensor_shape.dim])
            for k, v in signature_def.items()}


def _tf_serving_can_batch(version_dir):
    """batching_session.cc: every signature of a batched session needs dimension 0 (left open) on every input
    and output."""
    from kerasllm.export.tf_serving import _signature_defs

    for sig in _signature_defs(version_dir).values():
        for shape in list(_shapes(sig.inputs).values()) + list(_shapes(sig.outputs).values()):
            if shape is None or not shape or shape[0] != -1:
                return False
    return True


def test_per_model_batching_only_where_tf_serving_can_batch(bundle):
    root, written = bundle
    enc = root / "enc" / "1"
    # the file TF Serving reads (bundle_factory_util.cc: <SavedModel dir>/batching_params.pbtxt), and its copy
    assert _tf_serving_can_batch(enc)
    text = (enc / BATCHING_PARAMS_FILE).read_text()
    assert (enc / "assets.extra" / BATCHING_PARAMS_FILE).read_text() == text
    options = BatchingOptions.from_pbtxt(text)
    assert options.max_batch_size == 16 and options.allowed_batch_sizes == (4, 16)
    assert options.allowed_batch_sizes[-1] == options.max_batch_size  # WrapSessionForBatching refuses otherwise
    # ids [None, None]: requests of different widths share a batch only when padding is declared
    assert options.pad_variable_length_inputs and "pad_variable_length_inputs: true" in text
    # scalar settings (generate's max_new_tokens, scale's factor) or outputs without a batch dimension (count):
    # TF Serving would refuse every call on a batched session, so the model gets no batching file at all
    for version_dir in (root / "sms" / "1", root / "lm" / "2"):
        assert not _tf_serving_can_batch(version_dir)
        assert not (version_dir / BATCHING_PARAMS_FILE).exists()
        assert not (version_dir / "assets.extra" / BATCHING_PARAMS_FILE).exists()
    assert written["batching"] == {"enc": options, "lm": None, "sms": None}


def _batching_parameters_message():
    """TF Serving's ``BatchingParameters`` (servables/tensorflow/session_bundle_config.proto at commit 9d981c5),
    field by field: the tensorflow-serving-api package does not ship that proto."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="session_bundle_config.proto", package="tensorflow.serving",
                                               syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = proto.message_type.add(name="BatchingParameters")
    for name, number, wrapper in (("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
                                  ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
                                  ("thread_pool_name", 5, "StringValue"), ("enable_large_batch_splitting", 8, "BoolValue"),
                                  ("max_execution_batch_size", 9, "Int64Value")):
        message.field.add(name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                          type_name=".google.protobuf." + wrapper)
    message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def test_batching_files_parse_as_tf_serving_batching_parameters(bundle):
    """bundle_factory_util.cc reads both files with ParseProtoTextFile into BatchingParameters; the last allowed
    size must equal max_batch_size (WrapSessionForBatching; large-batch splitting stays off: we never set it)."""
    from google.protobuf import text_format

    root, written = bundle
    for path in (written["batching_parameters"], root / "enc" / "1" / BATCHING_PARAMS_FILE):
        params = text_format.Parse(path.read_text(), _batching_parameters_message()())
        assert params.max_batch_size.value == 16 and params.batch_timeout_micros.value == 1500
        assert params.num_batch_threads.value == 3 and list(params.allowed_batch_sizes) == [4, 16]
        assert params.allowed_batch_sizes[-1] == params.max_batch_size.value
        assert not params.HasField("enable_large_batch_splitting")
    assert text_format.Parse((root / "enc" / "1" / BATCHING_PARAMS_FILE).read_text(),
                             _batching_parameters_message()()).pad_variable_length_inputs
    # and what TF Serving's own printer writes, the embedded server reads back
    params = _batching_parameters_message()()
    params.max_batch_size.value, params.batch_timeout_micros.value = 8, 300
    params.allowed_batch_sizes.extend([2, 8])
    params.thread_pool_name.value = "pool"
    options = BatchingOptions.from_pbtxt(text_format.MessageToString(params))
    assert (options.max_batch_size, options.batch_timeout_micros, options.allowed_batch_sizes) == (8, 300, (2, 8))


def test_batching_params_round_trip_and_refuse_unknown_fields():
    options = BatchingOptions(8, 100, 4, 1, (2, 8), pad_variable_length_inputs=True)
    assert BatchingOptions.from_pbtxt(options.to_pbtxt()) == options
    assert BatchingOptions.from_pbtxt('max_batch_size { value: 4 }\nthread_pool_name { value: "x" }\n'
                                      ).max_batch_size == 4
    with pytest.raises(ValueError, match="unknown batching parameter 'max_batch'"):
        BatchingOptions.from_pbtxt("max_batch { value: 4 }")
    with pytest.raises(ValueError, match="must equal max_batch_size"):
        BatchingOptions.from_pbtxt("max_batch_size { value: 4 }\nallowed_batch_sizes: 2")


def test_warmup_records_are_requests_tf_serving_can_run(bundle):
    from kerasllm._tf import tf
    from kerasllm.export.tf_serving import MAX_WARMUP_RECORDS

    root, written = bundle
    assert set(written["warmup"]) == {"enc", "lm", "sms"}
    path = written["warmup"]["lm"]
    assert path == root / "lm" / "2" / "assets.extra" / "tf_serving_warmup_requests"
    assert not (root / "lm" / "1" / "assets.extra").exists()  # only the served (newest) version
    for name, version in (("lm", 2), ("sms", 1), ("enc", 1)):
        version_dir = root / name / str(version)
        records = read_warmup_requests(written["warmup"][name])
        assert 0 < len(records) <= MAX_WARMUP_RECORDS  # saved_model_warmup_util.h: kMaxNumRecords
        # saved_model_warmup.cc replays Predict, Classify, Regress and MultiInference logs and refuses the others
        assert {r.WhichOneof("log_type") for r in records} == {"predict_log"}
        requests = [r.predict_log.request for r in records]
        assert {r.model_spec.name for r in requests} == {name}
        batching = (BatchingOptions.from_pbtxt((version_dir / BATCHING_PARAMS_FILE).read_text())
                    if (version_dir / BATCHING_PARAMS_FILE).exists() else None)
        loaded = tf.saved_model.load(str(version_dir))
        sizes = {}
        for request in requests:
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            if batching is not None:  # what the batching session checks before it merges a task
                rows = {len(v) if np.ndim(v) else None for v in inputs.values()}
                assert len(rows) == 1 and None not in rows
                assert rows.pop() <= batching.max_batch_size
            outputs = loaded.signatures[request.model_spec.signature_name](
                **{k: tf.constant(v) for k, v in inputs.items()})
            sizes.setdefault(request.model_spec.signature_name, []).append(
                len(next(iter(inputs.values()))) if np.ndim(next(iter(inputs.values()))) else 0)
            if batching is not None:
                batch = len(next(iter(inputs.values())))
                assert all(v.shape[0] == batch for v in outputs.values())
        if name == "enc":  # every padded shape TF Serving will run is compiled before the first user
            assert sizes == {"encode_ids": [4, 16], "serving_default": [4, 16]}
        if name == "lm":  # the unbatched model: every signature (scalar inputs too), each run as is
            assert set(sizes) == {"serving_default", "scale", "count", "generate", "query"}


def test_bundle_files_are_readable_by_other_users(tmp_path):
    import os
    import stat

    def modes(root):
        found = {}
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(folder, name)
                found[os.path.relpath(path, root)] = stat.S_IMODE(os.stat(path).st_mode)
        return found

    for umask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o027, 0o640, 0o750)):
        root = tmp_path / f"u{umask:o}"
        old = os.umask(umask)
        try:
            write_batchable_model(root / "enc")
            write_serving_bundle(root, max_batch_size=4)
        finally:
            os.umask(old)
        found = modes(root)
        for name in ("models.config", "batching_parameters.txt", "enc/1/kerasllm.json", "enc/1/batching_params.pbtxt",
                     "enc/1/assets.extra/tf_serving_warmup_requests", "enc/1/saved_model.pb"):
            assert found[name] == file_mode, (name, oct(found[name]))
        for name in ("enc", "enc/1", "enc/1/assets.extra", "enc/1/variables"):
            assert found[name] == dir_mode, (name, oct(found[name]))


def test_embedded_server_replays_warmup_on_load(bundle):
    from kerasllm.serving.registry import load_servable, warm_up

    root, _ = bundle
    servable = load_servable("lm", root / "lm" / "2")
    assert warm_up(servable) == len(read_warmup_requests(root / "lm" / "2" / tf_serving.WARMUP_FILE))
