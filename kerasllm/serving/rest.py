"""TF Serving's REST API (as its http_rest_api_handler): ``/v1/models/<name>[/versions/<v>|/labels/<l>]``
GET status and ``/metadata``, POST ``:predict``, ``:classify``, ``:query`` and ``:generate``.

A request body is read under a deadline and a size limit checked before reading (``Content-Length``);
decoding it and turning it into tensors run in a worker thread when it is large (``codec.loads``), so
the event loop keeps answering other requests meanwhile.
"""
from __future__ import annotations

import asyncio
import re
import time

from aiohttp import web

from kerasllm.export.layout import check_model_name
from kerasllm.serving import streaming, verbs
from kerasllm.serving.codec import BadRequest, format_predict, loads, parse_predict
from kerasllm.serving.middleware import HTTPError

DEFAULT_SIGNATURE = "serving_default"
_TAIL = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                   r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?$")
VERBS = ("predict", "classify", "generate", "query")
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit would take other scripts' digits
INLINE_BODY_BYTES = 16 * 1024  # smaller bodies are decoded on the event loop (a thread hop costs more)


async def read_body(request, max_bytes: int, timeout: float) -> bytes:
    """The body, refused before reading when its declared size is over the limit (413), and within
    ``timeout`` seconds however slowly the client sends it (408)."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise HTTPError(413, f"request body of {length} bytes is larger than the limit of {max_bytes} bytes",
                        headers={"Connection": "close"})
    if request.content.is_eof():  # the whole body came with the head: nothing to wait for
        return await request.read()
    try:
        async with asyncio.timeout(timeout):
            return await request.read()  # aiohttp stops at client_max_size for chunked bodies (413)
    except TimeoutError:
        raise HTTPError(408, f"the request body did not arrive within {timeout:g} s",
                        headers={"Connection": "close"}) from None


class RestHandler:
    def __init__(self, server):
        self.server = server

    @property
    def options(self):
        return self.server.options

    @property
    def registry(self):
        return self.server.registry

    async def offload(self, size, function, *args):
        """Run CPU work on request data in the parse threads when the data is large."""
        if size <= INLINE_BODY_BYTES:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.server.parse_executor, function, *args)

    async def json_body(self, request, then=None):
        """Read, decode (a JSON object) and, with ``then(body)``, prepare tensors: off the loop when large."""
        raw = await read_body(request, self.options.max_request_bytes, self.options.body_timeout)

        def decode():
            body = loads(raw)
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            return then(body) if then is not None else body

        return await self.offload(len(raw), decode)

    # ---- URL -----------------------------------------------------------------------------

    def parse_tail(self, tail):
        match = _TAIL.match(tail)
        if match is None:
            raise HTTPError(404, "malformed URL: expected /v1/models/<name>[/versions/<v>|/labels/<label>]"
                                 "[/metadata|:predict|:classify|:generate|:query]")
        name = match["name"]
        try:
            check_model_name(name)
        except ValueError as error:
            raise HTTPError(400, str(error)) from None
        return name, match["version"], match["label"], match["metadata"] is not None, match["verb"]

    def served(self, name):
        served = self.registry.models.get(name)
        if not served:  # (no list of models or load errors here: the status URL reports those)
            why = (f": its versions failed to load (GET /v1/models/{name} gives the errors)"
                   if self.registry.failed_versions(name) else "")
            raise HTTPError(404, f"Servable not found for request: Latest({name}): model {name!r} is not served{why}")
        return served

    def version_number(self, name, version, label):
        if label is not None:
            number = self.options.version_labels.get(name, {}).get(label)
            if number is None:
                raise HTTPError(404, f"model {name!r} has no version label {label!r}")
            return number
        if version is None:
            return None
        if not _DIGITS.fullmatch(version):
            raise HTTPError(400, f"version must be a non-negative integer, got {version[:40]!r}")
        return int(version)

    def servable(self, name, version, label):
        served = self.served(name)
        number = self.version_number(name, version, label)
        if number is None:
            return served[max(served)]
        servable = served.get(number)
        if servable is None:
            raise HTTPError(404, f"Servable not found for request: Specific({name}, {number}): version {number} "
                                 "is not served")
        return servable

    # ---- GET: status and metadata --------------------------------------------------------

    async def get(self, request):
        name, version, label, metadata, verb = self.parse_tail(request.match_info["tail"])
        if verb is not None:
            raise HTTPError(405, f":{verb} needs POST")
        if metadata:
            servable = self.servable(name, version, label)
            return web.json_response({
                "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
                "metadata": {"signature_def": servable.signature_def_json}})
        return web.json_response({"model_version_status": self.version_status(name, version, label)})

    def version_status(self, name, version=None, label=None):
        """TF Serving's GetModelStatus: a state per version. Served: AVAILABLE (UNLOADING while the server
        drains); failed to load and not served: END with the error."""
        served = self.registry.models.get(name, {})
        failed = self.registry.failed_versions(name)
        state = "UNLOADING" if self.server.draining else "AVAILABLE"
        rows = {v: (state, "OK", "") for v in served}
        for v, message in failed.items():
            rows.setdefault(v, ("END", "UNKNOWN", message))
        if not rows:
            raise HTTPError(404, f"Servable not found for request: Latest({name}): model {name!r} is not served")
        number = self.version_number(name, version, label)
        if number is not None:
            if number not in rows:
                raise HTTPError(404, f"Servable not found for request: Specific({name}, {number}): version "
                                     f"{number} is not served")
            rows = {number: rows[number]}
        return [{"version": str(v), "state": s, "status": {"error_code": code, "error_message": message}}
                for v, (s, code, message) in sorted(rows.items(), reverse=True)]

    # ---- POST: the verbs -----------------------------------------------------------------

    async def post(self, request):
        started = time.perf_counter()
        labels = ["-", "-", "-"]  # model, signature, method (metrics)
        status = 500
        try:
            if self.server.draining:
                raise HTTPError(503, "the server is shutting down")
            name, version, label, metadata, verb = self.parse_tail(request.match_info["tail"])
            if metadata or verb is None:
                raise HTTPError(405, "POST needs a verb: :predict, :classify, :generate or :query")
            if verb not in VERBS:
                raise HTTPError(404, f"unknown verb :{verb[:40]}; expected one of " + ", ".join(":" + v for v in VERBS))
            labels[2] = verb
            servable = self.servable(name, version, label)
            labels[0] = name
            response, labels[1] = await getattr(self, "_" + verb)(request, servable)
            status = response.status
            return response
        except (HTTPError, BadRequest, web.HTTPException) as error:
            status = error.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code for it)
            raise
        finally:
            self.server.metrics.requests.inc(*labels, str(status))
            self.server.metrics.latency.observe(*labels, value=time.perf_counter() - started)

    def _signature(self, servable, body):
        name = body.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(name, str):
            raise BadRequest("'signature_name' must be a string")
        signature = servable.signatures.get(name or DEFAULT_SIGNATURE)
        if signature is None:
            raise BadRequest(f"Serving signature name: {name[:100]!r} not found in signature def; "
                             f"signatures: {sorted(servable.signatures)}")
        return signature

    async def _predict(self, request, servable):
        limits = self.options.limits

        def prepare(body):
            signature = self._signature(servable, body)
            arrays, fmt = parse_predict(body, signature.inputs, limits)
            if fmt == "row" and not signature.batchable:
                raise BadRequest(f"signature {signature.name!r} has outputs without a batch dimension, so it "
                                 "cannot answer the row ('instances') format: use the columnar 'inputs' format")
            return signature, arrays, fmt

        signature, arrays, fmt = await self.json_body(request, prepare)
        outputs = await self.server.pool.run(servable, signature, arrays)
        return web.json_response(format_predict(outputs, fmt)), signature.name

    async def _classify(self, request, servable):
        limits = self.options.limits

        def prepare(body):
            signature = self._signature(servable, body)
            return signature, verbs.classify_inputs(signature, body, limits)

        signature, arrays = await self.json_body(request, prepare)
        outputs = await self.server.pool.run(servable, signature, arrays)
        return web.json_response(verbs.classify_result(outputs, servable.manifest)), signature.name

    async def _query(self, request, servable):
        limits = self.options.limits
        signature = verbs.find_signature(servable, verbs.QUERY_SIGNATURES, "query")

        def prepare(body):
            texts = verbs.texts_from(body, ("texts", "queries", "instances", "text"), limits)
            arrays = verbs.build_inputs(signature, body, texts, verbs.QUERY_DEFAULTS, limits)
            k = body.get("k")
            if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
                raise BadRequest("'k' must be a positive integer")
            return arrays, k

        arrays, k = await self.json_body(request, prepare)
        outputs = await self.server.pool.run(servable, signature, arrays)
        return web.json_response(verbs.query_result(outputs, k)), signature.name

    async def _generate(self, request, servable):
        body = await self.json_body(request)
        return await streaming.generate(self.server, request, servable, body)
