"""TF Serving's REST JSON <-> NumPy arrays, checked against a signature's inputs.

Row format: ``{"instances": [...]}`` (one item per example; a dict of named inputs, or a bare value
when the signature has one input) answers ``{"predictions": [...]}``. Columnar format:
``{"inputs": {...}}`` (or a bare value for one input) answers ``{"outputs": ...}``. Binary strings
travel as ``{"b64": "..."}``. Every problem raises ``BadRequest`` with a message naming the input.
"""
from __future__ import annotations

import base64
import binascii
import json
import json.scanner
import math
from dataclasses import dataclass

import numpy as np

MAX_DEPTH = 32
C_JSON_BYTES = 128 * 1024  # above this, parse with the pure-Python scanner (see loads)
_CHUNK = 65536  # values converted to NumPy per C call (each call holds the GIL)
_PY_DECODER = json.JSONDecoder()
_PY_DECODER.scan_once = json.scanner.py_make_scanner(_PY_DECODER)


class BadRequest(ValueError):
    """The request is malformed; the message says what was expected. ``status`` is the HTTP code."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype  # np.dtype(object) for strings
    shape: tuple  # None for an unknown dimension; None for the whole shape when the rank is unknown
    dtype_name: str  # "DT_FLOAT", ...

    @property
    def is_string(self) -> bool:
        return self.dtype == np.dtype(object)

    @property
    def batched(self) -> bool:
        return self.shape is not None and len(self.shape) >= 1 and self.shape[0] is None


@dataclass(frozen=True)
class Limits:
    max_rows: int = 1024
    max_text_bytes: int = 65536
    max_elements: int = 1_000_000


def loads(raw: bytes):
    """Decode a request body; meant to run in a worker thread. ``json.loads``'s C scanner holds the GIL
    for a whole document (hundreds of ms for a few MB), which would stall the event loop even from a
    thread; large bodies go through the pure-Python scanner instead, which lets the GIL go every few ms."""
    try:
        text = raw.decode("utf-8")
        if len(raw) <= C_JSON_BYTES:
            return json.loads(text)
        return _PY_DECODER.decode(text)
    except (ValueError, RecursionError) as error:  # ValueError covers JSONDecodeError and bad UTF-8
        raise BadRequest(f"the body is not valid JSON: {str(error)[:200]}") from None


def _flatten(value, leaves, depth=0):
    """Append the leaves of a nested list to ``leaves``; return the shape (checked rectangular)."""
    if depth > MAX_DEPTH:
        raise BadRequest(f"values nested deeper than {MAX_DEPTH} levels")
    if not isinstance(value, list):
        leaves.append(value)
        return ()
    if not value:
        return (0,)
    shapes = {_flatten(v, leaves, depth + 1) for v in value}
    if len(shapes) != 1:
        raise BadRequest("lists of different lengths: a tensor must be rectangular")
    return (len(value),) + shapes.pop()


def _string_leaf(leaf, name, limits):
    if isinstance(leaf, str):
        data = leaf.encode("utf-8", "surrogatepass")
    elif isinstance(leaf, dict) and set(leaf) == {"b64"} and isinstance(leaf["b64"], str):
        try:
            data = base64.b64decode(leaf["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"input {name!r}: invalid base64 in {{'b64': ...}}") from None
    else:
        raise BadRequest(f"input {name!r} expects strings (or {{\"b64\": ...}}), got {type(leaf).__name__}")
    if len(data) > limits.max_text_bytes:
        raise BadRequest(f"input {name!r}: a text of {len(data)} bytes is longer than the limit of "
                         f"{limits.max_text_bytes} bytes", status=413)
    return data


def to_array(value, info: TensorInfo, limits: Limits) -> np.ndarray:
    """One input's JSON value -> array of the signature's dtype (shape not yet checked)."""
    leaves = []
    shape = _flatten(value, leaves)
    if len(leaves) > limits.max_elements:
        raise BadRequest(f"input {info.name!r} has {len(leaves)} values, more than the limit of "
                         f"{limits.max_elements}", status=413)
    if info.is_string:
        array = np.empty(len(leaves), dtype=object)
        for i, leaf in enumerate(leaves):
            array[i] = _string_leaf(leaf, info.name, limits)
        return array.reshape(shape)
    kind = info.dtype.kind
    for leaf in leaves:
        if isinstance(leaf, bool):
            if kind != "b":
                raise BadRequest(f"input {info.name!r} expects {info.dtype_name} numbers, got a boolean")
        elif isinstance(leaf, int):
            if kind == "b":
                raise BadRequest(f"input {info.name!r} expects booleans, got a number")
        elif isinstance(leaf, float):
            if kind in "iub":
                if not math.isfinite(leaf) or leaf != int(leaf):
                    raise BadRequest(f"input {info.name!r} expects integers ({info.dtype_name}), got {leaf!r}")
        else:
            raise BadRequest(f"input {info.name!r} expects {info.dtype_name} values, got {type(leaf).__name__}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            if len(leaves) > _CHUNK:  # in pieces, so a worker thread gives the GIL back in between
                array = np.concatenate([np.array(leaves[i:i + _CHUNK], dtype=info.dtype)
                                        for i in range(0, len(leaves), _CHUNK)])
            else:
                array = np.array(leaves, dtype=info.dtype) if leaves else np.zeros(0, dtype=info.dtype)
    except (OverflowError, FloatingPointError, ValueError, TypeError):
        raise BadRequest(f"input {info.name!r}: a value does not fit {info.dtype_name}") from None
    return array.reshape(shape)


def check_shape(array: np.ndarray, info: TensorInfo):
    if info.shape is None:
        return
    if array.ndim != len(info.shape) or any(d is not None and d != a for d, a in zip(info.shape, array.shape)):
        want = "[" + ", ".join("?" if d is None else str(d) for d in info.shape) + "]"
        raise BadRequest(f"input {info.name!r} has shape {list(array.shape)}, the signature expects {want}")


def parse_predict(body, inputs: dict, limits: Limits):
    """Request body (already JSON-decoded) -> (arrays by input name, "row" | "columnar")."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object with 'instances' or 'inputs'")
    if ("instances" in body) == ("inputs" in body):
        raise BadRequest("the request must have exactly one of 'instances' (row format) or 'inputs' (columnar)")
    if "instances" in body:
        return parse_instances(body["instances"], inputs, limits), "row"
    return parse_inputs(body["inputs"], inputs, limits), "columnar"


