"""Every URL the server answers, in one table: add a route by adding a line (handlers take the request)."""
from __future__ import annotations

from kerasllm.serving import page


def routes(server):
    """(method, path, handler) for ``server`` (a ``ModelServer``)."""
    rest = server.rest
    return [
        ("GET", "/v1/models/{tail:.*}", rest.get),
        ("POST", "/v1/models/{tail:.*}", rest.post),
        ("GET", "/monitoring/prometheus/metrics", server.metrics_page),
        ("GET", "/healthz", server.healthz),
        ("GET", "/readyz", server.readyz),
        ("POST", "/v1/completions", server.openai.completions),
        ("GET", "/v1/models", server.openai.models),
        ("GET", "/", page.handler(server)),  # a page to try every served model
    ]


def add_routes(app, server):
    for method, path, handler in routes(server):
        app.router.add_route(method, path, handler)
