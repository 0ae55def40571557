"""``GET /``: a small page to try every served model from a browser.

The page is one self-contained HTML file (``static/try.html``: no external scripts, styles or
fonts). The server writes the list of served models into it; the page's forms then call only the
public REST endpoints (``:classify``, ``:generate`` with streaming, ``:query``), as any client would.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from aiohttp import web

from kerasllm.serving import verbs

MODELS_MARKER = "/*MODELS*/[]"


@lru_cache(maxsize=1)
def _template() -> str:
    return resources.files("kerasllm.serving").joinpath("static", "try.html").read_text(encoding="utf-8")


def describe(models: dict) -> list:
    """``{name: {version: Servable}}`` -> one entry per model with what the page can do with it:
    ``classify`` (with the text input's name and labels), ``generate`` and ``search``."""
    entries = []
    for name in sorted(models):
        servable = models[name][max(models[name])]
        signatures, manifest = servable.signatures, servable.manifest
        entry = {"name": name, "version": servable.version, "kind": manifest.get("kind", ""), "forms": []}
        default = signatures.get("serving_default")
        strings = [i.name for i in default.inputs.values() if i.is_string] if default is not None else []
        if manifest.get("kind") == "classifier" and strings:
            entry["forms"].append("classify")
            entry["text_input"] = strings[0]
            entry["labels"] = [str(label) for label in manifest.get("labels") or []]
        if verbs.GENERATE_SIGNATURE in signatures:
            entry["forms"].append("generate")
        if any(n in signatures for n in verbs.QUERY_SIGNATURES):
            entry["forms"].append("search")
        entries.append(entry)
    return entries


def render(models: dict) -> str:
    # "</" inside a <script> element would end it: JSON allows "<\/" for the same text
    data = json.dumps(describe(models), ensure_ascii=False).replace("</", "<\\/")
    return _template().replace(MODELS_MARKER, data, 1)


def handler(server):
    """The ``GET /`` handler: the page lists ``server.registry.models`` as they are at each request."""

    async def page(request):
        return web.Response(text=render(server.registry.models), content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    return page
