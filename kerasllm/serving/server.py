"""The embedded model server: TF Serving's REST API over ``<root>/<name>/<version>/`` SavedModels.

Same paths and JSON as ``tensorflow_model_server --rest_api_port`` (clients move to TF Serving
unchanged), plus ``:generate`` (server-sent events when ``"stream": true``), ``:query`` and
``/monitoring/prometheus/metrics``. Built on aiohttp; inference runs in a thread pool through the
dynamic batcher, never on the event loop.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
from aiohttp import web

from kerasllm.export.layout import check_model_name
from kerasllm.serving import page, verbs
from kerasllm.serving.batching import Batcher, BatcherClosed, BatchingOptions, QueueFull
from kerasllm.serving.codec import BadRequest, Limits, format_predict, parse_predict
from kerasllm.serving.metrics import ServerMetrics
from kerasllm.serving.registry import ModelRegistry

log = logging.getLogger("kerasllm.serving")

DEFAULT_SIGNATURE = "serving_default"
_TAIL = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                   r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?$")
_VERBS = ("predict", "classify", "generate", "query")
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit would take other scripts' digits
_MAX_BATCHERS = 1024  # distinct (model, signature, shapes, settings) queues before falling back to no merging


class HTTPError(Exception):
    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.headers = status, headers


@dataclass(frozen=True)
class ServerOptions:
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    enable_batching: bool = True
    limits: Limits = field(default_factory=Limits)
    max_request_bytes: int = 8 * 1024 * 1024
    request_timeout: float = 30.0
    poll_seconds: float = 1.0
    num_versions: int = 1
    version_labels: dict = field(default_factory=dict)  # {model: {label: version}}
    shutdown_timeout: float = 30.0

    def __post_init__(self):
        for name in ("max_request_bytes",):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1024:
                raise ValueError(f"{name} must be an integer >= 1024, got {value!r}")
        for name in ("request_timeout", "poll_seconds", "shutdown_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if not isinstance(self.version_labels, dict) or not all(
                isinstance(m, dict) and all(isinstance(v, int) for v in m.values())
                for m in self.version_labels.values()):
            raise ValueError("version_labels must look like {'model': {'label': version_number}}, "
                             f"got {self.version_labels!r}")


class ModelServer:
    """Serve every model under ``root``. ``await start(host, port)`` / ``await stop()``, or ``run()`` to block."""

    def __init__(self, root, options: ServerOptions | None = None, **kwargs):
        options = options or ServerOptions()
        known = set(ServerOptions.__dataclass_fields__) | set(BatchingOptions.__dataclass_fields__) | set(
            Limits.__dataclass_fields__)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown server options {unknown}; known: {sorted(known - {'batching', 'limits'})}")
        batching = {k: kwargs.pop(k) for k in list(kwargs) if k in BatchingOptions.__dataclass_fields__}
        limits = {k: kwargs.pop(k) for k in list(kwargs) if k in Limits.__dataclass_fields__}
        if batching:
            options = replace(options, batching=replace(options.batching, **batching))
        if limits:
            options = replace(options, limits=replace(options.limits, **limits))
        self.options = replace(options, **kwargs) if kwargs else options
        self.metrics = ServerMetrics()
        self.registry = ModelRegistry(root, self.options.num_versions, on_change=self._on_model_change)
        self._batchers: dict[tuple, Batcher] = {}
        self._executor = None
        self._loader = None
        self._slots = None
        self._runner = None
        self._poller = None
        self._closing = False
        self.address = None

    # ---- lifecycle -------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.options.max_request_bytes,
                              middlewares=[self._errors_middleware])
        app.router.add_get("/v1/models/{tail:.*}", self._get)
        app.router.add_post("/v1/models/{tail:.*}", self._post)
        app.router.add_get("/monitoring/prometheus/metrics", self._metrics)
        page.add_page_route(app, self)  # GET /: a page to try every served model
        return app

    async def start(self, host="127.0.0.1", port=8501):
        """Load the models, then listen. Returns ``(host, port)`` actually bound (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(self.options.batching.num_batch_threads, thread_name_prefix="kerasllm-batch")
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="kerasllm-load")
        self._slots = asyncio.Semaphore(self.options.batching.num_batch_threads)
        await loop.run_in_executor(self._loader, self.registry.poll)
        self._runner = web.AppRunner(self.make_app(), shutdown_timeout=self.options.shutdown_timeout,
                                     access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.address = self._runner.addresses[0][:2]
        self._poller = loop.create_task(self._poll_loop())
        log.info("serving %s on http://%s:%d", sorted(self.registry.models), *self.address)
        return self.address

    async def stop(self):
        """Graceful: stop accepting connections, finish requests in flight, then release threads."""
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()  # waits for running handlers up to shutdown_timeout
        await asyncio.gather(*(b.close() for b in self._batchers.values()), return_exceptions=True)
        self._batchers.clear()
        for executor in (self._executor, self._loader):
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)

    def run(self, host="127.0.0.1", port=8501):
        """Block serving until SIGINT or SIGTERM, then shut down gracefully."""

        async def main():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, stop.set)
                except (NotImplementedError, RuntimeError):  # not the main thread / platform without signals
                    pass
            bound = await self.start(host, port)
            print(f"kerasllm serving {sorted(self.registry.models) or 'no models yet'} on "
                  f"http://{bound[0]}:{bound[1]} (Ctrl-C to stop)", flush=True)
            try:
                await stop.wait()
            finally:
                await self.stop()

        asyncio.run(main())

    async def _poll_loop(self):
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.options.poll_seconds)
            try:
                await loop.run_in_executor(self._loader, self.registry.poll)
            except Exception:  # keep polling whatever one folder does
                log.exception("model poll failed")
            await self._drop_stale_batchers()

    async def _drop_stale_batchers(self):
        models = self.registry.models
        stale = [key for key, b in self._batchers.items()
                 if key[1] not in models.get(key[0], {}) or (b.idle and len(self._batchers) > _MAX_BATCHERS // 2)]
        for key in stale:
            batcher = self._batchers.pop(key)
            asyncio.get_running_loop().create_task(batcher.close())  # finishes what it holds

    def _on_model_change(self, event, name, version):
        if event == "served":
            self.metrics.version.set(name, value=version)
        elif event == "failed":
            self.metrics.load_failures.inc(name)

    # ---- HTTP plumbing ---------------------------------------------------------------------

    @web.middleware
    async def _errors_middleware(self, request, handler):
        """Every failure becomes ``{"error": ...}`` with a 4xx/5xx status; nothing escapes as a crash."""
        try:
            return await handler(request)
        except HTTPError as error:
            return _error(error.status, str(error), error.headers)
        except BadRequest as error:
            return _error(error.status, str(error))
        except web.HTTPException as error:  # aiohttp's own: 404 route, 405 method, 413 body too large
            if error.status < 400:
                raise
            message = error.text if error.text and not error.text[:3].isdigit() else error.reason
            if error.status == 413:
                message = f"request body larger than the limit of {self.options.max_request_bytes} bytes"
            return _error(error.status, message)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("internal error on %s %s", request.method, request.rel_url)
            return _error(500, f"internal error: {type(error).__name__}: {error}")

    async def _metrics(self, request):
        return web.Response(text=self.metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Format": "0.0.4"})

    def _parse_tail(self, tail):
        match = _TAIL.match(tail)
        if match is None:
            raise HTTPError(404, f"malformed URL: expected /v1/models/<name>[/versions/<v>|/labels/<label>]"
                                 f"[/metadata|:predict|:classify|:generate|:query], got /v1/models/{tail[:200]}")
        name = match["name"]
        try:
            check_model_name(name)
        except ValueError as error:
            raise HTTPError(400, str(error)) from None
        return name, match["version"], match["label"], match["metadata"] is not None, match["verb"]

    def _served(self, name):
        served = self.registry.models.get(name)
        if not served:
            failed = self.registry.failed_versions(name)
            reason = (f"; version {max(failed)} failed to load: {failed[max(failed)]}" if failed else "")
            raise HTTPError(404, f"Servable not found for request: Latest({name}): no model {name!r} is loaded"
                                 f"{reason}; models: {sorted(self.registry.models)}")
        return served

    def _servable(self, name, version, label):
        served = self._served(name)
        if label is not None:
            number = self.options.version_labels.get(name, {}).get(label)
            if number is None:
                raise HTTPError(404, f"model {name!r} has no version label {label!r}")
            version = str(number)
        if version is None:
            return served[max(served)]
        if not _DIGITS.fullmatch(version):
            raise HTTPError(400, f"version must be a non-negative integer, got {version[:40]!r}")
        servable = served.get(int(version))
        if servable is None:
            raise HTTPError(404, f"Servable not found for request: Specific({name}, {int(version)}); "
                                 f"versions served: {sorted(served)}")
        return servable

    async def _json_body(self, request):
        raw = await request.read()
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as error:  # ValueError covers JSONDecodeError and bad UTF-8
            raise BadRequest(f"the body is not valid JSON: {str(error)[:200]}") from None

    # ---- GET: status and metadata ----------------------------------------------------------

    async def _get(self, request):
        name, version, label, metadata, verb = self._parse_tail(request.match_info["tail"])
        if verb is not None:
            raise HTTPError(405, f":{verb} needs POST")
        if metadata:
            servable = self._servable(name, version, label)
            return web.json_response({
                "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
                "metadata": {"signature_def": servable.signature_def_json}})
        if not self.registry.models.get(name) and self.registry.failed_versions(name) and version is None \
                and label is None:  # as TF Serving: the version that failed, with its error
            failed = self.registry.failed_versions(name)
            return web.json_response({"model_version_status": [
                {"version": str(v), "state": "END", "status": {"error_code": "UNKNOWN", "error_message": failed[v]}}
                for v in sorted(failed, reverse=True)]})
        served = self._served(name)
        if version is not None or label is not None:
            chosen = [self._servable(name, version, label).version]
        else:
            chosen = sorted(served, reverse=True)
        return web.json_response({"model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in chosen]})

    # ---- POST: the verbs -------------------------------------------------------------------

    async def _post(self, request):
        started = time.perf_counter()
        model_label, signature_label, verb_label = "-", "-", "-"
        status = 500
        try:
            if self._closing:
                raise HTTPError(503, "the server is shutting down")
            name, version, label, metadata, verb = self._parse_tail(request.match_info["tail"])
            if metadata or verb is None:
                raise HTTPError(405, "POST needs a verb: :predict, :classify, :generate or :query")
            if verb not in _VERBS:
                raise HTTPError(404, f"unknown verb :{verb[:40]}; expected one of " + ", ".join(":" + v for v in _VERBS))
            verb_label = verb
            servable = self._servable(name, version, label)
            model_label = name
            body = await self._json_body(request)
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            handler = getattr(self, "_" + verb)
            response, signature_label = await handler(request, servable, body)
            status = response.status
            return response
        except HTTPError as error:
            status = error.status
            raise
        except BadRequest as error:
            status = error.status
            raise
        except web.HTTPException as error:
            status = error.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code for it)
            raise
        finally:
            self.metrics.requests.inc(model_label, signature_label, verb_label, str(status))
            self.metrics.latency.observe(model_label, signature_label, verb_label, value=time.perf_counter() - started)

    def _signature(self, servable, body):
        name = body.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(name, str):
            raise BadRequest("'signature_name' must be a string")
        signature = servable.signatures.get(name or DEFAULT_SIGNATURE)
        if signature is None:
            raise BadRequest(f"Serving signature name: {name[:100]!r} not found in signature def; "
                             f"signatures: {sorted(servable.signatures)}")
        return signature

    async def _predict(self, request, servable, body):
        signature = self._signature(servable, body)
        arrays, fmt = parse_predict(body, signature.inputs, self.options.limits)
        if fmt == "row" and not signature.batchable:
            raise BadRequest(f"signature {signature.name!r} has outputs without a batch dimension, so it cannot "
                             "answer the row ('instances') format: use the columnar 'inputs' format")
        outputs = await self._run(servable, signature, arrays)
        return web.json_response(format_predict(outputs, fmt)), signature.name

    async def _classify(self, request, servable, body):
        signature = self._signature(servable, body)
        arrays = verbs.classify_inputs(signature, body, self.options.limits)
        outputs = await self._run(servable, signature, arrays)
        return web.json_response(verbs.classify_result(outputs, servable.manifest)), signature.name

    async def _query(self, request, servable, body):
        signature = verbs.find_signature(servable, verbs.QUERY_SIGNATURES, "query")
        texts = verbs.texts_from(body, ("texts", "queries", "instances", "text"), self.options.limits)
        arrays = verbs.build_inputs(signature, body, texts, verbs.QUERY_DEFAULTS, self.options.limits)
        k = body.get("k")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise BadRequest("'k' must be a positive integer")
        outputs = await self._run(servable, signature, arrays)
        return web.json_response(verbs.query_result(outputs, k)), signature.name

    async def _generate(self, request, servable, body):
        signature = verbs.find_signature(servable, (verbs.GENERATE_SIGNATURE,), "generate")
        prompts = verbs.texts_from(body, ("prompts", "prompt", "instances", "texts"), self.options.limits)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be true or false")
        if not stream:
            arrays = verbs.build_inputs(signature, body, prompts, verbs.GENERATE_DEFAULTS, self.options.limits)
            outputs = await self._run(servable, signature, arrays)
            texts = verbs._strings(np.asarray(verbs.string_output(signature, outputs)).tolist())
            return web.json_response({"completions": texts}), signature.name
        return await self._generate_stream(request, servable, signature, body, prompts), signature.name

    async def _generate_stream(self, request, servable, signature, body, prompts):
        """Server-sent events. With a ``max_new_tokens`` input the signature is called in chunks of
        ``stream_chunk_tokens`` (prompt + text so far in, continuation out), each chunk sent when ready."""
        chunk = body.get("stream_chunk_tokens", 8)
        if not isinstance(chunk, int) or isinstance(chunk, bool) or not 1 <= chunk <= 4096:
            raise BadRequest("'stream_chunk_tokens' must be an integer from 1 to 4096")
        chunked = "max_new_tokens" in signature.inputs
        total = body.get("max_new_tokens", verbs.GENERATE_DEFAULTS["max_new_tokens"])
        if chunked and (not isinstance(total, int) or isinstance(total, bool) or not 0 <= total <= 1 << 20):
            raise BadRequest("'max_new_tokens' must be a non-negative integer")
        # validate everything before the 200 status goes out
        verbs.build_inputs(signature, body, prompts, verbs.GENERATE_DEFAULTS, self.options.limits)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        done = [""] * len(prompts)
        echoes = False  # the signature answers prompt + continuation (as kerasllm's language models do)
        remaining = total if chunked else 1
        try:
            while remaining > 0:
                step = min(chunk, remaining) if chunked else None
                fields = dict(body, max_new_tokens=step) if chunked else body
                fed = [p + d for p, d in zip(prompts, done)]
                arrays = verbs.build_inputs(signature, fields, fed, verbs.GENERATE_DEFAULTS, self.options.limits)
                outputs = await self._run(servable, signature, arrays)
                texts = verbs._strings(np.asarray(verbs.string_output(signature, outputs)).tolist())
                echoes = echoes or any(isinstance(t, str) and f and t.startswith(f) for t, f in zip(texts, fed))
                pieces = [t[len(f):] if isinstance(t, str) and t.startswith(f) and f else t
                          for t, f in zip(texts, fed)]
                for i, piece in enumerate(pieces):
                    if isinstance(piece, str) and piece:
                        done[i] += piece
                        await response.write(_sse({"index": i, "text": piece}))
                remaining = remaining - step if chunked else 0
                if not any(isinstance(p, str) and p for p in pieces):
                    break
            completions = [p + d for p, d in zip(prompts, done)] if echoes else done
            await response.write(_sse({"done": True, "completions": completions}))
            await response.write_eof()
        except ConnectionResetError:  # the client went away: nothing left to tell it
            pass
        except Exception as error:  # the status line is gone: report in the stream, then end it
            try:
                await response.write(_sse({"error": str(error) or type(error).__name__}))
                await response.write_eof()
            except ConnectionResetError:
                pass
        return response

    # ---- running signatures ----------------------------------------------------------------

    async def _run(self, servable, signature, arrays):
        try:
            async with asyncio.timeout(self.options.request_timeout):  # cheaper than wait_for: no extra task
                return await self._submit(servable, signature, arrays)
        except TimeoutError:
            raise HTTPError(504, f"the request took longer than {self.options.request_timeout:g} s") from None
        except QueueFull as error:
            self.metrics.rejected.inc(servable.name, signature.name)
            raise HTTPError(429, str(error), headers={"Retry-After": "1"}) from None
        except BatcherClosed as error:
            raise HTTPError(503, str(error)) from None
        except (BadRequest, HTTPError):
            raise
        except Exception as error:
            from kerasllm._tf import tf

            if isinstance(error, (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError, ValueError, TypeError)):
                raise BadRequest(f"the model rejected the input: {_first_line(error)}") from None
            raise

    async def _submit(self, servable, signature, arrays):
        batched = [k for k, info in signature.inputs.items() if info.batched]
        if signature.batchable:
            rows = {len(arrays[k]) for k in batched}
            if len(rows) != 1:
                raise BadRequest(f"batched inputs {batched} have different numbers of rows: {sorted(rows)}")
            rows = rows.pop()
        if not signature.batchable or rows == 0:
            key = (servable.name, servable.version, signature.name, "unbatched")
            wrapped = await self._batcher(key, signature, {}, unbatched=True).submit(arrays, 1)
            return {k: v[0] for k, v in wrapped.items()}
        shared = {k: v for k, v in arrays.items() if k not in batched}
        key = (servable.name, servable.version, signature.name,
               tuple((k, arrays[k].shape[1:]) for k in batched),
               tuple((k, v.dtype.str, v.shape, _value_key(v)) for k, v in sorted(shared.items())))
        if key not in self._batchers and len(self._batchers) >= _MAX_BATCHERS:
            key = key[:3] + ("overflow", id(arrays))  # too many distinct queues: run alone
            batcher = self._batcher(key, signature, shared)
            try:
                return await batcher.submit({k: arrays[k] for k in batched}, rows)
            finally:
                self._batchers.pop(key, None)
                asyncio.get_running_loop().create_task(batcher.close())
        return await self._batcher(key, signature, shared).submit({k: arrays[k] for k in batched}, rows)

    def _batcher(self, key, signature, shared, unbatched=False):
        batcher = self._batchers.get(key)
        if batcher is not None:
            return batcher
        options = self.options.batching
        if unbatched or not self.options.enable_batching:
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

        batcher = Batcher(run, options, self._executor, self._slots, on_batch=on_batch)
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


def _sse(payload) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode("utf-8")


def _error(status, message, headers=None):
    return web.json_response({"error": message}, status=status, headers=headers)


def serve(root, host="127.0.0.1", port=8501, **options):
    """Serve every model under ``root`` until Ctrl-C. Options: TF Serving's batching names
    (``max_batch_size``, ``batch_timeout_micros``, ``max_enqueued_batches``, ``num_batch_threads``,
    ``allowed_batch_sizes``), ``enable_batching``, limits (``max_rows``, ``max_text_bytes``), and
    ``ServerOptions`` fields (``request_timeout``, ``poll_seconds``, ``num_versions``, ``version_labels``...)."""
    ModelServer(root, **options).run(host, port)
