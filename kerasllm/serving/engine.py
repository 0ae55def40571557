"""Continuous batching for generation: a fixed set of cache slots decoded together, one step at a time;
requests join at a step boundary and leave when done, instead of waiting for a whole batch to finish.

Built on the exported language model's ``prefill`` and ``decode`` signatures (``kerasllm.export.lm``):
``decode`` runs on ``slots`` rows at once, so XLA compiles it once; ``prefill`` runs one joining request
(its prompt left-padded to 16, 32, 64... tokens so a few shapes cover every prompt).

The Transformer's decode writes every row at one shared cache position ``pos`` and masks each row's
keys before its own start (``pad``). A joining request's prompt keys are copied so that they end at
``pos``; its start is ``pos - len(prompt)``, and its positions count from there, so it computes what it
computes alone. When ``pos`` reaches the end of the cache, every row is moved back by the earliest
start among running rows (each row's own span never exceeds the context). An LSTM's state has no time
axis: a joining row's state is simply copied in.

The window, stop and sampling rules are those of ``kerasllm.generation`` (``window.first_start``,
``segment_count``, ``next_start``; the tokenizer's end-of-text id ends a row as ``stop_lengths`` does;
``samplers.SamplerSettings(...).sampler().pick`` on NumPy with the counter-based random numbers), so a
request computes what a solo ``generate`` computes: greedy outputs are the same, and a sampled request
draws the numbers of row ``row`` of ``lm.generate(prompts, seed=seed)`` at each step. Its tokens equal
that call's up to float rounding of the logits (the engine's batched XLA decode and the Keras loop may
differ in the last bits; a draw that falls exactly on such a boundary can pick the neighbouring token).
For a batch of prompts, ``lm.generate`` follows the longest row's window plan once a window is cropped
or rebuilt, while the engine plans each row alone: past the context, per-row outputs then equal solo
``generate`` calls, not one batched call.

All model state lives in one worker thread (one step at a time); the event loop only queues requests
and hands out tokens.
"""
from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from kerasllm.generation.samplers import NUMPY, SamplerSettings, seed_word
from kerasllm.generation.window import cut_text, first_start, next_start, segment_count
from kerasllm.serving.codec import BadRequest

log = logging.getLogger("kerasllm.serving")

PREFILL_BUCKET = 16
# Joiners are prefilled together in groups of these batch sizes (compiled once at start, with ``slots``):
# one prefill call costs about as much for 4 rows as for 1, and about one request finishes per step.
PREFILL_BATCHES = (1, 4, 8)
JOIN_GROUP = 4  # while rows run, admit joiners once this many can join ...
JOIN_EVERY = 4  # ... or once the oldest has waited this many decode steps (bounds time to first token)
MAX_TOKENS_LIMIT = 4096


@dataclass(frozen=True)
class Settings:
    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None  # the int32 seed word (``samplers.seed_word``): one per HTTP request
    stop: tuple = ()

    def sampler_settings(self):
        return SamplerSettings(self.temperature, self.top_k, self.top_p, self.seed)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (a stop string or end-of-text) or "length"


@dataclass
class _Request:
    ids: np.ndarray  # the prompt's token ids
    settings: Settings
    events: asyncio.Queue  # ("token", id) ... then ("end", reason) or ("error", exception)
    loop: asyncio.AbstractEventLoop
    row: int = 0  # the batch row whose random numbers this request draws (``samplers.uniforms``)
    waited: int = 0  # decode steps spent in the queue while rows ran
    history: list = field(default_factory=list)  # prompt + generated ids
    generated: int = 0
    cancelled: bool = False
    # placement in the shared cache
    start: int = 0  # first cache position of the row's window
    room: int = 0  # tokens the row may still sample before its window is full

    outbox: list = None  # the engine's, filled by its worker thread during one step

    def emit(self, *event):
        self.outbox.append((self, event))


def _deliver(batch):
    for request, event in batch:
        request.events.put_nowait(event)


def _flush(loop, outbox):
    """Hand the step's events to the event loop in one wake-up (not one per token)."""
    if outbox:
        batch = outbox[:]
        outbox.clear()
        loop.call_soon_threadsafe(_deliver, batch)


