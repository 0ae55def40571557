"""What ``tensorflow_model_server`` needs to serve a ``saved_models/`` root, written beside the models.

``write_serving_bundle(root)`` writes, at the root:

- ``models.config``: a ``ModelServerConfig`` (text proto) naming every model under the root, newest version served;
- ``batching_parameters.txt``: TF Serving's ``BatchingParameters`` for ``--batching_parameters_file``; with
  ``--enable_per_model_batching_parameters`` TF Serving takes only the thread pool from it;
- ``monitoring.config``: Prometheus metrics at ``/monitoring/prometheus/metrics`` on the REST port;
- ``tf_serving_launch.txt``: the exact docker and binary commands, ``--xla_cpu_compilation_enabled`` included
  (the signatures are XLA-compiled);

into each served version, ``batching_params.pbtxt`` (TF Serving's per-model batching file, read from the
version folder; a copy in ``assets.extra/``) when the model can be batched: TF Serving batches every signature
of a batched model, so only a model whose every signature input and output has a batch dimension gets one
(``kerasllm.export.batching_params``), with ``pad_variable_length_inputs`` when some input has an open width;

and into each model's served versions that lack them, warm-up records
(``<version>/assets.extra/tf_serving_warmup_requests``, ``PredictionLog`` records TF Serving replays before it
serves a version, so no user request pays for tracing and XLA compilation). Every record is run against the
SavedModel before it is kept: TF Serving refuses to load a version whose warm-up fails. A batched model is
warmed at each allowed batch size; at most 1000 records (TF Serving's kMaxNumRecords).

Files are written 0644 and folders 0755 (less what the umask removes), so a server running as another user
can read them.

The config files use absolute paths and the docker command mounts the root at the same path inside the
container, so one ``models.config`` serves both.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from kerasllm.export.batching_params import (BATCHING_PARAMS_FILE, BatchingOptions, model_batching,
                                             signature_batchable)
from kerasllm.export.layout import atomic_file, check_model_name, versions, write_bytes_atomic

MODELS_CONFIG = "models.config"
BATCHING_FILE = "batching_parameters.txt"
MONITORING_FILE = "monitoring.config"
LAUNCH_FILE = "tf_serving_launch.txt"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving refuses a version with more (saved_model_warmup_util.h)
METRICS_PATH = "/monitoring/prometheus/metrics"
SAMPLE_TEXTS = ("hello world", "this is a short message to warm up the model", "ok")
# values for scalar inputs found on kerasllm's signatures; small so warm-up is quick
SCALAR_DEFAULTS = {"max_new_tokens": 4, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0, "k": 10}
_INIT_OP = "__saved_model_init_op"


def model_names(root) -> list[str]:
    """Models TF Serving can serve under ``root``: valid names whose newest version holds a SavedModel
    (a TFLite-only export is left out)."""
    root = Path(root)
    names = []
    for path in sorted(root.iterdir()):
        try:
            check_model_name(path.name)
        except ValueError:
            continue
        found = versions(path) if path.is_dir() else []
        if found and (path / str(found[-1]) / "saved_model.pb").is_file():
            names.append(path.name)
    return names


def models_config(root, names, num_versions=1, version_labels=None) -> str:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    root = Path(root).resolve()
    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = str(root / name)
        entry.model_platform = "tensorflow"
        entry.model_version_policy.latest.num_versions = num_versions
        for label, version in sorted((version_labels or {}).get(name, {}).items()):
            entry.version_labels[label] = int(version)
    return text_format.MessageToString(config)


def batching_parameters(max_batch_size=32, batch_timeout_micros=2000, max_enqueued_batches=128,
                        num_batch_threads=2, allowed_batch_sizes="auto") -> str:
    return BatchingOptions(max_batch_size, batch_timeout_micros, max_enqueued_batches, num_batch_threads,
                           allowed_batch_sizes).to_pbtxt()


def signature_shapes(version_dir) -> dict:
    """{signature: ({input: shape}, {output: shape})} from ``saved_model.pb`` (None: unknown size or rank)."""
    def shape(info):
        if info.tensor_shape.unknown_rank:
            return None
        return tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)

    return {name: ({k: shape(v) for k, v in sig.inputs.items()}, {k: shape(v) for k, v in sig.outputs.items()})
            for name, sig in _signature_defs(version_dir).items()}


def write_model_batching(version_dir, options: BatchingOptions):
    """Write (or remove) the version's per-model batching file; returns the options written or None."""
    version_dir = Path(version_dir)
    batching = model_batching(signature_shapes(version_dir), options)
    for path in (version_dir / BATCHING_PARAMS_FILE, version_dir / "assets.extra" / BATCHING_PARAMS_FILE):
        if batching is None:
            if path.exists():
                path.unlink()
        else:
            write_bytes_atomic(path, batching.to_pbtxt().encode())
    return batching


