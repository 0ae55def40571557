"""TFLite conversion, and the files that travel inside a ``.tflite``.

Associated files (tokenizer, labels, config) are stored the way TFLite Metadata stores them:
a zip archive appended to the flatbuffer. The interpreter ignores the trailing bytes, and
any zip reader finds the archive, so one ``.tflite`` file is usable on its own.
"""
from __future__ import annotations

import io
import json
import zipfile

ASSOCIATED_CONFIG = "kerasllm.json"


def convert(concrete_functions, trackable=None, quantization=None, representative_dataset=None,
            allow_select_ops=False):
    """Convert concrete functions to TFLite flatbuffer bytes.

    quantization: None (float32), "dynamic" (int8 weights), "float16", "int8" (full integer
    with float input/output; needs representative_dataset), "16x8".
    """
    import shutil
    import tempfile

    from kerasllm._tf import tf

    functions = list(concrete_functions)
    if len(functions) == 1:
        return _convert(tf.lite.TFLiteConverter.from_concrete_functions(functions, trackable),
                        quantization, representative_dataset, allow_select_ops)
    # Several signatures: save them ourselves (the converter would swallow a save error and then
    # fail with "can only convert a single ConcreteFunction"), then convert the SavedModel.
    keys = [f.graph.name for f in functions]
    tmp = tempfile.mkdtemp(prefix="kerasllm-tflite-")
    try:
        tf.saved_model.save(trackable, tmp, signatures=dict(zip(keys, functions)))
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=keys)
        return _convert(converter, quantization, representative_dataset, allow_select_ops)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert(converter, quantization, representative_dataset, allow_select_ops):
    from kerasllm._tf import tf

    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization in ("int8", "16x8"):
        if representative_dataset is None:
            raise ValueError(f"{quantization} quantization needs a representative dataset")
        converter.representative_dataset = representative_dataset
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if quantization == "int8" else
               tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    elif quantization not in (None, "dynamic"):
        raise ValueError(f"unknown quantization {quantization!r}; expected None, 'dynamic', 'float16', 'int8' or '16x8'")
    if allow_select_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    return converter.convert()


def attach(flatbuffer: bytes, config: dict, files: dict | None = None) -> bytes:
    """Append a zip holding ``kerasllm.json`` (``config``) and any other ``files`` (name -> bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(ASSOCIATED_CONFIG, json.dumps(config, ensure_ascii=False))
        for name, data in (files or {}).items():
            z.writestr(name, data)
    return bytes(flatbuffer) + buffer.getvalue()


def read_attached(path) -> dict:
    """The ``kerasllm.json`` config stored inside a ``.tflite`` file."""
    try:
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read(ASSOCIATED_CONFIG))
    except (zipfile.BadZipFile, KeyError):
        raise ValueError(f"{path} carries no kerasllm config: was it written by kerasllm's export?") from None


def read_attached_file(path, name) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(name)


def interpreter(model_path, num_threads=1):
    """A LiteRT interpreter (``ai_edge_litert``; ``tf.lite.Interpreter`` is deprecated)."""
    from kerasllm.logs import litert_interpreter

    return litert_interpreter(model_path=str(model_path), num_threads=num_threads)


def direct_call(interpreter, signature, input_name, output_name):
    """``f(array) -> array`` for one input and one output of ``signature``: like its SignatureRunner
    without the runner's per-call work (resize, allocate, dicts of names), it sets the input tensor,
    invokes the signature's subgraph and returns a copy of the output (measured: ~3 us a call saved
    on a 10-30 us classifier). ``array`` must have the input's allocated shape and dtype (the
    interpreter checks). Keep the interpreter private to this use: nothing here resizes it.

    The input is copied in at each call rather than written through a held ``tensor()`` view: a
    graph with a dynamically sized tensor re-plans its arena on the first invoke, and a held view
    then writes into freed memory. Falls back to the SignatureRunner if this LiteRT lacks the
    wrapper methods used.
    """
    runner = interpreter.get_signature_runner(signature)
    source = runner.get_input_details()[input_name]["index"]
    target = runner.get_output_details()[output_name]["index"]
    wrapper = getattr(interpreter, "_interpreter", None)
    try:
        subgraph = wrapper.GetSubgraphIndexFromSignature(signature)
        set_tensor, invoke, get_tensor = wrapper.SetTensor, wrapper.Invoke, wrapper.GetTensor
        wrapper.AllocateTensors(subgraph)  # what the runner's first call does; never again
    except AttributeError:
        return lambda array: runner(**{input_name: array})[output_name]

    def call(array):
        set_tensor(source, array, subgraph)
        invoke(subgraph)
        return get_tensor(target, subgraph)

    return call
