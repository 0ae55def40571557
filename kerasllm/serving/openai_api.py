"""OpenAI-compatible ``POST /v1/completions`` and ``GET /v1/models``, so the ``openai`` client and curl
examples written for OpenAI's API work unchanged (``base_url="http://host:port/v1"``).

Completions run on the continuous-batching engine (any kerasllm language model with ``prefill`` and
``decode`` signatures: character or subword). Fields: ``model``, ``prompt`` (a string or a list),
``max_tokens`` (16), ``temperature`` (1.0, 0 is greedy), ``top_p``, ``stop``, ``seed``, ``n``, ``stream``
(server-sent events ending with ``data: [DONE]``; ``stream_options.include_usage`` adds the totals),
``user``; OpenAI fields this server cannot honour are accepted only at their neutral value. Errors use
OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from aiohttp import web

from kerasllm.serving.codec import BadRequest, loads
from kerasllm.serving.middleware import HTTPError
from kerasllm.serving.rest import read_body

MAX_N = 8
# OpenAI fields with no effect here: accepted at these values only
NEUTRAL = {"echo": (False,), "logprobs": (None, 0), "best_of": (None, 1), "presence_penalty": (None, 0, 0.0),
           "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}), "suffix": (None, "")}
FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options",
          "user"} | set(NEUTRAL)


def _error(status, message, kind=None, param=None):
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": None}},
                             status=status)


class OpenAIHandler:
    def __init__(self, server):
        self.server = server

    async def models(self, request):
        data = []
        for name, served in sorted(self.server.registry.models.items()):
            servable = served[max(served)]
            if servable.manifest.get("kind") == "language_model" or "generate" in servable.signatures:
                data.append({"id": name, "object": "model", "created": int(servable.path.stat().st_mtime),
                             "owned_by": "kerasllm"})
        return web.json_response({"object": "list", "data": data})

    async def completions(self, request):
        started = time.perf_counter()
        model_label, status = "-", 500
        try:
            response = await self._completions(request)
            status = response.status
            return response
        except (BadRequest, HTTPError) as error:
            status = error.status
            return _error(error.status, str(error))
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            self.server.metrics.requests.inc(model_label, "completions", "completions", str(status))
            self.server.metrics.latency.observe(model_label, "completions", "completions",
                                                value=time.perf_counter() - started)

    async def _completions(self, request):
        server = self.server
        if server.draining:
            raise HTTPError(503, "the server is shutting down")
        raw = await read_body(request, server.options.max_request_bytes, server.options.body_timeout)
        body = await server.rest.offload(len(raw), loads, raw)
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise BadRequest(f"unknown fields {unknown[:10]}; /v1/completions takes {sorted(FIELDS)}")
        for name, allowed in NEUTRAL.items():
            if name in body and body[name] not in allowed:
                raise BadRequest(f"{name!r} is not supported by this server (only {allowed[-1]!r})")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise BadRequest("'model' must name a served model (GET /v1/models lists them)")
        served = server.registry.models.get(name)
        if not served:
            raise HTTPError(404, f"model {name[:128]!r} is not served")
        servable = served[max(served)]
        engine = server.engine_for(servable)
        if engine is None:
            raise BadRequest(f"model {name!r} is not a kerasllm language model with prefill/decode signatures")
        prompts = body.get("prompt", "")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise BadRequest("'prompt' must be a string or a non-empty list of strings")
        if any(len(p.encode("utf-8", "surrogatepass")) > server.options.limits.max_text_bytes for p in prompts):
            raise BadRequest(f"a prompt is longer than the limit of {server.options.limits.max_text_bytes} bytes",
                             status=413)
        n = body.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
            raise BadRequest(f"'n' must be an integer from 1 to {MAX_N}")
        if len(prompts) * n > server.options.limits.max_rows:
            raise BadRequest(f"{len(prompts) * n} completions is more than the limit of "
                             f"{server.options.limits.max_rows}", status=413)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be true or false")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise BadRequest("'stream_options' may only hold 'include_usage'")
        settings = engine.settings_from({"temperature": 1.0, **body}, "max_tokens", 16)  # one seed per request
        prompt_tokens = sum(len(engine.encode(p)) for p in prompts)  # (rejects empty prompts before any work)
        # choice i: prompt i // n, its (i % n)-th sample; it draws the random numbers of batch row i, so the
        # n samples differ and equal lm.generate([prompt] * n, seed=seed) (see kerasllm.serving.engine)
        jobs = [(prompt, settings) for prompt in prompts for _ in range(n)]
        ident = "cmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        if not stream:
            async with asyncio.timeout(server.options.stream_timeout):
                results = await asyncio.gather(*(engine.complete(p, s, row=i) for i, (p, s) in enumerate(jobs)))
            completion_tokens = sum(r.completion_tokens for r in results)
            return web.json_response({
                "id": ident, "object": "text_completion", "created": created, "model": name,
                "choices": [{"text": r.text, "index": i, "logprobs": None, "finish_reason": r.finish_reason}
                            for i, r in enumerate(results)],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}})
        return await self._stream(request, engine, name, jobs, prompt_tokens, ident, created,
                                  bool(options.get("include_usage")))

    async def _stream(self, request, engine, name, jobs, prompt_tokens, ident, created, include_usage):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        done = {}

        def chunk(choices, usage=None):
            payload = {"id": ident, "object": "text_completion", "created": created, "model": name,
                       "choices": choices}
            if usage is not None:
                payload["usage"] = usage
            return f"data: {json.dumps(payload)}\n\n".encode("utf-8")

        async def one(index, prompt, settings):
            async for piece in engine.stream(prompt, settings, on_done=lambda c: done.__setitem__(index, c),
                                             row=index):
                await response.write(chunk([{"text": piece, "index": index, "logprobs": None,
                                             "finish_reason": None}]))
            await response.write(chunk([{"text": "", "index": index, "logprobs": None,
                                         "finish_reason": done[index].finish_reason}]))

        try:
            try:
                async with asyncio.timeout(self.server.options.stream_timeout):
                    await asyncio.gather(*(one(i, p, s) for i, (p, s) in enumerate(jobs)))
            except TimeoutError:
                message = f"the stream took longer than {self.server.options.stream_timeout:g} s"
                await response.write(f"data: {json.dumps({'error': {'message': message}})}\n\n".encode())
            except BadRequest as error:
                await response.write(f"data: {json.dumps({'error': {'message': str(error)}})}\n\n".encode())
            else:
                if include_usage:
                    completion_tokens = sum(c.completion_tokens for c in done.values())
                    await response.write(chunk([], {"prompt_tokens": prompt_tokens,
                                                    "completion_tokens": completion_tokens,
                                                    "total_tokens": prompt_tokens + completion_tokens}))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response

