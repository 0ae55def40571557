"""Prometheus text-format metrics (counters and histograms with labels), no extra dependency.

Safe under threads: each metric takes its own lock (the event loop, the batch threads and the model
poller all write). Counts are Python integers and print exactly (1234567, not 1.23457e+06); float
values print with ``repr`` (shortest exact form).
"""
from __future__ import annotations

import bisect
import math
import threading

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names, values, extra=()) -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)] + list(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Counter:
    def __init__(self, name, help_text, labelnames=()):
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self.values = {}
        self._lock = threading.Lock()

    def inc(self, *labels, amount=1):
        with self._lock:
            self.values[labels] = self.values.get(labels, 0) + amount

    def get(self, *labels):
        return self.values.get(labels, 0)

    def remove_matching(self, position: int, value):
        """Drop every series whose label at ``position`` equals ``value`` (a model that is gone)."""
        with self._lock:
            for labels in [k for k in self.values if len(k) > position and k[position] == value]:
                del self.values[labels]

    def render(self):
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        with self._lock:
            items = sorted(self.values.items(), key=lambda item: tuple(map(str, item[0])))
        for labels, value in items:
            yield f"{self.name}{_labels(self.labelnames, labels)} {_number(value)}"


class Gauge(Counter):
    def set(self, *labels, value):
        with self._lock:
            self.values[labels] = value

    def remove(self, *labels):
        with self._lock:
            self.values.pop(labels, None)

    def render(self):
        for line in super().render():
            yield line.replace(" counter", " gauge") if line.startswith("# TYPE") else line


class Histogram:
    def __init__(self, name, help_text, labelnames=(), buckets=LATENCY_BUCKETS):
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self.buckets = tuple(buckets)
        self.values = {}  # labels -> [per-bucket counts..., +Inf count, sum]
        self._lock = threading.Lock()

    def observe(self, *labels, value):
        with self._lock:
            row = self.values.get(labels)
            if row is None:
                row = self.values[labels] = [0] * (len(self.buckets) + 1) + [0.0]
            row[bisect.bisect_left(self.buckets, value)] += 1
            row[-1] += value

    def remove_matching(self, position: int, value):
        with self._lock:
            for labels in [k for k in self.values if len(k) > position and k[position] == value]:
                del self.values[labels]

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
        with self._lock:
            items = [(k, list(v)) for k, v in sorted(self.values.items(), key=lambda item: tuple(map(str, item[0])))]
        for labels, row in items:
            cumulative = 0
            for bound, count in zip(list(self.buckets) + ["+Inf"], row[:-1]):
                cumulative += count
                le = 'le="' + (bound if isinstance(bound, str) else f"{bound:g}") + '"'
                yield f"{self.name}_bucket{_labels(self.labelnames, labels, [le])} {cumulative}"
            yield f"{self.name}_sum{_labels(self.labelnames, labels)} {_number(row[-1])}"
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
        self.generated_tokens = Counter("kerasllm_generated_tokens_total", "Tokens generated", ("model",))
        self.active_slots = Gauge("kerasllm_generation_active_slots", "Cache slots decoding now", ("model",))

    def all(self):
        return (self.requests, self.latency, self.batch_size, self.batch_latency, self.rejected, self.version,
                self.load_failures, self.generated_tokens, self.active_slots)

    def model_removed(self, name):
        """A model that is no longer served: its gauges go (a gauge of a gone model would read as current);
        its counters stay, as Prometheus counters must not go back."""
        for metric in (self.version, self.active_slots):
            metric.remove_matching(0, name)

    def render(self) -> str:
        lines = []
        for metric in self.all():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