def parse_instances(instances, inputs: dict, limits: Limits) -> dict:
    if not isinstance(instances, list) or not instances:
        raise BadRequest("'instances' must be a non-empty list")
    if len(instances) > limits.max_rows:
        raise BadRequest(f"{len(instances)} instances is more than the limit of {limits.max_rows}", status=413)
    for info in inputs.values():
        if not info.batched:
            raise BadRequest(f"input {info.name!r} has no batch dimension: use the columnar 'inputs' format")
    named = isinstance(instances[0], dict) and not (len(inputs) == 1 and set(instances[0]) == {"b64"})
    if named:
        columns = {name: [] for name in inputs}
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise BadRequest(f"instance {i} is not an object like the first instance")
            unknown = sorted(set(instance) - set(inputs))
            missing = sorted(set(inputs) - set(instance))
            if unknown or missing:
                raise BadRequest(f"instance {i}: " + "; ".join(
                    ([f"unknown inputs {unknown}"] if unknown else []) + ([f"missing inputs {missing}"] if missing
                                                                           else [])) + f"; expected {sorted(inputs)}")
            for name in inputs:
                columns[name].append(instance[name])
    else:
        if len(inputs) != 1:
            raise BadRequest(f"the signature has inputs {sorted(inputs)}: each instance must be an object naming them")
        columns = {next(iter(inputs)): instances}
    arrays = {}
    for name, column in columns.items():
        array = to_array(column, inputs[name], limits)
        check_shape(array, inputs[name])
        arrays[name] = array
    return arrays


def parse_inputs(value, inputs: dict, limits: Limits) -> dict:
    if isinstance(value, dict) and not (len(inputs) == 1 and set(value) == {"b64"}):
        unknown = sorted(set(value) - set(inputs))
        missing = sorted(set(inputs) - set(value))
        if unknown or missing:
            raise BadRequest("; ".join(([f"unknown inputs {unknown}"] if unknown else [])
                                       + ([f"missing inputs {missing}"] if missing else []))
                             + f"; expected {sorted(inputs)}")
        columns = value
    else:
        if len(inputs) != 1:
            raise BadRequest(f"the signature has inputs {sorted(inputs)}: 'inputs' must be an object naming them")
        columns = {next(iter(inputs)): value}
    arrays = {}
    for name, column in columns.items():
        array = to_array(column, inputs[name], limits)
        check_shape(array, inputs[name])
        if inputs[name].batched and len(array) > limits.max_rows:
            raise BadRequest(f"input {name!r} has {len(array)} rows, more than the limit of {limits.max_rows}",
                             status=413)
        arrays[name] = array
    return arrays


def _jsonable(array: np.ndarray):
    if array.dtype == object or array.dtype.kind == "S":
        return _strings(array.tolist())
    return array.tolist()


def _strings(value):
    if isinstance(value, list):
        return [_strings(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def format_predict(outputs: dict, fmt: str) -> dict:
    """Signature outputs -> TF Serving's response: rows ``predictions`` or columnar ``outputs``."""
    if fmt == "columnar":
        if len(outputs) == 1:
            return {"outputs": _jsonable(next(iter(outputs.values())))}
        return {"outputs": {k: _jsonable(v) for k, v in outputs.items()}}
    columns = {k: _jsonable(v) for k, v in outputs.items()}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    names = list(columns)
    rows = len(columns[names[0]])
    return {"predictions": [{k: columns[k][i] for k in names} for i in range(rows)]}
