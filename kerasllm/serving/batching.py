"""Dynamic batching: concurrent requests for one signature are merged, run once in a thread, and split back.

TF Serving's knobs and names: a batch closes when it holds ``max_batch_size`` rows or when its oldest
request has waited ``batch_timeout_micros``; at most ``max_enqueued_batches`` batches' worth of rows
may wait (beyond that ``submit`` raises ``QueueFull`` at once instead of letting the queue grow);
``num_batch_threads`` batches run at a time. The queue is also bounded in bytes (``max_queued_bytes``):
a few requests of huge texts must not hold the memory a thousand short ones would. ``allowed_batch_sizes`` pads a batch up to the next
allowed size (repeating its last row) so XLA-compiled signatures see a few shapes and compile once each
(``"auto"``: powers of two up to ``max_batch_size``).
While all threads are busy the open batch keeps filling, so batches grow with load.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from kerasllm.export.batching_params import BatchingOptions, auto_batch_sizes  # noqa: F401 (re-exported)


class QueueFull(Exception):
    """The batch queue is full: the caller should answer 429 and the client retry later."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass
class _Task:
    inputs: dict
    rows: int
    future: asyncio.Future
    nbytes: int = 0
    arrived: float = field(default_factory=time.monotonic)


def nbytes(arrays: dict) -> int:
    """Memory held by request arrays, string payloads included (an object array's nbytes counts pointers)."""
    total = 0
    for array in arrays.values():
        total += array.nbytes
        if array.dtype == object:
            total += sum(len(v) for v in array.ravel() if isinstance(v, (bytes, str)))
    return total


def concat_and_pad(tasks, padded: int) -> dict:
    names = tasks[0].inputs.keys()
    merged = {k: np.concatenate([t.inputs[k] for t in tasks]) if len(tasks) > 1 else tasks[0].inputs[k]
              for k in names}
    rows = sum(t.rows for t in tasks)
    if padded > rows:
        merged = {k: np.concatenate([v, np.repeat(v[-1:], padded - rows, axis=0)]) for k, v in merged.items()}
    return merged


def split(outputs: dict, tasks, padded: int) -> list:
    for name, value in outputs.items():
        if np.ndim(value) == 0 or len(value) != padded:
            raise ValueError(f"output {name!r} has shape {np.shape(value)}, expected {padded} rows: "
                             "the signature does not keep the batch dimension")
    parts, start = [], 0
    for t in tasks:
        parts.append({k: v[start:start + t.rows] for k, v in outputs.items()})
        start += t.rows
    return parts


class Batcher:
    """One queue: requests for one (model, version, signature, shared inputs) merged into batches.

    ``run(inputs) -> outputs`` (dicts of NumPy arrays, batch first) is called in ``executor``;
    ``slots`` (an ``asyncio.Semaphore`` shared by all batchers) bounds how many batches run at once.
    ``on_batch(rows, seconds)`` reports each executed batch (metrics).
    """

    def __init__(self, run, options: BatchingOptions, executor, slots: asyncio.Semaphore, on_batch=None,
                 max_queued_bytes: int = 256 * 1024 * 1024):
        self._run, self.options, self._executor, self._slots = run, options, executor, slots
        self._on_batch = on_batch
        self.max_queued_bytes = max_queued_bytes
        self._pending: deque[_Task] = deque()
        self._queued_rows = 0
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._wake_rows = 1  # queued rows at which submit wakes the batch loop
        self._closed = False
        self._running: set[asyncio.Task] = set()
        self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop())

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def idle(self) -> bool:
        return not self._pending and not self._running

    async def submit(self, inputs: dict, rows: int) -> dict:
        """Queue ``rows`` rows (every array in ``inputs`` has them as its first dimension); returns the
        outputs for these rows. Raises ``QueueFull`` at once when the queue holds too many rows."""
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        if self._queued_rows + rows > self.options.max_queued_rows and self._queued_rows > 0:
            raise QueueFull(f"the batch queue is full ({self._queued_rows} rows waiting); retry later")
        size = nbytes(inputs)
        if self._queued_bytes + size > self.max_queued_bytes and self._queued_bytes > 0:
            raise QueueFull(f"the batch queue is full ({self._queued_bytes} bytes waiting); retry later")
        task = _Task(inputs, rows, asyncio.get_running_loop().create_future(), size)
        self._pending.append(task)
        self._queued_rows += rows
        self._queued_bytes += size
        if self._queued_rows >= self._wake_rows:  # not every request: a wake-up costs the loop a turn
            self._wake.set()
        return await task.future

    async def _batch_loop(self):
        timeout = self.options.batch_timeout_micros / 1e6
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closed:
                    return
                self._wake_rows = 1  # the first request wakes the loop
                self._wake.clear()
                await self._wake.wait()
            self._wake_rows = self.options.max_batch_size  # then only a full batch (or the deadline) does
            # time.monotonic and the loop clock may differ: convert through "now"
            remaining = self._pending[0].arrived + timeout - time.monotonic()
            if self._queued_rows < self.options.max_batch_size and remaining > 0 and not self._closed:
                self._wake.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            await self._slots.acquire()  # the batch keeps filling while every thread is busy
            tasks = self._take()
            if not tasks:
                self._slots.release()
                continue
            job = loop.create_task(self._execute(tasks))
            self._running.add(job)
            job.add_done_callback(self._running.discard)

    def _take(self) -> list:
        tasks, rows = [], 0
        while self._pending:
            task = self._pending[0]
            if task.future.done():  # the caller gave up (timeout, disconnect)
                self._pending.popleft()
                self._queued_rows -= task.rows
                self._queued_bytes -= task.nbytes
                continue
            if tasks and rows + task.rows > self.options.max_batch_size:
                break
            self._pending.popleft()
            self._queued_rows -= task.rows
            self._queued_bytes -= task.nbytes
            tasks.append(task)
            rows += task.rows
        return tasks

    async def _execute(self, tasks):
        loop = asyncio.get_running_loop()
        try:
            rows = sum(t.rows for t in tasks)
            padded = self.options.padded_size(rows)
            started = time.perf_counter()
            try:
                inputs = concat_and_pad(tasks, padded)
                outputs = await loop.run_in_executor(self._executor, self._run, inputs)
                parts = split(outputs, tasks, padded)
            except Exception as error:
                if len(tasks) == 1:
                    _resolve(tasks[0].future, error=error)
                    return
                # one bad request must not fail its neighbours: run each alone to find who is to blame
                for task in tasks:
                    try:
                        alone = await loop.run_in_executor(self._executor, self._run, task.inputs)
                        _resolve(task.future, split(alone, [task], task.rows)[0])
                    except Exception as single_error:
                        _resolve(task.future, error=single_error)
                return
            if self._on_batch is not None:
                self._on_batch(rows, time.perf_counter() - started)
            for task, part in zip(tasks, parts):
                _resolve(task.future, part)
        except BaseException as error:  # never leave a caller waiting forever
            for task in tasks:
                _resolve(task.future, error=error if isinstance(error, Exception) else BatcherClosed("cancelled"))
            raise
        finally:
            self._slots.release()

    async def close(self):
        """Stop taking work, finish everything queued or running."""
        self._closed = True
        self._wake.set()
        await self._loop_task
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)


def _resolve(future, result=None, error=None):
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
