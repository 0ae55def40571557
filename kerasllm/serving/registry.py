"""The models a server serves: every ``<root>/<name>/<version>/`` SavedModel, newest versions loaded.

``poll()`` (run in a thread) loads versions that appeared and drops ones that went away; the table
of loaded versions is replaced as a whole (one assignment), so a request sees either the old or the
new set, and in-flight requests keep the version they started with. Only ASCII-digit folder names are
versions, so the exporter's ``.tmp-*`` folders (renamed into place when complete) are never read.

Like TF Serving's ``latest`` policy, the ``num_versions`` newest versions that load are served: a newest
version that fails (broken, or caught half-copied) leaves the newest good older one serving, and its
failure shows in the model's status. A failed version is retried when its files change (names, sizes
and times of every file under it), so a copy that was incomplete loads once it is complete.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerasllm.export.batching_params import BATCHING_PARAMS_FILE, BatchingOptions
from kerasllm.export.layout import MANIFEST, check_model_name, versions
from kerasllm.serving.codec import TensorInfo

log = logging.getLogger("kerasllm.serving")

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
_INIT_OP = "__saved_model_init_op"


def _dtype(enum: int):
    from kerasllm._tf import tf

    dtype = tf.dtypes.as_dtype(enum)
    return np.dtype(object) if dtype == tf.string else np.dtype(dtype.as_numpy_dtype), dtype.name


def _tensor_info(name, proto) -> TensorInfo:
    from tensorflow.core.framework import types_pb2

    np_dtype, _ = _dtype(proto.dtype)
    shape = None if proto.tensor_shape.unknown_rank else tuple(
        None if d.size < 0 else int(d.size) for d in proto.tensor_shape.dim)
    return TensorInfo(name, np_dtype, shape, types_pb2.DataType.Name(proto.dtype))


@dataclass
class Signature:
    name: str
    function: object  # the loaded concrete function
    inputs: dict  # name -> TensorInfo
    outputs: dict
    method_name: str
    batchable: bool = field(init=False)

    def __post_init__(self):
        # rows of different requests can be stacked: some input and every output carry the batch dimension
        self.batchable = any(i.batched for i in self.inputs.values()) and all(
            o.batched for o in self.outputs.values())

    def run(self, arrays: dict) -> dict:
        """Called in a worker thread: NumPy in, NumPy out."""
        from kerasllm._tf import tf

        feeds = {k: tf.constant(v, dtype=tf.string if self.inputs[k].is_string else None) for k, v in arrays.items()}
        outputs = self.function(**feeds)
        return {k: v.numpy() for k, v in outputs.items()}


@dataclass
class Servable:
    """One loaded version of one model."""
    name: str
    version: int
    path: Path
    signatures: dict
    signature_def_json: dict  # TF Serving's metadata, straight from saved_model.pb
    manifest: dict
    loaded_object: object = field(repr=False, default=None)
    batching: BatchingOptions | None = None  # the version's batching_params.pbtxt (TF Serving's per-model file)


def load_servable(name: str, version_dir: Path) -> Servable:
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    from kerasllm._tf import tf

    version_dir = Path(version_dir)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    signature_defs = proto.meta_graphs[0].signature_def
    loaded = tf.saved_model.load(str(version_dir))
    signatures = {}
    for sig_name, sig_def in signature_defs.items():
        if sig_name == _INIT_OP or sig_name not in loaded.signatures:
            continue
        signatures[sig_name] = Signature(
            sig_name, loaded.signatures[sig_name],
            {k: _tensor_info(k, v) for k, v in sig_def.inputs.items()},
            {k: _tensor_info(k, v) for k, v in sig_def.outputs.items()},
            sig_def.method_name)
    if not signatures:
        raise ValueError(f"{version_dir} has no serving signature")
    metadata = json_format.MessageToDict(proto.meta_graphs[0], preserving_proto_field_name=True)
    signature_def_json = {"signature_def": metadata.get("signature_def", {})}
    manifest = {}
    if (version_dir / MANIFEST).is_file():
        try:
            manifest = json.loads((version_dir / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
    batching = None
    if (version_dir / BATCHING_PARAMS_FILE).is_file():  # as TF Serving: a bad file fails the version
        batching = BatchingOptions.from_pbtxt((version_dir / BATCHING_PARAMS_FILE).read_text(encoding="utf-8"))
    servable = Servable(name, int(version_dir.name), version_dir, signatures, signature_def_json,
                        manifest if isinstance(manifest, dict) else {}, loaded, batching)
    warm_up(servable)
    return servable


def warm_up(servable: Servable, limit=64):
    """Replay the version's TF Serving warm-up records (if any) so the first real request is not the one
    that pays for tracing and XLA compilation. A record that fails is logged, not fatal."""
    path = servable.path / WARMUP_FILE
    if not path.is_file():
        return 0
    from kerasllm._tf import no_autotune, tf
    from tensorflow_serving.apis import prediction_log_pb2

    count = 0
    for record in no_autotune(tf.data.TFRecordDataset(str(path)).take(limit)):
        log_entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log_entry.predict_log.request
        signature = servable.signatures.get(request.model_spec.signature_name or "serving_default")
        if signature is None:
            continue
        try:
            signature.run({k: tf.make_ndarray(v) for k, v in request.inputs.items()})
            count += 1
        except Exception as error:  # a stale warm-up record must not keep a good model from serving
            log.warning("%s/%s: warm-up record failed: %s", servable.name, servable.version, error)
    return count


class ModelRegistry:
    """Loaded versions of every model under ``root``; ``num_versions`` newest that load are served.

    ``models`` is replaced whole by ``poll`` (one thread at a time) and only read elsewhere: any thread may
    read it. ``on_change(event, name, version)`` is called from the polling thread with "served",
    "failed" or "removed"."""

    def __init__(self, root, num_versions=1, on_change=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"model root {self.root} is not a folder (expected <root>/<name>/<version>/)")
        if not isinstance(num_versions, int) or num_versions < 1:
            raise ValueError(f"num_versions must be a positive integer, got {num_versions!r}")
        self.num_versions = num_versions
        self.on_change = on_change
        self.models: dict[str, dict[int, Servable]] = {}  # replaced whole, never mutated
        self.failures: dict[tuple, tuple] = {}  # (name, version) -> (fingerprint, error); replaced whole
        self._lock = threading.Lock()  # one poll at a time

    def model_dirs(self):
        for path in sorted(self.root.iterdir()):
            try:
                check_model_name(path.name)
            except ValueError:
                continue
            if path.is_dir():
                yield path.name, path

    def poll(self) -> bool:
        """Load new versions, drop gone ones. Returns True when the served set changed."""
        with self._lock:
            current = self.models
            failures = dict(self.failures)
            table = {}
            changed = False
            for name, model_dir in self.model_dirs():
                loaded = current.get(name, {})
                keep = {}
                for version in reversed(versions(model_dir)):  # newest first, until num_versions load
                    if _tflite_only(model_dir / str(version)):
                        continue
                    if len(keep) >= self.num_versions:
                        break
                    if version in loaded:
                        keep[version] = loaded[version]
                        continue
                    version_dir = model_dir / str(version)
                    print_ = _fingerprint(version_dir)
                    if failures.get((name, version), (None,))[0] == print_:
                        continue  # failed with exactly these files: wait for them to change
                    started = time.perf_counter()
                    try:
                        keep[version] = load_servable(name, version_dir)
                    except Exception as error:  # a bad folder must not stop the other versions or models
                        # shown in the model's status: no server paths in it
                        message = _first_line(error).replace(str(version_dir.resolve()), f"{name}/{version}")
                        message = message.replace(str(version_dir), f"{name}/{version}")
                        failures[(name, version)] = (print_, f"{type(error).__name__}: {message}")
                        log.error("cannot load %s: %s", version_dir, error)
                        if self.on_change:
                            self.on_change("failed", name, version)
                        continue
                    failures.pop((name, version), None)
                    log.info("loaded %s version %d in %.2f s", name, version, time.perf_counter() - started)
                if keep:
                    table[name] = keep
                if set(keep) != set(loaded):
                    changed = True
            if set(table) != set(current):
                changed = True
            on_disk = {n: set(versions(self.root / n)) for n in {n for n, _ in failures}}
            self.failures = {k: v for k, v in failures.items() if k[1] in on_disk.get(k[0], ())}
            if changed:
                self.models = table  # the atomic switch
                if self.on_change:
                    for name in set(current) - set(table):
                        self.on_change("removed", name, None)
                    for name, served in table.items():
                        self.on_change("served", name, max(served))
            return changed

    def failed_versions(self, name) -> dict:
        """{version: error} for versions of ``name`` that failed to load and are still on disk."""
        return {v: message for (n, v), (_, message) in self.failures.items() if n == name}


def _tflite_only(version_dir: Path) -> bool:
    """An export made for phones (``formats=("tflite",)``): nothing here to serve, and nothing wrong."""
    return not (version_dir / "saved_model.pb").exists() and any(version_dir.glob("*.tflite"))


def _first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _fingerprint(path: Path):
    """Names, sizes and modification times of every file under ``path``: changes while a copy is under way."""
    found = []
    try:
        for file in sorted(path.rglob("*")):
            stat = file.stat()
            found.append((str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    except OSError:
        return None
    return tuple(found)
