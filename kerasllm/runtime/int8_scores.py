"""Approximate inner products from int8 document vectors, run by LiteRT's XNNPACK kernels.

A search over many documents is limited by memory bandwidth: float32 vectors of 256 dimensions
are 100 MB per 100k documents, read once per query. Stored as int8 (one scale per document) they
are a quarter of that, and LiteRT's dynamically quantized FULLY_CONNECTED kernel scores a query
against them several times faster than a float32 BLAS matrix-vector product.

The scores are approximate, with a bound this module computes for every document; the search
(``kerasllm.runtime.search``) rescores in float32 every document whose bound reaches the k-th
best, so its answers stay exact. The model is one FULLY_CONNECTED op built directly with the
TFLite schema (no converter, no TensorFlow import), one per block of documents.
"""
from __future__ import annotations

import numpy as np

BLOCK_ROWS = 1 << 17  # documents per TFLite model (keeps each flatbuffer far below 2 GB)


def quantize_rows(vectors):
    """Symmetric int8 per row: (int8 [n, d], scales float32 [n], l1 norms [n], error norms [n])."""
    vectors = np.asarray(vectors, dtype=np.float32)
    peak = np.abs(vectors).max(axis=1)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.rint(vectors / scales[:, None]).clip(-127, 127).astype(np.int8)
    error = np.linalg.norm(vectors - q.astype(np.float32) * scales[:, None], axis=1).astype(np.float32)
    return q, scales, np.abs(vectors).sum(axis=1).astype(np.float32), error


def fully_connected_model(weights_int8, scales):
    """TFLite flatbuffer: x float32 [batch, d] -> x @ W.T float32 [batch, n], W int8 per-row scaled."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    n, d = weights_int8.shape
    buffers = [s.BufferT(), s.BufferT(), s.BufferT(), s.BufferT()]  # buffer 0 is the empty sentinel
    buffers[2].data = np.ascontiguousarray(weights_int8).view(np.uint8).ravel()

    def tensor(name, shape, signature, type_, buffer, quantization=None):
        t = s.TensorT()
        t.name, t.shape, t.shapeSignature, t.type, t.buffer = name, shape, signature, type_, buffer
        t.quantization = quantization
        return t

    quant = s.QuantizationParametersT()
    quant.scale = scales.astype(np.float32)
    quant.zeroPoint = np.zeros(n, np.int64)
    quant.quantizedDimension = 0
    graph = s.SubGraphT()
    graph.tensors = [
        tensor("x", np.array([1, d], np.int32), np.array([-1, d], np.int32), s.TensorType.FLOAT32, 1),
        tensor("weights", np.array([n, d], np.int32), None, s.TensorType.INT8, 2, quant),
        tensor("scores", np.array([1, n], np.int32), np.array([-1, n], np.int32), s.TensorType.FLOAT32, 3),
    ]
    options = s.FullyConnectedOptionsT()
    options.asymmetricQuantizeInputs = True
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, np.array([0, 1, -1], np.int32), np.array([2], np.int32)
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.FullyConnectedOptions, options
    graph.operators, graph.inputs, graph.outputs, graph.name = [op], np.array([0], np.int32), \
        np.array([2], np.int32), "main"
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], buffers
    model.description = "kerasllm int8 scores"
    builder = flatbuffers.Builder(weights_int8.nbytes + 4 * n + (1 << 16))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class Int8Scores:
    """Approximate scores of queries against ``vectors`` and a per-document bound on their error."""

    def __init__(self, vectors, num_threads=1):
        from kerasllm.logs import litert_interpreter

        self._interpreter_class, self.num_threads = litert_interpreter, num_threads
        self.n, self.dimensions = 0, vectors.shape[1]
        self.l1 = np.zeros(0, np.float32)
        self.error = np.zeros(0, np.float32)
        self._blocks = []
        self.extend(vectors)

    def extend(self, vectors):
        """Follow ``vectors`` after rows were appended: only the last, partial block and new ones are built."""
        if self._blocks and self.n % BLOCK_ROWS:
            self._blocks.pop()
            self.n -= self.n % BLOCK_ROWS
        self.l1, self.error = self.l1[:self.n], self.error[:self.n]
        l1, error = [self.l1], [self.error]
        for start in range(self.n, vectors.shape[0], BLOCK_ROWS):
            q, scales, block_l1, block_error = quantize_rows(vectors[start:start + BLOCK_ROWS])
            l1.append(block_l1)
            error.append(block_error)
            interpreter = self._interpreter_class(model_content=fully_connected_model(q, scales),
                                                  num_threads=self.num_threads)
            interpreter.allocate_tensors()
            interpreter.invoke()  # the first run prepares the kernels (ms): not in the first query
            self._blocks.append([interpreter, interpreter.get_input_details()[0]["index"],
                                 interpreter.get_output_details()[0]["index"], 1])
        self.l1, self.error = np.concatenate(l1), np.concatenate(error)
        self.n = vectors.shape[0]
        return self

    def __call__(self, queries):
        """(approximate scores float32 [q, n], bound float32 [q, n]) with |approx - exact| <= bound."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        out = np.empty((len(queries), self.n), np.float32)
        start = 0
        for block in self._blocks:
            interpreter, inp, outp, batch = block
            if batch != len(queries):
                interpreter.resize_tensor_input(inp, queries.shape)
                interpreter.allocate_tensors()
                block[3] = len(queries)
            interpreter.set_tensor(inp, queries)
            interpreter.invoke()
            scores = interpreter.get_tensor(outp)
            out[:, start:start + scores.shape[1]] = scores
            start += scores.shape[1]
        # The kernel quantizes each query row to int8 (asymmetric, range widened to hold 0): each
        # element moves by half a step, or a whole one if the zero point is nudged to an integer.
        # |q.v - q'.v'| <= |q - q'|_inf * |v|_1 + |q'|_2 * |v - v'|_2.
        step = (np.maximum(queries.max(axis=1), 0) - np.minimum(queries.min(axis=1), 0)) / 255.0
        q_norm = np.linalg.norm(queries, axis=1) + np.sqrt(self.dimensions) * step
        bound = (step[:, None] * self.l1[None, :] + q_norm[:, None] * self.error[None, :]) * 1.001 + 1e-5
        return out, bound.astype(np.float32)
