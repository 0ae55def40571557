"""Load test for the embedded server (loopback only; bounded in requests and time; stops by itself).

    .venv/bin/python benchmarks/serving_load.py --clients 64 --seconds 30

1. Throughput: N concurrent clients for T seconds per mode against a classifier-shaped XLA SavedModel,
   dynamic batching on vs off in the same run (alternating rounds), one server process per mode:
   requests/s, p50/p99 latency, errors, batch-size histogram (from the server's Prometheus metrics).
2. Hostile input: ``--fuzz`` malformed requests (fuzzed bodies and paths, huge payloads, deep nesting):
   no 5xx, and the server still answers correctly after.
3. Version switch: a new version is published while the clients run: no request fails, answers switch.
4. Generation: ``--gen-clients`` (32) concurrent streaming ``:generate`` clients with mixed prompt (4-60
   characters) and output (8-64 tokens) lengths against a character Transformer (hidden 256, 4 layers,
   context 256; untrained: speed does not depend on the weights), for
   ``--gen-seconds`` per mode, one server process at a time: one request at a time (1 cache slot),
   static batching (32 slots; a batch is admitted only when the previous one has finished) and
   continuous batching (32 slots; requests join at any step). Clients start over the first second (not
   all in one millisecond), then each sends its next request as soon as one ends. Tokens/s, time to first token p50/p99,
   per-token latency p50. Goals: continuous >= 1.5x static throughput, TTFT p99 <= 0.25x static's.

``--root DIR --model NAME`` loads existing exports instead of building the stand-in model (the version
check then reads the status endpoint only). The server runs in a child process (``--pin`` puts it on core 0 and
the load generator on core 1).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

TEXTS = ["free entry in a weekly competition to win cup final tickets, text now", "ok see you at six then",
         "URGENT! your mobile number has won a prize, call to claim", "sorry, I'll call later",
         "hey, are we still on for lunch tomorrow? let me know", "Had your contract mobile 11 months? update free"]
MAX_REQUEST_BYTES = 1024 * 1024
# what each load client sends (set from the command line): a one-text :predict, or a one-prompt :generate
REQUEST = {"verb": "predict", "max_new_tokens": 16}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root, port, batching, args):
    code = ("import sys; from tasks.serve import serve; "
            f"serve({str(root)!r}, port={port}, max_batch_size={args.max_batch_size}, "
            f"batch_timeout_micros={args.batch_timeout_micros}, enable_batching={batching}, "
            f"allowed_batch_sizes={tuple(args.allowed_batch_sizes)!r}, num_batch_threads={args.threads}, "
            f"poll_seconds=0.5, max_request_bytes={MAX_REQUEST_BYTES}, access_log={not args.no_access_log})")
    command = [sys.executable, "-c", code]
    if args.pin:
        command = ["taskset", "-c", "0"] + command
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    log_path = Path(root).parent / f"server-{port}.log"  # a file, not a pipe: a full pipe would stall the server
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    process.log_path = log_path
    return process


async def wait_ready(url, model, process, timeout=180):
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("server exited: " + process.log_path.read_text(errors="replace")[-2000:])
            try:
                async with session.get(f"{url}/v1/models/{model}") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
    raise TimeoutError("server did not come up")


def cpu_seconds(process) -> float:
    """CPU time (user + system, all threads) the server process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def stop_server(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # graceful: finishes requests in flight
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def batch_histogram(session, url, model):
    async with session.get(f"{url}/monitoring/prometheus/metrics") as response:
        text = await response.text()
    counts, previous = {}, 0
    pattern = re.compile(r'kerasllm_batch_size_bucket\{model="' + re.escape(model) +
                         r'",signature="' + ("generate" if REQUEST["verb"] == "generate" else "serving_default")
                         + r'",le="([^"]+)"\} (\d+)')
    for le, cumulative in sorted(pattern.findall(text), key=lambda m: float(m[0].replace("+Inf", "inf"))):
        cumulative = int(cumulative)
        if cumulative > previous:
            counts[le] = cumulative - previous
        previous = cumulative
    return counts


def diff_hist(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
_CLOSE = re.compile(rb"(?i)\r\nconnection: *close")


class _Connection(asyncio.Protocol):
    """One load client: a keep-alive connection sending its next request as soon as an answer is complete.

    A bare ``asyncio.Protocol`` (as wrk or hey do it in C): aiohttp's client, or even asyncio streams, cost
    more CPU per request than the server being measured, and with the server pinned to core 0 the load
    generator shares core 1 with everything else running on the machine: at its fair share of that core a
    heavier client, not the server, set the batching number."""

    def __init__(self, run, index):
        self.run, self.index = run, index
        self.rng = random.Random(index)
        self.transport = None
        self.buffer = bytearray()
        self.started = None  # perf_counter of the request in flight, None when idle

    def connection_made(self, transport):
        self.transport = transport
        self.send()

    def send(self):
        if self.run.stopping():
            self.started = None
            self.transport.close()
            return
        self.buffer.clear()
        self.started = time.perf_counter()
        self.transport.write(self.rng.choice(self.run.requests))

    def data_received(self, data):
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end + 2])
        length = _LENGTH.search(head)
        if length is None or len(self.buffer) < end + 4 + int(length[1]):
            if length is None:
                self.fail("answer without Content-Length")
            return
        body = bytes(self.buffer[end + 4:end + 4 + int(length[1])])
        self.run.answered(self, int(head[9:12]), body, time.perf_counter() - self.started)
        self.started = None
        if _CLOSE.search(head):
            self.transport.close()
        else:
            self.send()

    def fail(self, why):
        if self.started is not None:
            self.run.errors.append(why)
            self.started = None
        self.transport.abort()

    def connection_lost(self, error):
        if self.started is not None:  # lost with a request in flight
            self.run.errors.append(f"connection lost: {error!r}")
            self.started = None
        self.run.closed(self)


