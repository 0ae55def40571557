"""The embedded model server: TF Serving's REST API over ``<root>/<name>/<version>/`` SavedModels.

Same paths and JSON as ``tensorflow_model_server --rest_api_port`` (clients move to TF Serving
unchanged), plus ``:generate`` (server-sent events when ``"stream": true``), ``:query``, OpenAI-style
``/v1/completions`` and ``/v1/models``, ``/healthz``, ``/readyz`` and ``/monitoring/prometheus/metrics``.
Built on aiohttp; inference runs in a thread pool through the dynamic batcher, never on the event loop.

This module is the lifecycle (start, drain, stop) and the options; the parts are split as TF Serving
splits them: ``routes`` (the URL table), ``middleware`` (request ids, auth, errors), ``rest`` (the
REST handler), ``codec`` (JSON <-> tensors), ``streaming`` (``:generate``), ``openai_api``,
``batcher_pool`` and ``batching`` (dynamic batching), ``engine`` (continuous batching for generation),
``registry`` (versions on disk).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiohttp import web

from kerasllm.export.layout import versions
from kerasllm.serving import middleware
from kerasllm.serving.access_log import AccessLogBuffer
from kerasllm.serving.batcher_pool import BatcherPool
from kerasllm.serving.batching import BatchingOptions
from kerasllm.serving.codec import Limits
from kerasllm.serving.metrics import ServerMetrics
from kerasllm.serving.registry import ModelRegistry
from kerasllm.serving.rest import RestHandler
from kerasllm.serving.routes import add_routes

log = logging.getLogger("kerasllm.serving")
access_log = logging.getLogger("kerasllm.access")


@dataclass(frozen=True)
class ServerOptions:
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    enable_batching: bool = True
    limits: Limits = field(default_factory=Limits)
    max_request_bytes: int = 8 * 1024 * 1024
    max_queued_bytes: int = 256 * 1024 * 1024  # per batch queue, on top of the row bound
    request_timeout: float = 30.0
    header_timeout: float = 10.0  # a request's head must arrive within this (also the idle keep-alive)
    body_timeout: float = 30.0  # and its body within this
    stream_timeout: float = 300.0  # a whole streamed or engine generation
    poll_seconds: float = 1.0
    num_versions: int = 1
    version_labels: dict = field(default_factory=dict)  # {model: {label: version}}
    shutdown_timeout: float = 30.0
    auth_token: str | None = None  # bearer token every request except /healthz and /readyz must send
    certfile: str | None = None  # TLS: both or neither
    keyfile: str | None = None
    insecure: bool = False  # allow a non-loopback address without a token or TLS
    generation_slots: int = 16  # cache slots of the continuous-batching engine (per model version)
    access_log: bool = True  # one line per request on the "kerasllm.access" logger
    continuous_batching: bool = True  # False: language models generate through their 'generate' signature
    generation_policy: str = "continuous"  # or "static": a new batch only when the running one has finished

    def __post_init__(self):
        for name in ("max_request_bytes", "max_queued_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1024:
                raise ValueError(f"{name} must be an integer >= 1024, got {value!r}")
        for name in ("request_timeout", "poll_seconds", "shutdown_timeout", "header_timeout", "body_timeout",
                     "stream_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if not isinstance(self.version_labels, dict) or not all(
                isinstance(m, dict) and all(isinstance(v, int) for v in m.values())
                for m in self.version_labels.values()):
            raise ValueError("version_labels must look like {'model': {'label': version_number}}, "
                             f"got {self.version_labels!r}")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("TLS needs both certfile and keyfile")
        if self.auth_token is not None and (not isinstance(self.auth_token, str) or not self.auth_token.strip()):
            raise ValueError("auth_token must be a non-empty string")
        if self.generation_policy not in ("continuous", "static"):
            raise ValueError(f"generation_policy must be 'continuous' or 'static', got {self.generation_policy!r}")
        if not isinstance(self.generation_slots, int) or not 1 <= self.generation_slots <= 256:
            raise ValueError(f"generation_slots must be an integer from 1 to 256, got {self.generation_slots!r}")


def is_loopback(host) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token_file(path) -> str:
    """The bearer token: the file's first line (refused when missing or empty)."""
    path = Path(path)
    token = path.read_text(encoding="utf-8").strip().splitlines()[0].strip() if path.is_file() else ""
    if not token:
        raise ValueError(f"auth token file {path} is missing or empty")
    return token


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
        self.pool = BatcherPool(self.options.batching, self.options.enable_batching, self.options.request_timeout,
                                self.options.max_queued_bytes, self.metrics)
        self.rest = RestHandler(self)
        self.access_log = AccessLogBuffer(access_log)
        from kerasllm.serving.openai_api import OpenAIHandler

        self.openai = OpenAIHandler(self)
        self._engines = {}  # (name, version) -> GenerationEngine or None
        self.parse_executor = None
        self._loader = None
        self._runner = None
        self._poller = None
        self.draining = False
        self.address = None

    # ---- lifecycle -------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        middlewares = [middleware.errors(self.options.max_request_bytes)]  # request id, then error answers
        if self.options.auth_token is not None:
            middlewares.append(middleware.bearer_auth(self.options.auth_token))
        app = web.Application(client_max_size=self.options.max_request_bytes, middlewares=middlewares)
        app.on_response_prepare.append(middleware.echo_request_id)
        add_routes(app, self)
        return app

    def _ssl_context(self):
        if self.options.certfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.options.certfile, self.options.keyfile)
        return context

    async def start(self, host="127.0.0.1", port=8501):
        """Load the models, then listen. Returns ``(host, port)`` actually bound (port 0 picks a free one)."""
        if not is_loopback(host) and self.options.auth_token is None and self.options.certfile is None \
                and not self.options.insecure:
            raise ValueError(f"refusing to serve on {host!r} (reachable from other machines) without "
                             "authentication or TLS: give --auth-token-file and/or --certfile/--keyfile, "
                             "or --insecure to serve in the clear anyway")
        context = self._ssl_context()
        loop = asyncio.get_running_loop()
        self.pool.start()
        self.parse_executor = ThreadPoolExecutor(2, thread_name_prefix="kerasllm-parse")
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="kerasllm-load")
        await loop.run_in_executor(self._loader, self.registry.poll)
        self._runner = web.AppRunner(self.make_app(), shutdown_timeout=self.options.shutdown_timeout,
                                     access_log=access_log if self.options.access_log else None,
                                     access_log_class=self.access_log.logger_class(),
                                     handle_signals=False, keepalive_timeout=self.options.header_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=context)
        await site.start()
        self.address = self._runner.addresses[0][:2]
        self._poller = loop.create_task(self._poll_loop())
        self._start_engines()
        log.info("serving %s on %s://%s:%d", sorted(self.registry.models), "https" if context else "http",
                 *self.address)
        return self.address

    async def stop(self):
        """Graceful: report UNLOADING, stop accepting connections, finish requests in flight, release threads."""
        self.draining = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()  # waits for running handlers up to shutdown_timeout
        self.access_log.flush()
        await asyncio.gather(*(e.close() for e in self._engines.values() if e is not None), return_exceptions=True)
        self._engines.clear()
        await self.pool.close()
        for executor in (self.parse_executor, self._loader):
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)

    def run(self, host="127.0.0.1", port=8501):
        """Block serving until SIGINT or SIGTERM, then shut down gracefully."""
        if self.options.access_log and not access_log.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            access_log.addHandler(handler)
            access_log.setLevel(logging.INFO)

        async def main():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, stop.set)
                except (NotImplementedError, RuntimeError):  # not the main thread / platform without signals
                    pass
            bound = await self.start(host, port)
            scheme = "https" if self.options.certfile else "http"
            print(f"kerasllm serving {sorted(self.registry.models) or 'no models yet'} on "
                  f"{scheme}://{bound[0]}:{bound[1]} (Ctrl-C to stop)", flush=True)
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
            models = self.registry.models
            self.pool.drop_stale(models)
            self._start_engines()
            for key in [k for k in self._engines if k[1] not in models.get(k[0], {})]:
                engine = self._engines.pop(key)
                if engine is not None:
                    loop.create_task(engine.close())

    def _on_model_change(self, event, name, version):  # called from the polling thread
        if event == "served":
            self.metrics.version.set(name, value=version)
        elif event == "failed":
            self.metrics.load_failures.inc(name)
        elif event == "removed":
            self.metrics.model_removed(name)

    def _start_engines(self):
        """Engines for newly served language models, so they compile before their first request."""
        for served in self.registry.models.values():
            for servable in served.values():
                self.engine_for(servable)

    def engine_for(self, servable):
        """The continuous-batching engine of a language-model version, or None (created on first use,
        on the event loop)."""
        if not self.options.continuous_batching:
            return None
        key = (servable.name, servable.version)
        if key not in self._engines:
            from kerasllm.serving.engine import GenerationEngine

            self._engines[key] = GenerationEngine.for_servable(servable, self.options.generation_slots,
                                                               self.metrics, self.options.generation_policy)
        return self._engines[key]

    # ---- small pages -----------------------------------------------------------------------

    async def metrics_page(self, request):
        return web.Response(text=self.metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Format": "0.0.4"})

    async def healthz(self, request):
        """Liveness: the process answers."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request):
        """Readiness: not draining, a model served, and no model with versions on disk still unattempted."""
        if self.draining:
            return web.json_response({"ready": False, "reason": "shutting down"}, status=503)
        models = self.registry.models
        waiting = [name for name, path in self.registry.model_dirs() if name not in models
                   and versions(path) and not self.registry.failed_versions(name)]
        if not models or waiting:
            return web.json_response({"ready": False, "reason": "models not loaded yet", "models": len(models),
                                      "waiting": len(waiting)}, status=503)
        return web.json_response({"ready": True, "models": len(models)})


def serve(root, host="127.0.0.1", port=8501, **options):
    """Serve every model under ``root`` until Ctrl-C. Options: TF Serving's batching names
    (``max_batch_size``, ``batch_timeout_micros``, ``max_enqueued_batches``, ``num_batch_threads``,
    ``allowed_batch_sizes``), ``enable_batching``, limits (``max_rows``, ``max_text_bytes``), and
    ``ServerOptions`` fields (``request_timeout``, ``poll_seconds``, ``num_versions``, ``version_labels``,
    ``auth_token``, ``certfile``/``keyfile``, ``insecure``, ``shutdown_timeout``...)."""
    ModelServer(root, **options).run(host, port)
