"""``:generate``: completions, whole or streamed as server-sent events, under one overall deadline.

Language models exported with ``prefill``/``decode`` signatures and a tokenizer in their manifest
(character or subword) generate through the continuous-batching engine (``kerasllm.serving.engine``):
each token is sent as it is decoded, and the prompt is prefilled once. Other models need a
``generate`` signature (string prompts in, strings out); streaming then calls it in chunks of
``stream_chunk_tokens``, feeding prompt + text so far, with the seed moved on per chunk so a sampled
continuation does not repeat the same random draws. A request without ``seed`` gets a fresh one (as
``lm.generate(seed=None)``), so two sampled requests differ; with ``seed`` they repeat.
"""
from __future__ import annotations

import asyncio
import json

import numpy as np
from aiohttp import web

from kerasllm.generation.samplers import seed_word
from kerasllm.serving import verbs
from kerasllm.serving.codec import BadRequest

PROMPT_KEYS = ("prompts", "prompt", "instances", "texts")
GENERATE_FIELDS = frozenset(PROMPT_KEYS + ("stream", "stream_chunk_tokens", "max_new_tokens", "temperature",
                                           "top_k", "top_p", "seed", "stop"))


def sse(payload) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode("utf-8")


def check_fields(body, allowed):
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown fields {unknown[:10]}; :generate takes {sorted(allowed)}")


def _request_seed(body) -> int:
    """The request's ``seed`` as the int32 seed word, or a fresh one when it has none."""
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(f"'seed' must be an integer, got {str(seed)[:40]}")
    return seed_word(seed)


def _int_field(body, name, default, low, high):
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"{name!r} must be an integer from {low} to {high}, got {str(value)[:40]}")
    return value


async def generate(server, request, servable, body):
    engine = server.engine_for(servable)
    if engine is not None:
        return await _generate_engine(server, request, engine, body), "decode"
    signature = verbs.find_signature(servable, (verbs.GENERATE_SIGNATURE,), "generate")
    check_fields(body, GENERATE_FIELDS | set(signature.inputs) | {"signature_name"})
    prompts = verbs.texts_from(body, PROMPT_KEYS, server.options.limits)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    if "stop" in body:
        raise BadRequest(f"model {servable.name!r} generates through its 'generate' signature, which has no "
                         "'stop' input")
    if "seed" in signature.inputs:
        body = dict(body, seed=_request_seed(body))  # one seed per request, never the same default
    if not stream:
        arrays = verbs.build_inputs(signature, body, prompts, verbs.GENERATE_DEFAULTS, server.options.limits)
        outputs = await server.pool.run(servable, signature, arrays)
        texts = verbs._strings(np.asarray(verbs.string_output(signature, outputs)).tolist())
        return web.json_response({"completions": texts}), signature.name
    return await _stream_signature(server, request, servable, signature, body, prompts), signature.name


async def _stream_signature(server, request, servable, signature, body, prompts):
    limits = server.options.limits
    chunk = _int_field(body, "stream_chunk_tokens", 8, 1, 4096)
    chunked = "max_new_tokens" in signature.inputs
    total = _int_field(body, "max_new_tokens", verbs.GENERATE_DEFAULTS["max_new_tokens"], 0, 1 << 20)
    seed = body.get("seed")  # set by generate(): this request's seed when the signature takes one
    # validate everything before the 200 status goes out
    verbs.build_inputs(signature, body, prompts, verbs.GENERATE_DEFAULTS, limits)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    done = [""] * len(prompts)
    echoes = False  # the signature answers prompt + continuation (as kerasllm's language models do)
    remaining = total if chunked else 1

    async def produce():
        nonlocal remaining, echoes
        produced = 0
        while remaining > 0:
            step = min(chunk, remaining) if chunked else None
            fields = dict(body, max_new_tokens=step) if chunked else dict(body)
            if chunked and seed is not None:
                fields["seed"] = seed_word(seed + produced)  # fresh draws for each chunk
            fed = [p + d for p, d in zip(prompts, done)]
            arrays = verbs.build_inputs(signature, fields, fed, verbs.GENERATE_DEFAULTS, limits)
            outputs = await server.pool.run(servable, signature, arrays)
            texts = verbs._strings(np.asarray(verbs.string_output(signature, outputs)).tolist())
            echoes = echoes or any(isinstance(t, str) and f and t.startswith(f) for t, f in zip(texts, fed))
            pieces = [t[len(f):] if isinstance(t, str) and t.startswith(f) and f else t for t, f in zip(texts, fed)]
            for i, piece in enumerate(pieces):
                if isinstance(piece, str) and piece:
                    done[i] += piece
                    await response.write(sse({"index": i, "text": piece}))
            remaining = remaining - step if chunked else 0
            produced += step or 0
            if not any(isinstance(p, str) and p for p in pieces):
                break

    await _finish(server, response, produce, lambda: [p + d for p, d in zip(prompts, done)] if echoes else done)
    return response


async def _finish(server, response, produce, completions):
    """Run ``produce`` under the stream deadline, then the closing event (or an error event)."""
    try:
        try:
            async with asyncio.timeout(server.options.stream_timeout):
                await produce()
        except TimeoutError:
            await response.write(sse({"error": f"the stream took longer than {server.options.stream_timeout:g} s"}))
            await response.write_eof()
            return
        await response.write(sse({"done": True, "completions": completions()}))
        await response.write_eof()
    except ConnectionResetError:  # the client went away: nothing left to tell it
        pass
    except Exception as error:  # the status line is gone: report in the stream, then end it
        status = getattr(error, "status", 500)
        message = str(error) if status < 500 else "internal error (details in the server log)"
        if status >= 500:
            import logging

            logging.getLogger("kerasllm.serving").exception("stream failed")
        try:
            await response.write(sse({"error": message}))
            await response.write_eof()
        except ConnectionResetError:
            pass


async def _generate_engine(server, request, engine, body):
    """Generation through the continuous-batching engine (one token per event when streaming)."""
    check_fields(body, GENERATE_FIELDS)
    prompts = verbs.texts_from(body, PROMPT_KEYS, server.options.limits)
    settings = engine.settings_from(body, "max_new_tokens", verbs.GENERATE_DEFAULTS["max_new_tokens"])
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    for prompt in prompts:
        engine.encode(prompt)  # empty prompts are rejected before the response starts
    # prompt i draws the random numbers of batch row i, as lm.generate(prompts, seed=seed) does
    if not stream:
        async with asyncio.timeout(server.options.stream_timeout):
            results = await asyncio.gather(*(engine.complete(p, settings, row=i) for i, p in enumerate(prompts)))
        return web.json_response({"completions": [p + r.text for p, r in zip(prompts, results)]})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    done = [""] * len(prompts)

    async def one(i, prompt):
        async for piece in engine.stream(prompt, settings, row=i):
            done[i] += piece
            await response.write(sse({"index": i, "text": piece}))

    async def produce():
        await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))

    await _finish(server, response, produce, lambda: [p + d for p, d in zip(prompts, done)])
    return response