class _LoadRun:
    def __init__(self, host, port, requests, clients, deadline, stop, on_answer):
        self.host, self.port, self.requests = host, port, requests
        self.deadline, self.stop, self.on_answer = deadline, stop, on_answer
        self.latencies, self.errors, self.answers = [], [], 0
        self.open = clients
        self.finished = asyncio.get_running_loop().create_future()

    def stopping(self):
        return time.monotonic() >= self.deadline or (self.stop is not None and self.stop.is_set())

    def answered(self, connection, status, body, seconds):
        if status != 200:
            self.errors.append(f"{status}: {body[:200]!r}")
            return
        if self.on_answer is not None:
            try:
                decoded = json.loads(body)
                answer = (decoded["predictions"] if "predictions" in decoded else decoded["completions"])[0]
            except (ValueError, KeyError, IndexError, TypeError) as error:
                self.errors.append(f"bad answer {body[:200]!r}: {error!r}")
                return
            self.on_answer(connection.index, answer)
        elif not (body.startswith(b'{"predictions": [') or body.startswith(b'{"completions": [')):
            self.errors.append(f"unexpected answer {body[:200]!r}")
            return
        self.latencies.append(seconds)
        self.answers += 1

    def closed(self, connection):
        if not self.stopping():  # the server closed it (or an error): reconnect, as a real client would
            asyncio.get_running_loop().create_task(self.connect(connection.index))
            return
        self.open -= 1
        if self.open == 0 and not self.finished.done():
            self.finished.set_result(None)

    async def connect(self, index):
        try:
            await asyncio.get_running_loop().create_connection(lambda: _Connection(self, index), self.host, self.port)
        except OSError as error:
            self.errors.append(repr(error))
            await asyncio.sleep(0.1)
            self.closed(_Connection(self, index))


