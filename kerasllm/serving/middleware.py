"""What every request goes through before a route sees it: a request id, optional bearer-token
authentication, and one place where failures become ``{"error": ...}`` answers with the right status.

Status rules: ``BadRequest``/``HTTPError`` carry their own status; aiohttp's own errors (404 route,
405 method, 413 body) keep theirs; anything else is a 500 whose body names only the request id (the
exception text, which may hold paths or data, goes to the log with that id).
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import re
import secrets

from aiohttp import web

from kerasllm.serving.codec import BadRequest

log = logging.getLogger("kerasllm.serving")

REQUEST_ID = "X-Request-Id"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
REQUEST_ID_KEY = web.RequestKey("request_id", str)
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes answer without a token (they reveal nothing)


class HTTPError(Exception):
    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.headers = status, headers


def error_response(status, message, headers=None):
    return web.json_response({"error": message}, status=status, headers=headers)


def request_id(request) -> str:
    return request.get(REQUEST_ID_KEY, "-")


# 32 hex digits: 64 random bits per process, then a counter (uuid4 would read os.urandom per request)
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(secrets.randbelow(1 << 32))


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


def set_request_id(request):
    """Take a sane ``X-Request-Id`` from the client (a proxy's) or make one (``echo_request_id`` sends it back)."""
    given = request.headers.get(REQUEST_ID)
    request[REQUEST_ID_KEY] = given if given is not None and _CLIENT_ID.fullmatch(given) else new_request_id()


async def echo_request_id(request, response):
    """``on_response_prepare`` hook: every answer, streamed ones too, carries the request id."""
    response.headers[REQUEST_ID] = request_id(request)


def bearer_auth(token: str):
    """Middleware refusing requests without ``Authorization: Bearer <token>`` (constant-time compare)."""
    expected = token.encode("utf-8")

    @web.middleware
    async def auth(request, handler):
        if request.path not in OPEN_PATHS:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), expected):
                return error_response(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                                      {"WWW-Authenticate": 'Bearer realm="kerasllm"'})
        return await handler(request)

    return auth


def errors(max_request_bytes: int):
    """The outermost middleware (one layer, not two: each costs every request a coroutine): gives the
    request its id, then turns every failure into ``{"error": ...}`` with a 4xx/5xx status."""
    @web.middleware
    async def errors_middleware(request, handler):
        set_request_id(request)
        rid = {}
        try:
            return await handler(request)
        except HTTPError as error:
            return error_response(error.status, str(error), {**(error.headers or {}), **rid})
        except BadRequest as error:
            return error_response(error.status, str(error), rid)
        except web.HTTPException as error:  # aiohttp's own: 404 route, 405 method, 413 body too large
            if error.status < 400:
                raise
            message = error.text if error.text and not error.text[:3].isdigit() else error.reason
            if error.status == 413:
                message = f"request body larger than the limit of {max_request_bytes} bytes"
            return error_response(error.status, message, rid)
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:
            raise
        except Exception:
            log.exception("internal error on %s %s (request %s)", request.method, request.rel_url.path,
                          request_id(request))
            return error_response(500, f"internal error (request id {request_id(request)}; details in the "
                                       "server log)", rid)

    return errors_middleware
