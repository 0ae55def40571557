"""Prometheus text-format metrics (counters and histograms with labels), no extra dependency.

Everything is updated from the event loop thread, so no locks are needed.
"""
from __future__ import annotations

import bisect
import math

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names, values, extra=()) -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)] + list(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


class Counter:
    def __init__(self, name, help_text, labelnames=()):
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self.values = {}

    def inc(self, *labels, amount=1.0):
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, *labels) -> float:
        return self.values.get(labels, 0.0)

    def render(self):
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items(), key=lambda item: tuple(map(str, item[0]))):
            yield f"{self.name}{_labels(self.labelnames, labels)} {value:g}"


class Gauge(Counter):
    def set(self, *labels, value):
        self.values[labels] = float(value)

    def remove(self, *labels):
        self.values.pop(labels, None)

    def render(self):
        for line in super().render():
            yield line.replace(" counter", " gauge") if line.startswith("# TYPE") else line


class Histogram:
    def __init__(self, name, help_text, labelnames=(), buckets=LATENCY_BUCKETS):
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self.buckets = tuple(buckets)
        self.values = {}  # labels -> [per-bucket counts..., +Inf count, sum]

    def observe(self, *labels, value):
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = [0] * (len(self.buckets) + 1) + [0.0]
        row[bisect.bisect_left(self.buckets, value)] += 1
        row[-1] += value

    def counts(self, *labels) -> dict:
        """{upper bound: number of observations in that bucket} (not cumulative), for reports."""
        row = self.values.get(labels)
        if row is None:
            return {}
        bounds = list(self.buckets) + [math.inf]
        return {b: c for b, c in zip(bounds, row[:-1]) if c}

    def render(self):
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, row in sorted(self.values.items(), key=lambda item: tuple(map(str, item[0]))):
            cumulative = 0
            for bound, count in zip(list(self.buckets) + ["+Inf"], row[:-1]):
                cumulative += count
                le = 'le="' + (bound if isinstance(bound, str) else f"{bound:g}") + '"'
                yield f"{self.name}_bucket{_labels(self.labelnames, labels, [le])} {cumulative}"
            yield f"{self.name}_sum{_labels(self.labelnames, labels)} {row[-1]:g}"
            yield f"{self.name}_count{_labels(self.labelnames, labels)} {cumulative}"


class ServerMetrics:
    """The server's metrics: requests, latencies, batch sizes, rejections, loaded versions."""

    def __init__(self):
        self.requests = Counter("kerasllm_requests_total", "HTTP requests by model, signature, method and status code",
                                ("model", "signature", "method", "code"))
        self.latency = Histogram("kerasllm_request_latency_seconds", "Request latency from arrival to answer",
                                 ("model", "signature", "method"))
        self.batch_size = Histogram("kerasllm_batch_size", "Rows per executed batch (before padding)",
                                    ("model", "signature"), buckets=BATCH_BUCKETS)
        self.batch_latency = Histogram("kerasllm_batch_run_seconds", "Time to run one batch through the signature",
                                       ("model", "signature"))
        self.rejected = Counter("kerasllm_queue_rejections_total", "Requests refused because the batch queue was full",
                                ("model", "signature"))
        self.version = Gauge("kerasllm_model_version", "Newest loaded version of each model", ("model",))
        self.load_failures = Counter("kerasllm_model_load_failures_total", "Versions that failed to load", ("model",))

    def render(self) -> str:
        lines = []
        for metric in (self.requests, self.latency, self.batch_size, self.batch_latency, self.rejected, self.version,
                       self.load_failures):
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