def monitoring_config() -> str:
    return f'prometheus_config {{\n  enable: true\n  path: "{METRICS_PATH}"\n}}\n'


def launch_commands(root, rest_api_port=8501, grpc_port=8500, docker_image=None, poll_seconds=60) -> dict:
    root = Path(root).resolve()
    if docker_image is None:
        from importlib.metadata import version

        # a SavedModel needs a server at least as new as the TensorFlow that wrote it
        docker_image = f"tensorflow/serving:{version('tensorflow')}"
    q = shlex.quote
    flags = [f"--model_config_file={q(str(root / MODELS_CONFIG))}",
             f"--model_config_file_poll_wait_seconds={int(poll_seconds)}",
             "--file_system_poll_wait_seconds=1",
             "--enable_batching=true",
             f"--batching_parameters_file={q(str(root / BATCHING_FILE))}",
             "--enable_per_model_batching_parameters=true",
             f"--monitoring_config_file={q(str(root / MONITORING_FILE))}",
             "--enable_model_warmup=true",
             "--xla_cpu_compilation_enabled=true"]
    binary = " ".join(["tensorflow_model_server", f"--port={grpc_port}", f"--rest_api_port={rest_api_port}"] + flags)
    # the image's entry point already sets --port=8500 --rest_api_port=8501: map the host ports to those
    docker = " ".join(["docker run --rm", f"-p {grpc_port}:8500", f"-p {rest_api_port}:8501",
                       f"-v {q(str(root) + ':' + str(root) + ':ro')}", q(docker_image)] + flags)
    return {"docker": docker, "binary": binary}


def _signature_defs(version_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(version_dir) / "saved_model.pb").read_bytes())
    return {k: v for k, v in proto.meta_graphs[0].signature_def.items() if k != _INIT_OP}


def _example_inputs(signature_def, batch, texts):
    """NumPy inputs for one warm-up call: texts for string inputs, defaults for known scalars, zeros otherwise."""
    import numpy as np

    from kerasllm._tf import tf

    arrays = {}
    for name, info in signature_def.inputs.items():
        dtype = tf.dtypes.as_dtype(info.dtype)
        if info.tensor_shape.unknown_rank:
            dims = [batch]
        else:
            dims = [d.size for d in info.tensor_shape.dim]
            dims = [(batch if i == 0 else 1) if d < 0 else d for i, d in enumerate(dims)]
        size = int(np.prod(dims)) if dims else 1
        if dtype == tf.string:
            values = np.array([texts[i % len(texts)].encode("utf-8") for i in range(size)], dtype=object)
        elif not dims and name in SCALAR_DEFAULTS:
            values = np.array(SCALAR_DEFAULTS[name], dtype=dtype.as_numpy_dtype)
        else:
            values = np.zeros(size, dtype=dtype.as_numpy_dtype)
        arrays[name] = values.reshape(dims)
    return arrays


def warmup_requests(model_name, version_dir, batch_sizes=(1,), texts=SAMPLE_TEXTS, check=True,
                    batching: BatchingOptions | None = None) -> list:
    """``PredictionLog`` records TF Serving can replay on the SavedModel at ``version_dir``.

    With ``batching`` (the model's per-model batching, see ``write_model_batching``) every request goes
    through TF Serving's batching session: each signature is warmed at every allowed batch size (at most
    ``max_batch_size``), so XLA compiles the padded shapes before the first user. Without it requests run as
    sent: ``batch_sizes`` for signatures with a batch dimension, batch 1 for the others. With ``check`` each
    is run first and dropped if it fails."""
    from kerasllm._tf import tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a non-empty list of strings")
    shapes = signature_shapes(version_dir)
    if batching is not None and model_batching(shapes, batching) is None:
        raise ValueError(f"{version_dir} has signatures without a batch dimension: TF Serving cannot batch it")
    if batching is not None:
        sizes = [b for b in (batching.allowed_batch_sizes or batch_sizes) if b <= batching.max_batch_size] or [1]
    loaded = tf.saved_model.load(str(version_dir)) if check else None
    records = []
    for signature_name, signature_def in sorted(_signature_defs(version_dir).items()):
        if batching is None:  # run as sent: any batch size for a signature with a batch dimension
            sizes = batch_sizes if signature_batchable(*shapes[signature_name]) else (1,)
        for batch in sizes:
            if len(records) >= MAX_WARMUP_RECORDS:
                return records
            arrays = _example_inputs(signature_def, batch, list(texts))
            if check:
                try:
                    loaded.signatures[signature_name](**{k: tf.constant(v) for k, v in arrays.items()})
                except Exception:  # this signature needs inputs we cannot guess: leave it cold
                    continue
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name))
            for name, value in arrays.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            records.append(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)))
    return records


