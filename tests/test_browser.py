"""The try-it page and the report in a real browser: the distribution's headless Chromium, driven by
Playwright, against a server this test starts on the quickstart's models (``kerasllm quickstart --quick``)."""
import asyncio
import shutil
import threading
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():  # .ci/run installs it; a missing browser is a failure, not a skip
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (as .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(quickstart_run):
    """A ModelServer on its own event loop and thread, bound to a free loopback port."""
    from kerasllm.serving.server import ModelServer

    done, models, _ = quickstart_run
    assert done.returncode == 0, done.stderr[-2000:]
    # --quick writes no warm-up records, so each first request compiles (XLA); on a loaded machine that
    # can outlast the default 30 s request timeout
    server = ModelServer(models, request_timeout=600)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    host, port = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(300)
    yield server, f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture
def page(browser):
    page = browser.new_page()
    external = []
    page.on("request", lambda request: external.append(request.url)
            if not request.url.startswith(("http://127.0.0.1", "data:", "file:")) else None)
    yield page
    page.close()
    assert external == [], f"the page fetched outside assets: {external}"


def test_page_lists_every_served_model_and_skips_the_tflite_only_export(server, page):
    model_server, url = server
    assert model_server.registry.failures == {}, "the TFLite-only -small export must not be a load failure"
    page.goto(url + "/")
    listed = page.eval_on_selector_all("section[data-model]", "nodes => nodes.map(n => n.dataset.model)")
    assert sorted(listed) == sorted(model_server.registry.models)
    assert {"python-docs-topics", "python-docs-lm", "python-docs-search"} <= set(listed)
    assert "python-docs-topics-small" not in listed


def test_classify_form_shows_labels_and_probabilities(server, page):
    _, url = server
    page.goto(url + "/")
    form = page.locator("section[data-model='python-docs-topics'] form.classify")
    form.locator("textarea").fill("set a breakpoint in the debugger\nstrip the spaces from a string")
    form.locator("button").click()
    rows = form.locator("table.result tr")
    rows.nth(2).wait_for(timeout=600000)
    labels = form.locator("td.label").all_inner_texts()
    assert len(labels) == 2 and all(label in ("debugger", "formatstrings", "import", "string-methods",
                                              "typesmapping") for label in labels)
    probabilities = form.locator(".prob").first.inner_text()
    assert probabilities.endswith("%") and labels[0] in probabilities


def test_generate_form_streams_tokens(server, page):
    _, url = server
    page.goto(url + "/")
    form = page.locator("section[data-model='python-docs-lm'] form.generate")
    form.locator("input[name=prompt]").fill("The ")
    form.locator("input[name=max_new_tokens]").fill("12")
    form.locator("input[name=stream_chunk_tokens]").fill("4")
    form.locator("button").click()
    # each new prompt length compiles the exported generate signature once (seconds each, more under load)
    page.wait_for_function("() => document.querySelector(\"section[data-model='python-docs-lm'] form\")"
                           ".dataset.done === 'true'", timeout=600000)
    pieces = form.locator(".output .piece").all_inner_texts()
    assert len(pieces) >= 3, "12 tokens in chunks of 4 arrive as separate pieces"
    assert form.locator(".output").inner_text().startswith("The ") and len("".join(pieces)) == 12
    assert not form.locator(".error").count()


def test_search_form_answers_with_scores(server, page):
    _, url = server
    page.goto(url + "/")
    form = page.locator("section[data-model='python-docs-search'] form.search")
    form.locator("input[name=query]").fill("split a string into a list of words")
    form.locator("input[name=k]").fill("3")
    form.locator("button").click()
    form.locator("table.result tr").nth(3).wait_for(timeout=600000)
    scores = [float(s) for s in form.locator("table.result tr td:nth-child(2)").all_inner_texts()]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1.0001


def test_a_bad_request_shows_the_servers_error(server, page):
    _, url = server
    page.goto(url + "/")
    form = page.locator("section[data-model='python-docs-lm'] form.generate")
    form.locator("input[name=max_new_tokens]").fill("-1")
    form.locator("button").click()
    form.locator(".error").wait_for(timeout=600000)
    assert "max_new_tokens" in form.locator(".error").inner_text()


def test_report_html_is_self_contained_and_every_image_loads(quickstart_run, page, tmp_path):
    _, _, report = quickstart_run
    alone = tmp_path / "mailed.html"  # no PNGs beside it: as it arrives by mail
    alone.write_bytes((report / "report.html").read_bytes())
    page.goto(alone.as_uri())
    images = page.eval_on_selector_all("img", "nodes => nodes.map(n => [n.complete, n.naturalWidth, n.alt])")
    assert len(images) >= 4
    assert all(complete and width > 100 for complete, width, _ in images), images