def _settings(body, max_tokens_key, default_max_tokens=16):
    def number(name, default, low, high, integer=False):
        value = body.get(name, default)
        if value is None:
            return default
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
            raise BadRequest(f"{name!r} must be {'an integer' if integer else 'a number'} from {low} to {high}, "
                             f"got {str(value)[:40]}")
        return value

    max_tokens = number(max_tokens_key, default_max_tokens, 0, MAX_TOKENS_LIMIT, integer=True)
    temperature = float(number("temperature", 0.0, 0.0, 100.0))
    top_p = float(number("top_p", 1.0, 0.0, 1.0))
    top_k = number("top_k", 0, 0, 1 << 20, integer=True)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(f"'seed' must be an integer, got {str(seed)[:40]}")
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise BadRequest("'stop' must be a string or a list of at most 4 strings")
    if any(not s for s in stop):
        raise BadRequest("'stop' strings must not be empty")
    if top_p <= 0:
        raise BadRequest("'top_p' must be greater than 0")
    settings = Settings(max_tokens, temperature, top_k or None, top_p if top_p < 1 else None, seed_word(seed), stop)
    try:
        settings.sampler_settings()  # the language model's own checks
    except ValueError as error:
        raise BadRequest(str(error)) from None
    return settings


class GenerationEngine:
    """One language-model version's slots. ``await complete(prompt, settings)`` or
    ``async for piece in stream(prompt, settings)``; ``await close()`` finishes what runs."""

    @classmethod
    def for_servable(cls, servable, slots, metrics=None, policy="continuous"):
        """An engine when the version is a kerasllm language model with prefill/decode signatures, else None."""
        manifest = servable.manifest
        if manifest.get("kind") != "language_model" or not manifest.get("tokenizer") or not {
                "prefill", "decode"} <= set(servable.signatures):
            return None
        return cls(servable, slots, metrics, policy)

    def __init__(self, servable, slots, metrics=None, policy="continuous"):
        """``policy``: "continuous" (join at any step) or "static" (a new batch is admitted only when every
        row of the previous one has finished: classic static batching, kept for comparison)."""
        if policy not in ("continuous", "static"):
            raise ValueError(f"policy must be 'continuous' or 'static', got {policy!r}")
        self.policy = policy
        from kerasllm.text.subword import tokenizer_from_config

        manifest = servable.manifest
        self.name = servable.name
        self.tokenizer = tokenizer_from_config(manifest["tokenizer"])
        self.architecture = manifest.get("architecture", "transformer")
        self.context = int(manifest["model"]["context_length"])
        eot = getattr(self.tokenizer, "end_of_text_id", None)
        self.stop_ids = frozenset() if eot is None else frozenset({int(eot)})  # as GenerationAPI._stop_ids
        self.slots = slots
        self.metrics = metrics
        self._prefill = servable.signatures["prefill"]
        self._decode = servable.signatures["decode"]
        self._n_cache = len([k for k in self._decode.inputs if k.startswith("cache_")])
        self._waiting: deque[_Request] = deque()
        self._outbox = []  # only the worker thread appends and flushes
        self._rows: list[_Request | None] = [None] * slots
        self._cache = None  # tf.Variables, one per cache tensor; transformer: [slots * heads, context, head_dim]
        self._decode_step = self._shift_cache = None
        self._pos = 0
        self.group_joins = 0  # prefill calls that admitted several joiners while other rows ran (tests read it)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"kerasllm-gen-{self.name}")
        self._executor.submit(self._warm)  # compile before the first request (which queues behind this)
        self._wake = asyncio.Event()
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def settings_from(self, body, max_tokens_key="max_tokens", default_max_tokens=16):
        return _settings(body, max_tokens_key, default_max_tokens)

    def encode(self, prompt: str) -> np.ndarray:
        """The prompt's token ids (all of them; a Transformer sees the latest ``context`` at prefill)."""
        ids = self.tokenizer.encode(prompt)
        if not len(ids):  # as GenerationAPI: there is no start token
            raise BadRequest("the prompt is empty: give at least one token (there is no start token)")
        return np.asarray(ids, np.int32)

    # ---- the caller's side (event loop) --------------------------------------------------

    async def stream(self, prompt, settings: Settings, on_done=None, row=0):
        """Yield text pieces as tokens are decoded (held back while they could begin a stop string);
        ``on_done(completion)`` gets the totals. ``row``: the batch row whose random numbers a sampled
        request draws (choice ``i`` of one HTTP request draws row ``i``, as ``lm.generate`` does)."""
        if self._closed:
            raise BadRequest("the model is being unloaded", status=503)
        loop = asyncio.get_running_loop()
        ids = self.encode(prompt)
        if settings.seed is None:  # Settings made by hand: a fresh seed, as lm.generate(seed=None)
            settings = replace(settings, seed=seed_word(None))
        request = _Request(ids, settings, asyncio.Queue(), loop, row)
        request.outbox = self._outbox
        self._waiting.append(request)
        self._wake.set()
        new, sent, reason = [], 0, "length"
        hold = max((len(s) for s in settings.stop), default=1) - 1
        try:
            while True:
                kind, value = await request.events.get()
                if kind == "error":
                    raise value
                if kind == "end":
                    reason = value
                    break
                new.append(value)
                text, stopped = cut_text(self.tokenizer.decode(new), settings.stop)
                if stopped:
                    reason = "stop"
                    request.cancelled = True  # the worker drops the row at its next step
                    if len(text) > sent:
                        yield text[sent:]
                        sent = len(text)
                    break
                ready = len(text) - hold
                if text.endswith("\ufffd"):  # a character cut in the middle of its bytes: wait for the rest
                    ready = min(ready, len(text) - 1)
                if ready > sent:
                    yield text[sent:ready]
                    sent = ready
            if kind == "end":  # max_tokens or end-of-text (decodes to nothing)
                text = self.tokenizer.decode(new)
                if len(text) > sent:
                    yield text[sent:]
                    sent = len(text)
            if on_done is not None:
                on_done(Completion(self.tokenizer.decode(new)[:sent], len(ids), len(new), reason))
        finally:
            request.cancelled = True  # a client that went away frees its slot

    async def complete(self, prompt, settings: Settings, row=0) -> Completion:
        result = []
        pieces = [p async for p in self.stream(prompt, settings, on_done=result.append, row=row)]
        completion = result[0]
        completion.text = "".join(pieces)
        return completion

    async def close(self):
        self._closed = True
        self._wake.set()
        await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    # ---- the worker's side ---------------------------------------------------------------

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            busy = any(r is not None for r in self._rows)
            if not busy and not self._waiting:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            joining = []
            free = 0 if self.policy == "static" and busy else sum(r is None for r in self._rows)
            if busy and free and self._waiting and min(free, len(self._waiting)) < JOIN_GROUP and \
                    self._waiting[0].waited < JOIN_EVERY:
                free = 0  # amortise the prefill: wait a few steps for a group of joiners
            for request in self._waiting:
                request.waited += 1
            while self._waiting and len(joining) < free:
                request = self._waiting.popleft()
                if not request.cancelled:
                    joining.append(request)
            try:
                await loop.run_in_executor(self._executor, self._step, joining, loop)
            except Exception as error:  # the model failed: fail every request in it, keep serving new ones
                log.exception("%s: generation step failed", self.name)
                for request in joining + [r for r in self._rows if r is not None]:
                    request.events.put_nowait(("error", error))
                self._rows = [None] * self.slots  # (a joining row rewrites all of its slot's cache rows)
            if self.metrics is not None:
                self.metrics.active_slots.set(self.name, value=sum(r is not None for r in self._rows))

    def _warm(self):
        """Compile ``prefill`` for every prompt bucket and ``decode`` for the slots (XLA compiles per shape)."""
        from kerasllm._tf import tf

        try:
            cache = None
            for batch in sorted({min(b, self.slots) for b in PREFILL_BATCHES + (self.slots,)}):
                for bucket in sorted({min(_bucket(w), self.context) for w in range(1, self.context + 1)}):
                    out = self._prefill.function(tokens=tf.zeros([batch, bucket], tf.int32),
                                                 pad=tf.fill([batch], bucket - 1))
                    cache = [out[f"cache_{i}"].numpy() for i in range(self._n_cache)]
                    cache = [c[:c.shape[0] // batch] for c in cache]  # one row's part
            self._build(cache)
            self._decode_step(tf.zeros([self.slots], tf.int32), tf.constant(0), tf.zeros([self.slots], tf.int32))
            self._shift_cache(tf.constant(0))
        except Exception:  # not fatal: the first request compiles instead
            log.exception("%s: generation warm-up failed", self.name)

    def _build(self, part):
        """The cache as variables (``part``: one row's arrays per cache tensor) and the two compiled programs
        that touch all of it. Keeping the cache in variables updated inside one XLA program avoids copying
        every cache tensor in and out of the signature at each step."""
        if self._cache is not None:
            return
        from kerasllm._tf import tf

        cache = [tf.Variable(tf.zeros((p.shape[0] * self.slots,) + p.shape[1:], p.dtype), trainable=False)
                 for p in part]
        decode = self._decode.function

        @tf.function(jit_compile=True)
        def decode_step(token, pos, pad):
            out = decode(token=token, pos=pos, pad=pad, **{f"cache_{i}": v.read_value() for i, v in enumerate(cache)})
            for i, v in enumerate(cache):
                v.assign(out[f"cache_{i}"])
            return out["logits"]

        @tf.function(jit_compile=True)
        def shift_cache(delta):  # along the time axis, later if > 0; what moves in is zero
            for v in cache:
                if len(v.shape) < 3:
                    continue
                index = tf.range(v.shape[1])
                keep = tf.where(delta >= 0, index >= delta, index < v.shape[1] + delta)
                v.assign(tf.where(keep[None, :, None], tf.roll(v, delta, axis=1), tf.zeros_like(v)))

        self._cache, self._decode_step, self._shift_cache = cache, decode_step, shift_cache

    def _step(self, joining, loop=None):
        """One step boundary: admit ``joining`` (prefill), then one decode step for every row."""
        try:
            self._step_rows(joining)
        finally:
            if loop is not None:
                _flush(loop, self._outbox)

    def _step_rows(self, joining):
        self._admit([(request, request.ids, True, None) for request in joining])
        for i, row in enumerate(self._rows):
            if row is not None and row.cancelled:
                self._rows[i] = None
        if not any(r is not None for r in self._rows):
            return
        if self.architecture == "transformer" and self._pos >= self.context:
            self._compact()
        tokens = np.zeros(self.slots, np.int32)
        pads = np.full(self.slots, self._pos, np.int32)  # an empty row attends to its own slot only
        for i, row in enumerate(self._rows):
            if row is not None:
                tokens[i] = row.history[-1]
                pads[i] = row.start
        from kerasllm._tf import tf

        logits = self._decode_step(tf.constant(tokens), tf.constant(self._pos, tf.int32), tf.constant(pads)).numpy()
        self._pos += 1
        greedy = np.argmax(logits, axis=-1)  # one call for every greedy row
        for i, row in [(i, r) for i, r in enumerate(self._rows) if r is not None]:  # (sampling may move rows)
            self._sample(i, row, logits[i], int(greedy[i]) if row.settings.temperature == 0 else None)

    def _sample(self, index, row, logits, token=None):
        """The row's next token from ``logits`` (or ``token``, already picked); ends or re-windows the row."""
        if token is None:
            token = _pick(logits, row)
        row.history.append(token)
        row.generated += 1
        row.room -= 1
        row.emit("token", token)
        if self.metrics is not None:
            self.metrics.generated_tokens.inc(self.name)
        if token in self.stop_ids or row.generated >= row.settings.max_tokens or row.cancelled:
            row.emit("end", "stop" if token in self.stop_ids else "length")
            self._rows[index] = None
        elif row.room <= 0:  # the window is full: the next segment of the window plan
            self._rows[index] = None
            self._admit([(row, row.history[next_start(len(row.history), self.context):], False, index)])

    def _admit(self, items):
        """Prefill the windows of ``items`` ((request, window, fresh, slot index or None)) and place each row
        in a slot; a row's first new token comes from the prefill's logits. Fresh windows are cropped by the
        window rule. Joiners are prefilled together, padded to the smallest batch of ``PREFILL_BATCHES`` (or
        ``slots``) that holds them (unused rows are dummies): a few shapes per prompt bucket, compiled at start."""
        from kerasllm._tf import tf

        ready = []
        for request, window, fresh, index in items:
            if fresh:
                request.history = list(request.ids)
                if request.settings.max_tokens == 0:
                    request.emit("end", "length")
                    continue
                if self.architecture == "transformer":
                    window = window[first_start(len(window), self.context):]
            ready.append((request, np.asarray(window, np.int32), index))
        if not ready:
            return
        widest = max(len(w) for _, w, _ in ready)
        bucket = min(_bucket(widest), self.context)
        if self.architecture != "transformer":
            bucket = max(bucket, widest)
        sizes = sorted({min(b, self.slots) for b in PREFILL_BATCHES + (self.slots,)})
        parts, logits = [], []  # per joiner: its cache rows (one array per cache tensor), its logits
        if len(ready) > 1 and any(r is not None for r in self._rows):
            self.group_joins += 1
        for first in range(0, len(ready), sizes[-1]):
            group = ready[first:first + sizes[-1]]
            batch = next(b for b in sizes if b >= len(group))
            tokens = np.zeros((batch, bucket), np.int32)
            pads = np.full(batch, bucket - 1, np.int32)
            for i, (_, window, _) in enumerate(group):
                tokens[i, bucket - len(window):] = window
                pads[i] = bucket - len(window)
            out = self._prefill.function(tokens=tf.constant(tokens), pad=tf.constant(pads))
            caches = [out[f"cache_{i}"].numpy() for i in range(self._n_cache)]
            rows = caches[0].shape[0] // batch
            parts += [[c[i * rows:(i + 1) * rows] for c in caches] for i in range(len(group))]
            logits += list(out["logits"].numpy()[:len(group)])
        if self._cache is None:
            self._build(parts[0])
            self._pos = 0
        if self.architecture == "transformer":
            if not any(r is not None for r in self._rows):
                self._pos = widest
            elif self._pos < widest:  # move every row later to make room before pos
                self._shift(widest - self._pos)
        free = [i for i, r in enumerate(self._rows) if r is None]
        placed = []
        for request, window, index in ready:
            if index is None:
                index = free.pop(0)
            elif index in free:
                free.remove(index)
            width = len(window)
            if self.architecture == "transformer":  # room: the segment's tokens (the window plan)
                request.start = self._pos - width
                request.room = segment_count(0, width, MAX_TOKENS_LIMIT + 1, self.context)
            else:
                request.room = 1 << 30
            self._rows[index] = request
            placed.append((index, request, width))
        for t, variable in enumerate(self._cache):  # one in-place scatter per cache tensor for every joiner
            blocks, indices = [], []
            for i, (index, request, width) in enumerate(placed):
                own = parts[i][t]
                rows = own.shape[0]
                if self.architecture == "transformer":
                    block = np.zeros_like(own)
                    block[:, request.start:self._pos] = own[:, bucket - width:bucket]
                else:
                    block = own
                blocks.append(block)
                indices.append(np.arange(index * rows, (index + 1) * rows, dtype=np.int32))
            variable.scatter_nd_update(np.concatenate(indices)[:, None], np.concatenate(blocks))
        for i, (index, request, _) in enumerate(placed):
            self._sample(index, request, logits[i])

    def _shift(self, delta):
        """Move every row's keys ``delta`` positions along the cache (later if > 0, earlier if < 0)."""
        from kerasllm._tf import tf

        self._shift_cache(tf.constant(delta, tf.int32))
        self._pos += delta
        for row in self._rows:
            if row is not None:
                row.start += delta

    def _compact(self):
        earliest = min(r.start for r in self._rows if r is not None)
        if earliest <= 0:
            raise RuntimeError("generation cache full with a row at position 0 (a window longer than the context)")
        self._shift(-earliest)


def _bucket(width):
    """Prompt widths are left-padded to 16, 32, 64, ...: a few prefill shapes (XLA compiles each once)."""
    return PREFILL_BUCKET * 2 ** max(0, math.ceil(math.log2(width / PREFILL_BUCKET)))


def _pick(logits, request):
    """The sampler's NumPy path: step = tokens generated so far, as in a solo ``generate``."""
    settings = request.settings.sampler_settings()
    return int(settings.sampler().pick(np.asarray(logits, np.float32)[None], np.int32(request.settings.seed),
                                       request.generated, settings.params(), NUMPY, first_row=request.row)[0])