def write_warmup_requests(version_dir, model_name, batch_sizes=(1,), texts=SAMPLE_TEXTS, overwrite=False,
                          batching: BatchingOptions | None = None):
    """Write ``<version_dir>/assets.extra/tf_serving_warmup_requests`` (a TFRecord file of ``PredictionLog``).
    Best called on the export's temporary folder before it is published; on a published version the file
    is added atomically (TF Serving reads it when it loads the version). Returns the path or None."""
    from kerasllm._tf import tf

    check_model_name(model_name)
    path = Path(version_dir) / WARMUP_FILE
    if path.exists() and not overwrite:
        return path
    records = warmup_requests(model_name, version_dir, batch_sizes, texts, batching=batching)
    if not records:
        return None
    with atomic_file(path) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    return path


def read_warmup_requests(path) -> list:
    """The ``PredictionLog`` records of a warm-up file."""
    from kerasllm._tf import no_autotune, tf
    from tensorflow_serving.apis import prediction_log_pb2

    return [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in no_autotune(tf.data.TFRecordDataset(str(path)))]


def write_serving_bundle(root, max_batch_size=32, batch_timeout_micros=2000, max_enqueued_batches=128,
                         num_batch_threads=2, allowed_batch_sizes="auto", rest_api_port=8501, grpc_port=8500,
                         num_versions=1, version_labels=None, warmup=True, warmup_texts=SAMPLE_TEXTS,
                         docker_image=None, poll_seconds=60) -> dict:
    """Write TF Serving's configuration for every model under ``root`` (see the module docstring).
    Returns the written paths and the launch commands."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no model root at {root}")
    if not isinstance(num_versions, int) or num_versions < 1:
        raise ValueError(f"num_versions must be a positive integer, got {num_versions!r}")
    names = model_names(root)
    if not names:
        raise FileNotFoundError(f"{root} holds no model: expected {root}/<name>/<version>/ as written by tasks.export")
    batching = batching_parameters(max_batch_size, batch_timeout_micros, max_enqueued_batches, num_batch_threads,
                                   allowed_batch_sizes)
    commands = launch_commands(root, rest_api_port, grpc_port, docker_image, poll_seconds)
    written = {"models_config": root / MODELS_CONFIG, "batching_parameters": root / BATCHING_FILE,
               "monitoring_config": root / MONITORING_FILE, "launch": root / LAUNCH_FILE, "warmup": {}}
    write_bytes_atomic(written["models_config"], models_config(root, names, num_versions, version_labels).encode())
    write_bytes_atomic(written["batching_parameters"], batching.encode())
    write_bytes_atomic(written["monitoring_config"], monitoring_config().encode())
    write_bytes_atomic(written["launch"], (
        "# TensorFlow Serving for the models in this folder (REST on "
        f"{rest_api_port}, gRPC on {grpc_port}; same REST API as `kerasllm serve`)\n"
        f"# docker:\n{commands['docker']}\n# binary:\n{commands['binary']}\n").encode())
    options = BatchingOptions(max_batch_size, batch_timeout_micros, max_enqueued_batches, num_batch_threads,
                              allowed_batch_sizes)
    written["batching"] = {}
    for name in names:
        for version in versions(root / name)[-num_versions:]:
            version_dir = root / name / str(version)
            if not (version_dir / "saved_model.pb").is_file():
                continue
            # a stale warm-up file written under other batching rules would be replayed as is: rewrite it
            batching = write_model_batching(version_dir, options)
            written["batching"][name] = batching  # (versions ascend: the newest is what is left)
            if warmup:
                written["warmup"][name] = write_warmup_requests(
                    version_dir, name, texts=warmup_texts, batching=batching, overwrite=True)
    written.update(commands)
    return written
