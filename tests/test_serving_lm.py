"""Language models behind the server: OpenAI-compatible completions (tested with the real ``openai`` client),
``:generate`` for character and subword models, and continuous batching whose greedy output equals a solo
``generate``."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.test_serving import ServerThread

PROMPTS = ["The return value", "A module is a fu", "T", "x" * 100, "def "]


@pytest.fixture(scope="module")
def subword_lm(lm_text):
    import tasks

    return tasks.train_language_model(lm_text, architecture="transformer", tokenizer="subword", vocab_size=300,
                                      context_length=48, steps=40, seed=0, hidden=32, layers=1, heads=2, ff=64,
                                      batch_size=16, learning_rate=3e-3, warmup_steps=5, verbose=0)


@pytest.fixture(scope="module")
def lm_server(tiny_lm, subword_lm, tiny_lstm, tmp_path_factory):
    import tasks

    root = tmp_path_factory.mktemp("lm_models")
    tasks.export(tiny_lm, root / "chars", formats=("saved_model",))
    tasks.export(subword_lm, root / "words", formats=("saved_model",))
    tasks.export(tiny_lstm, root / "lstm", formats=("saved_model",))
    server = ServerThread(root, generation_slots=4)
    yield server
    server.close()


@pytest.fixture(scope="module")
def openai_client(lm_server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=lm_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_list(openai_client):
    assert sorted(m.id for m in openai_client.models.list()) == ["chars", "lstm", "words"]


@pytest.mark.parametrize("model,lm_fixture", [("chars", "tiny_lm"), ("words", "subword_lm"), ("lstm", "tiny_lstm")])
def test_concurrent_greedy_completions_equal_solo_generate(openai_client, lm_server, request, model, lm_fixture):
    """Requests of mixed lengths join the running slots at different steps (4 slots, 10 requests, some past
    the context; later joiners are prefilled as a group while other rows run): each answer is what the model
    generates for that prompt alone."""
    from kerasllm.generation.window import stop_lengths

    lm = request.getfixturevalue(lm_fixture)
    jobs = [(p, n) for p in PROMPTS for n in (12, 90)]

    def one(job):
        prompt, n = job
        return openai_client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0)

    engines = [e for (name, _), e in lm_server.server._engines.items() if name == model]
    joins = sum(e.group_joins for e in engines)
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(one, jobs))
    assert sum(e.group_joins for e in engines) > joins  # a group of joiners admitted in one prefill
    # the reference: each prompt alone (a batch follows its longest row's window past the context); the
    # window plan does not depend on max_new_tokens, so the first 12 of 90 greedy tokens are the 12-token answer
    eot = getattr(lm.tokenizer, "end_of_text_id", None)
    stops = [] if eot is None else [eot]
    solo = {p: lm.generate_tokens(lm.tokenizer.encode(p)[None], max_new_tokens=90)[0, -90:] for p in PROMPTS}
    for (prompt, n), answer in zip(jobs, answers):
        choice, new = answer.choices[0], solo[prompt][:n]
        keep = int(stop_lengths(new[None], stops)[0])
        assert choice.text == lm.tokenizer.decode(new[:keep]), (prompt, n)
        assert choice.finish_reason == ("stop" if eot in new.tolist() else "length")
        assert answer.usage.completion_tokens == keep
        assert answer.usage.prompt_tokens == len(lm.tokenizer.encode(prompt))
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + keep


def test_streaming_with_the_openai_client(openai_client, tiny_lm):
    stream = openai_client.completions.create(model="chars", prompt="The return value", max_tokens=30,
                                              temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert "The return value" + text == tiny_lm.generate("The return value", max_new_tokens=30)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 30 and not chunks[-1].choices


def test_stream_is_server_sent_events_ending_with_done(lm_server):
    status, data = lm_server.raw("POST", "/v1/completions", json.dumps(
        {"model": "words", "prompt": "The", "max_tokens": 8, "stream": True}).encode())
    assert status == 200
    lines = [line for line in data.decode().split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    pieces = [json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1]]
    assert "The" not in pieces[0] or pieces[0] != "The"  # the prompt is never sent back


def test_sampling_settings_seed_n_and_stop(openai_client, tiny_lm):
    first = openai_client.completions.create(model="chars", prompt="The", max_tokens=40, temperature=0.9,
                                             top_p=0.95, seed=7, n=2)
    again = openai_client.completions.create(model="chars", prompt="The", max_tokens=40, temperature=0.9,
                                             top_p=0.95, seed=7, n=2)
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices]  # a seed repeats its draws
    assert texts[0] != texts[1]  # n samples differ
    # choice i draws batch row i's random numbers: the same text as the language model itself
    assert ["The" + t for t in texts] == tiny_lm.generate(["The"] * 2, max_new_tokens=40, temperature=0.9,
                                                         top_p=0.95, seed=7)
    stop = texts[0][5:7]
    cut = openai_client.completions.create(model="chars", prompt="The", max_tokens=40, temperature=0.9,
                                           top_p=0.95, seed=7, stop=[stop])
    assert cut.choices[0].text == texts[0][:texts[0].find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_completion_errors_are_openai_shaped(openai_client, lm_server):
    import openai

    with pytest.raises(openai.NotFoundError):
        openai_client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as error:
        openai_client.completions.create(model="chars", prompt="x", max_tokens=2, extra_body={"beam": 3})
    assert "beam" in str(error.value)
    status, data = lm_server.raw("POST", "/v1/completions", b'{"model": "chars", "prompt": "x", "n": 0}')
    assert status == 400 and json.loads(data)["error"]["type"] == "invalid_request_error"
    for stream in (False, True):  # as lm.generate: an empty prompt has no start token
        with pytest.raises(openai.BadRequestError, match="empty"):
            openai_client.completions.create(model="chars", prompt="", max_tokens=2, stream=stream)


def test_generate_verb_for_subword_and_character_models(lm_server, subword_lm, tiny_lm):
    for model, lm in (("words", subword_lm), ("chars", tiny_lm)):
        status, data = lm_server.raw("POST", f"/v1/models/{model}:generate", json.dumps(
            {"prompts": ["The", "A module"], "max_new_tokens": 20}).encode())
        assert status == 200, data
        assert json.loads(data)["completions"] == [lm.generate(p, max_new_tokens=20) for p in ("The", "A module")]
        status, data = lm_server.raw("POST", f"/v1/models/{model}:generate", json.dumps(
            {"prompts": ["The"], "max_new_tokens": 20, "stream": True}).encode())
        events = [json.loads(line[6:]) for line in data.decode().splitlines() if line.startswith("data: ")]
        pieces = "".join(e["text"] for e in events if "text" in e)
        assert events[-1]["completions"] == ["The" + pieces] == [lm.generate("The", max_new_tokens=20)]
        status, data = lm_server.raw("POST", f"/v1/models/{model}:generate",
                                     b'{"prompts": ["The"], "max_new_tokens": 2, "beams": 4}')
        assert status == 400 and "beams" in json.loads(data)["error"]


def test_generate_signature_path_seeds_each_request(lm_server, tiny_lm, tmp_path):
    """Without the continuous engine, :generate runs the exported 'generate' signature: a request without a
    seed gets a fresh one (it used to get seed 0, so every sampled answer was the same), a seed repeats, and a
    stream moves the seed on per chunk instead of re-sending prompt + text with the same seed."""
    (tmp_path / "chars").symlink_to(lm_server.server.registry.root / "chars")
    server = ServerThread(tmp_path, continuous_batching=False)
    try:
        def ask(**fields):
            body = {"prompts": ["The"], "max_new_tokens": 16, "temperature": 1.0, **fields}
            status, data = server.raw("POST", "/v1/models/chars:generate", json.dumps(body).encode())
            assert status == 200, data
            if not fields.get("stream"):
                return json.loads(data)["completions"][0]
            events = [json.loads(line[6:]) for line in data.decode().splitlines() if line.startswith("data: ")]
            return events[-1]["completions"][0]

        unseeded = {ask() for _ in range(3)}
        assert len(unseeded) == 3  # 16 sampled characters each: equal only when the seed is
        assert ask(seed=7) == ask(seed=7) == tiny_lm.generate("The", max_new_tokens=16, temperature=1.0, seed=7)
        # chunk k (8 tokens) continues prompt + text so far with seed 7 + 8k
        first = tiny_lm.generate("The", max_new_tokens=8, temperature=1.0, seed=7)
        want = tiny_lm.generate(first, max_new_tokens=8, temperature=1.0, seed=15)
        assert ask(seed=7, stream=True, stream_chunk_tokens=8) == want
        assert len({ask(stream=True, stream_chunk_tokens=8) for _ in range(2)}) == 2
    finally:
        server.close()
