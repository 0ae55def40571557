"""Approximate inner products from int8 document vectors, run by LiteRT's XNNPACK kernels.

A search over many documents is limited by memory bandwidth: float32 vectors of 256 dimensions
are 100 MB per 100k documents, read once per query. Stored as int8 (one scale per document) they
are a quarter of that, and LiteRT's dynamically quantized FULLY_CONNECTED kernel scores one query
against them faster than a float32 BLAS matrix-vector product (for batches of queries BLAS wins:
``kerasllm.runtime.search`` picks the pass by the batch size, from ``benchmarks/similarity.py``).

The scores are approximate, with a bound this module computes for every document; the search
rescores every document whose bound reaches the k-th best, so its answers stay exact. Each block
of ``BLOCK_ROWS`` documents is one TFLite model (one FULLY_CONNECTED op built directly with the
TFLite schema: no converter, no TensorFlow import). Only whole blocks are quantized, so adding
documents costs O(new documents) amortised; the search scores the partial tail block in float32.
Blocks are saved as ``.tflite`` files with the index and loaded lazily from their paths (LiteRT
memory-maps a model file), so loading an index reads none of them up front.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

BLOCK_ROWS = 1 << 15  # documents per TFLite model (the float32 tail a search scans stays below this)


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
    """Approximate scores of queries against the first ``n`` rows of some vectors (whole blocks
    only) and a per-document bound on their error. Calls are serialised by a lock (the LiteRT
    interpreters are not thread-safe)."""

    def __init__(self, dimensions, num_threads=1):
        self.dimensions, self.num_threads = int(dimensions), num_threads
        self.n = 0
        self.l1 = np.zeros(0, np.float32)
        self.error = np.zeros(0, np.float32)
        self._models = []  # per block: flatbuffer bytes or a file path
        self._interpreters = []  # built on first use
        self._lock = threading.Lock()

    @classmethod
    def build(cls, vectors, num_threads=1):
        return cls(vectors.shape[1], num_threads).extend(vectors)

    def extend(self, vectors):
        """Quantize the whole blocks of ``vectors`` past the ones already held (O(new rows))."""
        whole = vectors.shape[0] // BLOCK_ROWS * BLOCK_ROWS
        if whole <= self.n:
            return self
        l1, error = [self.l1], [self.error]
        for start in range(self.n, whole, BLOCK_ROWS):
            q, scales, block_l1, block_error = quantize_rows(vectors[start:start + BLOCK_ROWS])
            l1.append(block_l1)
            error.append(block_error)
            self._models.append(fully_connected_model(q, scales))
        self.l1, self.error = np.concatenate(l1), np.concatenate(error)
        self.n = max(self.n, whole)
        return self

    # -- persistence --------------------------------------------------------------------------
    def write(self, directory):
        """Save the blocks (``int8_<i>.tflite``) and bounds (``int8_bounds.npy``) in ``directory``."""
        directory = Path(directory)
        files = []
        for i, model in enumerate(self._models):
            name = f"int8_{i:05d}.tflite"
            data = model if isinstance(model, bytes) else Path(model).read_bytes()
            self._models[i] = data  # the old file may go (an index saved over the folder it was loaded from)
            (directory / name).write_bytes(data)
            files.append(name)
        np.save(directory / "int8_bounds.npy", np.stack([self.l1, self.error]), allow_pickle=False)
        return {"dimensions": self.dimensions, "n": self.n, "block_rows": BLOCK_ROWS, "files": files}

    @classmethod
    def read(cls, directory, spec, mmap=False):
        """The blocks saved by ``write``, by path: nothing is read until the first search."""
        directory = Path(directory)
        if spec.get("block_rows") != BLOCK_ROWS:
            return None  # saved by another block size: the caller rebuilds
        bounds = np.load(directory / "int8_bounds.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        if bounds.shape != (2, spec["n"]) or len(spec["files"]) * BLOCK_ROWS != spec["n"]:
            raise ValueError(f"{directory} is damaged: int8_bounds.npy or the int8 block list has the wrong size")
        scores = cls(spec["dimensions"])
        scores.n, scores.l1, scores.error = spec["n"], bounds[0], bounds[1]
        for name in spec["files"]:
            if not (directory / name).is_file():
                raise ValueError(f"{directory} is damaged: {name} is missing")
            scores._models.append(str(directory / name))
        return scores

    # -- scoring ------------------------------------------------------------------------------
    def _interpreter(self, i):
        from kerasllm.logs import litert_interpreter

        while len(self._interpreters) <= i:
            model = self._models[len(self._interpreters)]
            source = {"model_content": model} if isinstance(model, bytes) else {"model_path": model}
            interpreter = litert_interpreter(num_threads=self.num_threads, **source)
            self._interpreters.append([interpreter, interpreter.get_input_details()[0]["index"],
                                       interpreter.get_output_details()[0]["index"], 1])
        return self._interpreters[i]

    def __call__(self, queries):
        """(approximate scores float32 [q, n], bound float32 [q, n]) with |approx - exact| <= bound."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        out = np.empty((len(queries), self.n), np.float32)
        with self._lock:
            for i in range(len(self._models)):
                block = self._interpreter(i)
                interpreter, inp, outp, batch = block
                if batch != len(queries):
                    interpreter.resize_tensor_input(inp, queries.shape)
                    interpreter.allocate_tensors()
                    block[3] = len(queries)
                interpreter.set_tensor(inp, queries)
                interpreter.invoke()
                out[:, i * BLOCK_ROWS:(i + 1) * BLOCK_ROWS] = interpreter.get_tensor(outp)
        # The kernel quantizes each query row to int8 (asymmetric, range widened to hold 0): each
        # element moves by half a step, or a whole one if the zero point is nudged to an integer.
        # |q.v - q'.v'| <= |q - q'|_inf * |v|_1 + |q'|_2 * |v - v'|_2.
        step = (np.maximum(queries.max(axis=1), 0) - np.minimum(queries.min(axis=1), 0)) / 255.0
        q_norm = np.linalg.norm(queries, axis=1) + np.sqrt(self.dimensions) * step
        bound = (step[:, None] * self.l1[None, :] + q_norm[:, None] * self.error[None, :]) * 1.001 + 1e-5
        return out, bound.astype(np.float32)
