"""Post-conversion clean-up of a TFLite flatbuffer: drop what the interpreter never reads.

The converter names every tensor after its TF op path (``text_classifier/simple_rnn/...``); in an
unrolled recurrence those names are a large part of a small model. Signatures refer to tensors
by index, so the names can go. Identical constant buffers are stored once.
"""
from __future__ import annotations


def _unpack(flatbuffer):
    from tensorflow.lite.python import schema_py_generated as schema

    return schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)


def _pack(model, size_hint):
    import flatbuffers

    builder = flatbuffers.Builder(size_hint)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def rename_signatures(flatbuffer: bytes, names: dict) -> bytes:
    """Rename signature keys (old -> new): one converted function is always called ``serving_default``."""
    model = _unpack(flatbuffer)
    for signature in model.signatureDefs or []:
        key = signature.signatureKey.decode() if isinstance(signature.signatureKey, bytes) else signature.signatureKey
        if key in names:
            signature.signatureKey = names[key].encode()
    return _pack(model, len(flatbuffer))


def compact(flatbuffer: bytes) -> bytes:
    """``flatbuffer`` with tensor names shortened to their index and duplicate buffers shared."""
    import numpy as np

    model = _unpack(flatbuffer)
    first = {}  # buffer bytes -> first buffer index holding them
    remap = {}
    for i, buffer in enumerate(model.buffers):
        data = getattr(buffer, "data", None)
        if data is None or len(data) < 64 or getattr(buffer, "offset", 0):
            continue
        key = np.asarray(data, np.uint8).tobytes()
        if key in first:
            remap[i] = first[key]
            buffer.data = None  # emptied; tensors point at the first copy
        else:
            first[key] = i
    for subgraph in model.subgraphs:
        for index, tensor in enumerate(subgraph.tensors):
            tensor.name = str(index).encode()
            if tensor.buffer in remap:
                tensor.buffer = remap[tensor.buffer]
    return _pack(model, len(flatbuffer))
