"""The access log: one line per request on the ``kerasllm.access`` logger, in Apache's combined format
followed by the request id and the seconds taken::

    127.0.0.1 - - [30/Nov/2026:19:00:00 +0000] "POST /v1/models/sms:predict HTTP/1.1" 200 73 "-" "curl/8.5" 5f0c...a1 0.002145

Cheap on the event loop, where every request pays for it: aiohttp's generic ``AccessLogger`` parses a
format string into a method per field and goes through ``Logger.info`` (a stack walk to find the
caller, a ``strftime`` per line); here a line is one f-string with the time stamp cached per second,
kept in a list and handed to the logger in bursts (every ``FLUSH_SECONDS`` or ``FLUSH_LINES``), one
record per line, without the caller lookup. Lines reach the log at most ``FLUSH_SECONDS`` late, and
``flush()`` on shutdown writes what is left. Owned by one event loop (not thread-safe).
"""
from __future__ import annotations

import asyncio
import logging
import time

from aiohttp.abc import AbstractAccessLogger

from kerasllm.serving.middleware import REQUEST_ID

FLUSH_SECONDS = 0.05
FLUSH_LINES = 256
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _quoted(value: str) -> str:
    """A header value as Apache writes it inside quotes: ``"`` and ``\\`` escaped, control bytes as ``\\xHH``."""
    if '"' not in value and "\\" not in value and value.isprintable():
        return value
    return "".join(c if c.isprintable() and c not in '"\\' else
                   ("\\" + c if c in '"\\' else f"\\x{ord(c) & 0xFF:02x}") for c in value)


class AccessLogBuffer:
    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self._lines: list[str] = []
        self._timer = None
        self._second = None
        self._stamp = ""

    def stamp(self) -> str:
        """``[30/Nov/2026:19:00:00 +0000]`` (UTC), recomputed once a second."""
        now = int(time.time())
        if now != self._second:
            t = time.gmtime(now)
            self._second = now
            self._stamp = (f"[{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:"
                           f"{t.tm_sec:02d} +0000]")
        return self._stamp

    def add(self, request, response, seconds: float):
        headers = request.headers
        version = request.version
        line = (f'{request.remote or "-"} - - {self.stamp()} "{request.method} {_quoted(request.path_qs)} '
                f'HTTP/{version.major}.{version.minor}" {response.status} {response.body_length} '
                f'"{_quoted(headers.get("Referer", "-"))}" "{_quoted(headers.get("User-Agent", "-"))}" '
                f'{response.headers.get(REQUEST_ID, "-")} {seconds:.6f}')
        self._lines.append(line)
        if len(self._lines) >= FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines = self._lines, []
        logger = self.logger
        for line in lines:  # Logger.info would look up the caller's frame for every line
            logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, line, None, None))

    def logger_class(self):
        """The ``access_log_class`` for aiohttp's ``AppRunner`` (it makes one per connection)."""
        buffer = self

        class AccessLogger(AbstractAccessLogger):
            __slots__ = ()

            @property
            def enabled(self) -> bool:
                return buffer.logger.isEnabledFor(logging.INFO)

            def log(self, request, response, time):
                try:
                    buffer.add(request, response, time)
                except Exception:  # a log line must never fail a request
                    logging.getLogger("kerasllm.serving").exception("cannot write an access log line")

        return AccessLogger