async def load(url, model, clients, seconds, on_answer=None, stop=None):
    """``clients`` connections, each sending one-text requests back to back for ``seconds`` (or until the
    ``stop`` event is set); a request still unanswered 60 s after that counts as an error."""
    host, port = url.split("//")[1].split(":")
    path = f"/v1/models/{model}:{REQUEST['verb']}"
    if REQUEST["verb"] == "generate":
        # prompts of one length: XLA compiles the decode loop per (batch, prompt width) shape
        bodies = [json.dumps({"prompts": [t[:20]], "max_new_tokens": REQUEST["max_new_tokens"]}).encode()
                  for t in TEXTS]
    else:
        bodies = [json.dumps({"instances": [t]}).encode() for t in TEXTS]
    requests = [b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\n\r\n" + body for body in bodies]
    started = time.monotonic()
    run = _LoadRun(host, int(port), requests, clients, started + seconds, stop, on_answer)
    await asyncio.gather(*(run.connect(i) for i in range(clients)))
    try:
        await asyncio.wait_for(asyncio.shield(run.finished), seconds + 60)
    except asyncio.TimeoutError:
        run.errors.append(f"{run.open} requests unanswered 60 s after the end")
    elapsed = time.monotonic() - started
    return {"requests": run.answers, "elapsed": elapsed, "latencies": run.latencies, "errors": run.errors}


def fuzz_requests(n, model, seed=0):
    rng = random.Random(seed)

    def junk(depth=0):
        kind = rng.randrange(9 if depth < 4 else 5)
        return [lambda: float(f"{rng.random()}e{rng.randint(-5, 400)}"), lambda: rng.randint(-2 ** 70, 2 ** 70),
                lambda: "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(20))),
                lambda: None, lambda: rng.random() < 0.5, lambda: [junk(depth + 1) for _ in range(rng.randrange(4))],
                lambda: {rng.choice(["texts", "x", "b64", "k", "instances"]): junk(depth + 1)},
                lambda: [["a"] * 3] * rng.randrange(3), lambda: {"b64": "".join(rng.choices("AZaz09+/=!", k=8))},
                ][kind]()

    verbs = [":predict", ":classify", ":generate", ":query", "/metadata", "", ":nope"]
    for _ in range(n):
        roll = rng.random()
        method = rng.choice(["POST"] * 6 + ["GET", "PUT", "DELETE"])
        path = f"/v1/models/{model}" + rng.choice(["", "/versions/1", "/versions/99", "/labels/x",
                                                   "/versions/-1", "/versions/1e9"]) + rng.choice(verbs)
        if rng.random() < 0.25:
            noise = "".join(rng.choice("ab/:.%2e0F\\~;&=") for _ in range(rng.randrange(1, 40)))
            path = rng.choice(["/v1/models/", "/v1/models/" + model, "/", "/monitoring/", "/v1/"]) + noise
        if 0.15 <= roll < 0.28 and rng.random() < 0.8:  # oversized bodies at a real endpoint, not just any path
            method, path = "POST", f"/v1/models/{model}:predict"
        if roll < 0.15:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        elif roll < 0.18:
            body = b'{"instances": ["' + b"x" * (MAX_REQUEST_BYTES + rng.randrange(1000)) + b'"]}'  # too big
        elif roll < 0.22:
            body = json.dumps({"instances": ["y" * rng.randrange(60_000, 200_000)]}).encode()  # text too long
        elif roll < 0.25:
            depth = rng.randrange(100, 200_000)
            body = b'{"instances": ' + b"[" * depth + b"]" * depth + b"}"
        elif roll < 0.28:
            body = json.dumps({"instances": ["a"] * rng.randrange(1025, 5000)}).encode()  # too many rows
        else:
            key = rng.choice(["instances", "inputs", "examples", "prompts", "texts", "signature_name"])
            payload = {key: junk(), rng.choice(["signature_name", "k", "max_new_tokens", "stream", "context"]): junk()}
            body = json.dumps(payload, allow_nan=True).encode()
            if rng.random() < 0.3 and body:
                cut = rng.randrange(len(body))
                body = body[:cut] + bytes([rng.randrange(256)]) + body[cut + 1:]
        yield method, path, body


async def fuzz(url, model, n, concurrency=32):
    statuses = {}
    queue = list(fuzz_requests(n, model))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def worker():
            while queue:
                method, path, body = queue.pop()
                try:
                    target = aiohttp.client.URL(url + path, encoded=True)
                    async with session.request(method, target, data=body,
                                               headers={"Content-Type": "application/json"}) as response:
                        await response.read()
                        key = response.status
                except (aiohttp.ClientError, ValueError) as error:
                    key = type(error).__name__  # e.g. the server closed a connection after a 413
                statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        async with session.post(f"{url}/v1/models/{model}:predict", json={"instances": TEXTS}) as response:
            still = response.status == 200 and len((await response.json())["predictions"]) == len(TEXTS)
    return statuses, still


async def version_switch(url, model, clients, seconds, publish_new, limit=120):
    """Load; ``seconds / 4`` in, publish a new version; keep the load on until ``seconds * 3/4`` after the new
    version first answers (at most ``limit`` s in all). Per client, answers must never go back to an older
    version once a newer one answered."""
    seen, last, went_back = [], {}, []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    state = {"new": None, "published": None, "switched": None}

    def switched():
        if state["switched"] is None:
            state["switched"] = time.monotonic() - state["published"]
            loop.call_later(seconds * 3 / 4, stop.set)

    def on_answer(client, answer):
        version = answer.get("version") if isinstance(answer, dict) else None
        seen.append(version)
        if version is not None:
            if version < last.get(client, version):
                went_back.append((client, last[client], version))
            last[client] = version
            if version == state["new"]:
                switched()

    task = asyncio.ensure_future(load(url, model, clients, limit, on_answer=on_answer, stop=stop))
    await asyncio.sleep(seconds / 4)
    state["published"] = time.monotonic()
    state["new"] = publish_new()
    published_at = len(seen)
    async with aiohttp.ClientSession() as session:
        while True:  # models without a version output: the status endpoint tells
            async with session.get(f"{url}/v1/models/{model}") as response:
                status = await response.json()
            served = int(status["model_version_status"][0]["version"])
            if served == state["new"]:
                switched()
            if task.done():
                break
            await asyncio.sleep(0.25)
    return task.result(), seen, published_at, state["new"], served, went_back, state["switched"]


GEN_MODES = {"one at a time": dict(generation_slots=1), "static batching": dict(generation_policy="static"),
             "continuous": dict(generation_policy="continuous")}


def build_language_model(root, context_length):
    """A small character Transformer (a few training steps: the speed does not depend on the weights)."""
    import tasks
    from kerasllm.data import default_corpus

    lm = tasks.train_language_model(default_corpus()[:20000], architecture="transformer", tokenizer="char",
                                    context_length=context_length, steps=2, seed=0, hidden=256, layers=4, heads=4,
                                    ff=1024, batch_size=4, warmup_steps=1, verbose=0)
    tasks.export(lm, root / "lm", formats=("saved_model",))


def start_generation_server(root, port, mode, args):
    options = dict(GEN_MODES[mode])
    options.setdefault("generation_slots", args.gen_slots)
    code = ("from tasks.serve import serve; "
            f"serve({str(root)!r}, port={port}, poll_seconds=0.5, request_timeout=600.0, stream_timeout=600.0, "
            + ", ".join(f"{k}={v!r}" for k, v in options.items()) + ")")
    command = [sys.executable, "-c", code]
    if args.pin:
        command = ["taskset", "-c", "0"] + command
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    log_path = Path(root).parent / f"server-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    process.log_path = log_path
    return process


async def stream_one(session, url, prompt, n):
    """One streaming :generate: (ttft s, per-token s or None, tokens, error or None)."""
    started = time.perf_counter()
    first = last = None
    try:
        async with session.post(f"{url}/v1/models/lm:generate",
                                json={"prompts": [prompt], "max_new_tokens": n, "stream": True}) as response:
            if response.status != 200:
                return None, None, 0, f"HTTP {response.status}"
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return None, None, 0, event["error"]
                if "text" in event:
                    last = time.perf_counter()
                    first = first or last
                if event.get("done"):
                    generated = len(event["completions"][0]) - len(prompt)
                    per_token = (last - first) / (generated - 1) if generated > 1 else None
                    return first - started, per_token, generated, None
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        return None, None, 0, repr(error)
    return None, None, 0, "stream ended without its last event"


async def generation_load(url, clients, seconds, seed=0, stagger=1.0):
    rng = random.Random(seed)
    words = "the model returns a value when the function is called with a list of arguments".split()
    result = {"tokens": 0, "ttft": [], "per_token": [], "errors": [], "requests": 0}
    deadline = time.perf_counter() + seconds
    timeout = aiohttp.ClientTimeout(total=600)

    async def client(index):
        local = random.Random(rng.random())
        await asyncio.sleep(index * stagger / clients)  # arrivals spread over the first `stagger` seconds
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.perf_counter() < deadline:
                prompt = " ".join(local.choice(words) for _ in range(local.randint(1, 12)))[:local.randint(4, 60)]
                ttft, per_token, tokens, error = await stream_one(session, url, prompt, local.randint(8, 64))
                if error is not None:
                    result["errors"].append(error)
                    continue
                result["requests"] += 1
                result["tokens"] += tokens
                result["ttft"].append(ttft)
                if per_token is not None:
                    result["per_token"].append(per_token)

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    result["elapsed"] = time.perf_counter() - started  # the last requests finish after the deadline: counted
    return result


def generation_scenario(work, args):
    """Run the three modes one after another; returns (rows, checks)."""
    root = work / "gen_models"
    started = time.perf_counter()
    build_language_model(root, args.gen_context)
    print(f"built the stand-in language model in {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    for mode in GEN_MODES:
        port = free_port()
        process = start_generation_server(root, port, mode, args)
        url = f"http://127.0.0.1:{port}"
        try:
            async def run():
                await wait_ready(url, "lm", process)
                await generation_load(url, min(args.gen_clients, 4), args.warmup_seconds)  # engine compiled
                return await generation_load(url, args.gen_clients, args.gen_seconds)

            result = asyncio.run(run())
        finally:
            stop_server(process)
        ttft = np.array(result["ttft"] or [np.nan]) * 1e3
        per_token = np.array(result["per_token"] or [np.nan]) * 1e3
        rows.append({"mode": mode, "requests": result["requests"], "tokens/s": result["tokens"] / result["elapsed"],
                     "ttft p50": float(np.percentile(ttft, 50)), "ttft p99": float(np.percentile(ttft, 99)),
                     "token p50": float(np.percentile(per_token, 50)), "errors": len(result["errors"]),
                     "first errors": result["errors"][:3]})
        print(f"  {mode}: {rows[-1]['tokens/s']:.0f} tokens/s, {len(result['errors'])} errors", flush=True)
    return rows


def print_generation(rows, args):
    print(f"generation: {args.gen_clients} streaming clients, {args.gen_seconds:g} s per mode, prompts 4-60 chars, "
          f"8-64 new tokens, character Transformer (context {args.gen_context}, hidden 256, 4 layers), "
          f"{args.gen_slots} cache slots")
    print(f"{'mode':<16} {'requests':>9} {'tokens/s':>9} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} "
          f"{'ms/token p50':>13} {'errors':>7}")
    for row in rows:
        print(f"{row['mode']:<16} {row['requests']:>9} {row['tokens/s']:>9.0f} {row['ttft p50']:>12.1f} "
              f"{row['ttft p99']:>12.1f} {row['token p50']:>13.2f} {row['errors']:>7}")
        if row["errors"]:
            print(f"  first errors: {row['first errors']}")
    by = {row["mode"]: row for row in rows}
    speed = by["continuous"]["tokens/s"] / max(by["static batching"]["tokens/s"], 1e-9)
    ttft = by["continuous"]["ttft p99"] / max(by["static batching"]["ttft p99"], 1e-9)
    alone = by["continuous"]["tokens/s"] / max(by["one at a time"]["tokens/s"], 1e-9)
    print(f"continuous / static: throughput {speed:.2f}x, TTFT p99 {ttft:.2f}x; continuous / one at a time: "
          f"throughput {alone:.2f}x")
    return {"generation: 0 errors": all(r["errors"] == 0 for r in rows),
            "generation: continuous >= 1.5x static throughput": speed >= 1.5,
            "generation: continuous TTFT p99 <= 0.25x static": ttft <= 0.25}


def summarize(name, result, hist=None):
    lat = np.array(result["latencies"]) * 1e3 if result["latencies"] else np.array([np.nan])
    return {"mode": name, "requests": result["requests"], "req/s": result["requests"] / result["elapsed"],
            "p50 ms": float(np.percentile(lat, 50)), "p99 ms": float(np.percentile(lat, 99)),
            "errors": len(result["errors"]), "batches": hist or {},
            "cpu us": result.get("cpu", float("nan")) / max(result["requests"], 1) * 1e6,
            "cpu share": result.get("cpu", float("nan")) / result["elapsed"]}


def classifier_scenario(args):
    """Steps 1-3; returns (checks, server log tails)."""
    from bench_models import write_classifier

    from kerasllm.export.layout import versions

    work = Path(tempfile.mkdtemp(prefix="kerasllm-serving-bench-"))
    processes = []
    try:
        root = work / "saved_models"
        started = time.perf_counter()
        if args.root is None:
            write_classifier(root / args.model, version_tag=1, warmup_sizes=tuple(args.allowed_batch_sizes))
            # the next version is written now, hidden in a .tmp- folder, and renamed into place under load,
            # exactly as the exporter publishes
            staged = write_classifier(root / args.model, version_tag=2, warmup_sizes=tuple(args.allowed_batch_sizes),
                                      publish_now=False)
            print(f"built the stand-in classifier (2 versions) in {time.perf_counter() - started:.1f} s", flush=True)
        else:
            shutil.copytree(args.root, root)  # the version-switch step publishes into the copy, not your folder
            newest = root / args.model / str(versions(root / args.model)[-1])
            staged = root / args.model / ".tmp-staged-next"
            shutil.copytree(newest, staged)
        ports = {"batching": free_port(), "no batching": free_port()}
        servers = {mode: start_server(root, port, mode == "batching", args) for mode, port in ports.items()}
        processes.extend(servers.values())
        urls = {mode: f"http://127.0.0.1:{port}" for mode, port in ports.items()}

        async def run():
            for mode in urls:
                await wait_ready(urls[mode], args.model, servers[mode])
            print(f"servers up; {args.clients} clients, {args.seconds:g} s per mode in {args.rounds} rounds",
                  flush=True)
            totals = {mode: {"requests": 0, "elapsed": 0.0, "latencies": [], "errors": [], "cpu": 0.0} for mode in urls}
            hists = {mode: {} for mode in urls}
            async with aiohttp.ClientSession() as session:
                for mode in urls:  # a short warm-up burst each (connections, first batches)
                    await load(urls[mode], args.model, args.clients, args.warmup_seconds)
                for round_index in range(args.rounds):
                    for mode in (list(urls) if round_index % 2 == 0 else list(reversed(urls))):
                        before = await batch_histogram(session, urls[mode], args.model)
                        cpu_before = cpu_seconds(servers[mode])
                        result = await load(urls[mode], args.model, args.clients, args.seconds / args.rounds)
                        totals[mode]["cpu"] += cpu_seconds(servers[mode]) - cpu_before
                        after = await batch_histogram(session, urls[mode], args.model)
                        for key in ("requests", "elapsed", "latencies", "errors"):
                            totals[mode][key] += result[key]
                        for k, v in diff_hist(after, before).items():
                            hists[mode][k] = hists[mode].get(k, 0) + v
                        print(f"  round {round_index + 1} {mode}: {result['requests'] / result['elapsed']:.0f} req/s,"
                              f" {len(result['errors'])} errors", flush=True)
            rows = [summarize(mode, totals[mode], hists[mode]) for mode in urls]
            fuzz_result = None
            if args.fuzz:
                started = time.perf_counter()
                fuzz_result = await fuzz(urls["batching"], args.model, args.fuzz)
                fuzz_result += (time.perf_counter() - started,)
            switch = None
            if args.switch_seconds:
                def publish_new():
                    number = versions(root / args.model)[-1] + 1
                    os.rename(staged, root / args.model / str(number))
                    return number

                switch = await version_switch(urls["batching"], args.model, args.clients, args.switch_seconds,
                                              publish_new)
            return rows, fuzz_result, switch, totals

        rows, fuzz_result, switch, totals = asyncio.run(run())
    finally:
        logs = {}
        for process in processes:
            stop_server(process)
            logs[process.pid] = process.log_path.read_text(errors="replace")[-3000:]
        shutil.rmtree(work, ignore_errors=True)

    from kerasllm._tf import tf  # versions for the report only

    print()
    print(f"Python {platform.python_version()}, TensorFlow {tf.__version__}, aiohttp {aiohttp.__version__}, "
          f"{os.cpu_count()} cores{' (server pinned to core 0, clients to core 1)' if args.pin else ''}; "
          f"server: max_batch_size={args.max_batch_size}, batch_timeout_micros={args.batch_timeout_micros}, "
          f"allowed_batch_sizes={args.allowed_batch_sizes}, num_batch_threads={args.threads}")
    print(f"{'mode':<12} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU us/req':>10} "
          f"{'CPU busy':>8}  batch sizes (<= bound: count)")
    for row in rows:
        hist = ", ".join(f"<={k}: {v}" for k, v in sorted(row["batches"].items(), key=lambda kv: float(kv[0])))
        print(f"{row['mode']:<12} {row['requests']:>9} {row['req/s']:>8.0f} {row['p50 ms']:>8.2f} "
              f"{row['p99 ms']:>8.2f} {row['errors']:>7} {row['cpu us']:>10.0f} {row['cpu share']:>8.0%}  {hist}")
    ratio = rows[0]["req/s"] / max(rows[1]["req/s"], 1e-9)
    print(f"batching / no batching throughput: {ratio:.2f}x; server CPU per request: "
          f"{rows[1]['cpu us'] / max(rows[0]['cpu us'], 1e-9):.2f}x less with batching (CPU busy below 100% "
          "means the server waited: for the clients or for its core, on a loaded machine)")
    for mode, total in totals.items():
        if total["errors"]:
            print(f"  {mode} first errors: {total['errors'][:3]}")
    checks = {"0 errors under load": all(r["errors"] == 0 for r in rows), "batching >= 3x no batching": ratio >= 3}
    if fuzz_result is not None:
        statuses, still, seconds = fuzz_result
        five = sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500)
        print(f"fuzz: {sum(statuses.values())} hostile requests in {seconds:.1f} s, statuses "
              f"{dict(sorted(statuses.items(), key=lambda kv: str(kv[0])))}; 5xx: {five}; "
              f"still answering correctly: {still}")
        checks["fuzz: 0 5xx and still answering"] = five == 0 and still
    if switch is not None:
        result, seen, published_at, new_version, served, went_back, switch_seconds = switch
        tagged = [v for v in seen if v is not None]
        took = f"{switch_seconds:.1f} s" if switch_seconds is not None else "never"
        print(f"version switch: {result['requests']} requests, {len(result['errors'])} errors; version {new_version} "
              f"published after {published_at} answers, served {took} later (load + warm-up under load); "
              f"served now: {served}; answers by version: "
              f"{ {v: tagged.count(v) for v in sorted(set(tagged))} }; last answer from version "
              f"{tagged[-1] if tagged else 'n/a'}; a client saw an older version after a newer one: {len(went_back)}")
        checks["version switch: 0 errors, new version served, never back"] = (
            not result["errors"] and served == new_version and not went_back
            and (not tagged or tagged[-1] == new_version))
    return checks, logs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0, help="load time per mode (split across rounds)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating on/off rounds")
    parser.add_argument("--fuzz", type=int, default=5000, help="hostile requests (0 to skip)")
    parser.add_argument("--switch-seconds", type=float, default=20.0, help="load time around a new version (0 skips)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-micros", type=int, default=2000)
    parser.add_argument("--allowed-batch-sizes", type=lambda s: [int(x) for x in s.split(",") if x],
                        default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--threads", type=int, default=1, help="num_batch_threads of the server")
    parser.add_argument("--root", type=Path, help="serve existing exports instead of the stand-in classifier")
    parser.add_argument("--model", default="sms")
    parser.add_argument("--verb", choices=("predict", "generate"), default="predict",
                        help="generate: one-prompt :generate requests (needs --root with a language model)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens per :generate request")
    parser.add_argument("--warmup-seconds", type=float, default=2.0,
                        help="load before measuring (XLA compiles each new batch shape once)")
    parser.add_argument("--pin", action="store_true", help="server on core 0, load generator on core 1")
    parser.add_argument("--gen-clients", type=int, default=32, help="streaming clients of the generation scenario")
    parser.add_argument("--gen-seconds", type=float, default=20.0, help="generation load per mode (0 skips)")
    parser.add_argument("--gen-slots", type=int, default=32, help="cache slots (static and continuous modes)")
    parser.add_argument("--gen-context", type=int, default=256, help="context length of the stand-in model")
    parser.add_argument("--skip-classifier", action="store_true", help="only the generation scenario")
    parser.add_argument("--no-access-log", action="store_true", help="servers without per-request log lines")
    args = parser.parse_args()
    if args.clients < 1 or args.clients > 1024 or args.seconds <= 0 or args.seconds > 600 or args.fuzz > 100_000:
        parser.error("keep it bounded: 1-1024 clients, 0-600 s, at most 100,000 fuzz requests")
    if not 1 <= args.gen_clients <= 256 or not 0 <= args.gen_seconds <= 600:
        parser.error("keep it bounded: 1-256 generation clients, 0-600 s")
    if args.verb == "generate" and args.root is None:
        parser.error("--verb generate needs --root with an exported language model (a 'generate' signature)")
    REQUEST.update(verb=args.verb, max_new_tokens=args.max_new_tokens)
    if args.pin:
        os.sched_setaffinity(0, {1})

    checks, logs = {}, {}
    if not args.skip_classifier:
        checks, logs = classifier_scenario(args)
    if args.gen_seconds > 0:
        work = Path(tempfile.mkdtemp(prefix="kerasllm-generation-bench-"))
        try:
            rows = generation_scenario(work, args)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print()
        checks.update(print_generation(rows, args))
    ok = all(checks.values())
    print("; ".join(f"{name}: {'yes' if passed else 'NO'}" for name, passed in checks.items()))
    if not ok:
        for pid, tail in logs.items():
            print(f"--- server {pid} log (end) ---\n{tail}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
