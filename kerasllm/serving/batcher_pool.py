"""The server's batch queues: one ``Batcher`` per (model, version, signature, row shapes, shared inputs),
created on first use, dropped when their model version goes; and the one place where running a
signature's failure becomes an HTTP status.

Batching follows the version's own ``batching_params.pbtxt`` when it has one (TF Serving's per-model
file), else the server's options; a signature whose outputs have no batch dimension runs one request
at a time (TF Serving could not batch it either).
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kerasllm.serving.batching import Batcher, BatcherClosed, BatchingOptions, QueueFull
from kerasllm.serving.codec import BadRequest
from kerasllm.serving.middleware import HTTPError

log = logging.getLogger("kerasllm.serving")

MAX_BATCHERS = 1024  # distinct queues before falling back to no merging


class BatcherPool:
    """Owned by one event loop: create with ``start()`` on it, ``await close()`` when done."""

    def __init__(self, options: BatchingOptions, enable_batching: bool, request_timeout: float,
                 max_queued_bytes: int, metrics):
        self.options, self.enable_batching = options, enable_batching
        self.request_timeout, self.max_queued_bytes, self.metrics = request_timeout, max_queued_bytes, metrics
        self._batchers: dict[tuple, Batcher] = {}
        self.executor = None
        self._slots = None

    def start(self):
        self.executor = ThreadPoolExecutor(self.options.num_batch_threads, thread_name_prefix="kerasllm-batch")
        self._slots = asyncio.Semaphore(self.options.num_batch_threads)

    async def close(self):
        await asyncio.gather(*(b.close() for b in self._batchers.values()), return_exceptions=True)
        self._batchers.clear()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def drop_stale(self, models):
        """Close the queues of versions no longer served (they finish what they hold)."""
        stale = [key for key, b in self._batchers.items()
                 if key[1] not in models.get(key[0], {}) or (b.idle and len(self._batchers) > MAX_BATCHERS // 2)]
        for key in stale:
            asyncio.get_running_loop().create_task(self._batchers.pop(key).close())

    async def run(self, servable, signature, arrays):
        """Run ``signature`` on ``arrays`` through its queue; failures become ``HTTPError``/``BadRequest``."""
        try:
            async with asyncio.timeout(self.request_timeout):  # cheaper than wait_for: no extra task
                return await self._submit(servable, signature, arrays)
        except TimeoutError:
            raise HTTPError(504, f"the request took longer than {self.request_timeout:g} s") from None
        except QueueFull as error:
            self.metrics.rejected.inc(servable.name, signature.name)
            raise HTTPError(429, str(error), headers={"Retry-After": "1"}) from None
        except BatcherClosed as error:
            raise HTTPError(503, str(error)) from None
        except (BadRequest, HTTPError):
            raise
        except Exception as error:
            from kerasllm._tf import tf

            # the graph refused these values (a bad id, an out-of-range setting): the caller's input
            if isinstance(error, (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError)):
                raise BadRequest(f"the model rejected the input: {_first_line(error)}") from None
            raise  # anything else is the server's fault: 500 (the middleware logs it)

    async def _submit(self, servable, signature, arrays):
        batched = [k for k, info in signature.inputs.items() if info.batched]
        if signature.batchable:
            rows = {len(arrays[k]) for k in batched}
            if len(rows) != 1:
                raise BadRequest(f"batched inputs {batched} have different numbers of rows: {sorted(rows)}")
            rows = rows.pop()
        if not signature.batchable or rows == 0:
            key = (servable.name, servable.version, signature.name, "unbatched")
            wrapped = await self._batcher(key, servable, signature, {}, unbatched=True).submit(arrays, 1)
            return {k: v[0] for k, v in wrapped.items()}
        shared = {k: v for k, v in arrays.items() if k not in batched}
        key = (servable.name, servable.version, signature.name,
               tuple((k, arrays[k].shape[1:]) for k in batched),
               tuple((k, v.dtype.str, v.shape, _value_key(v)) for k, v in sorted(shared.items())))
        if key not in self._batchers and len(self._batchers) >= MAX_BATCHERS:
            key = key[:3] + ("overflow", id(arrays))  # too many distinct queues: run alone
            batcher = self._batcher(key, servable, signature, shared)
            try:
                return await batcher.submit({k: arrays[k] for k in batched}, rows)
            finally:
                self._batchers.pop(key, None)
                asyncio.get_running_loop().create_task(batcher.close())
        return await self._batcher(key, servable, signature, shared).submit({k: arrays[k] for k in batched}, rows)

    def _batcher(self, key, servable, signature, shared, unbatched=False):
        batcher = self._batchers.get(key)
        if batcher is not None:
            return batcher
        options = getattr(servable, "batching", None) or self.options
        if unbatched or not self.enable_batching:
            # same queue bound in rows, one request per run
            options = BatchingOptions(max_batch_size=1, batch_timeout_micros=0,
                                      max_enqueued_batches=options.max_queued_rows,
                                      num_batch_threads=options.num_batch_threads)
        if unbatched:
            run = _UnbatchedRun(signature)
        else:
            def run(arrays):
                return signature.run({**arrays, **shared})
        model, sig = key[0], key[2]

        def on_batch(rows, seconds):
            self.metrics.batch_size.observe(model, sig, value=rows)
            self.metrics.batch_latency.observe(model, sig, value=seconds)

        batcher = Batcher(run, options, self.executor, self._slots, on_batch=on_batch,
                          max_queued_bytes=self.max_queued_bytes)
        self._batchers[key] = batcher
        return batcher


class _UnbatchedRun:
    """Runs a signature whose outputs have no batch dimension: one request per run, outputs wrapped in a
    one-row object array so the batcher's row bookkeeping still holds."""

    def __init__(self, signature):
        self.signature = signature

    def __call__(self, arrays):
        outputs = self.signature.run(arrays)
        wrapped = {}
        for k, v in outputs.items():
            holder = np.empty(1, dtype=object)
            holder[0] = v
            wrapped[k] = holder
        return wrapped


def _value_key(array):
    if array.dtype == object:
        return tuple(array.ravel().tolist())
    return array.tobytes()


def _first_line(error):
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0][:300] if text.strip() else type(error).__name__
