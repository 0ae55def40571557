"""``kerasllm serve``: the command-line wiring for the embedded server (the lead adds it to cli.py)."""
from __future__ import annotations

import argparse
import re

_LABEL = re.compile(r"^(?P<model>[A-Za-z0-9][A-Za-z0-9._-]{0,127}):(?P<label>[A-Za-z0-9][A-Za-z0-9._-]{0,63})="
                    r"(?P<version>[0-9]{1,18})$")


def _label(item):
    """'sms:stable=3' -> ('sms', 'stable', 3)"""
    match = _LABEL.match(item)
    if match is None:
        raise argparse.ArgumentTypeError(f"--version-label expects MODEL:LABEL=VERSION (e.g. sms:stable=3), "
                                         f"got {item!r}")
    return match["model"], match["label"], int(match["version"])


def _sizes(text):
    if text == "auto":
        return "auto"
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--allowed-batch-sizes expects comma-separated integers, got {text!r}") from None


def add_serving_commands(subparsers):
    parser = subparsers.add_parser(
        "serve", help="serve saved_models/ with TF Serving's REST API (and :generate, :query)",
        description="Serve every model under ROOT (ROOT/<name>/<version>/) with TensorFlow Serving's REST API, "
                    "dynamic batching and Prometheus metrics; new versions are picked up as they are exported.")
    parser.add_argument("root", nargs="?", default="saved_models", help="model root folder (default: saved_models)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8501, help="port (default: 8501, TF Serving's REST port)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-micros", type=int, default=2000)
    parser.add_argument("--max-enqueued-batches", type=int, default=128)
    parser.add_argument("--num-batch-threads", type=int, default=2)
    parser.add_argument("--allowed-batch-sizes", type=str, default="auto",
                        help="comma-separated batch sizes to pad to, the last equal to --max-batch-size; 'auto' "
                             "(default): powers of two, so XLA compiles a few shapes; '' for no padding")
    parser.add_argument("--no-batching", action="store_true", help="run each request alone")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="seconds before a request gets 504")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new versions")
    parser.add_argument("--max-text-bytes", type=int, default=65536)
    parser.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024)
    parser.add_argument("--max-rows", type=int, default=1024, help="rows (instances, texts) per request")
    parser.add_argument("--num-versions", type=int, default=1, help="newest versions of each model to serve")
    parser.add_argument("--version-label", action="append", type=_label, metavar="MODEL:LABEL=VERSION",
                        help="name a version for /labels/<label>/ URLs (repeatable), e.g. sms:stable=3")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="seconds to let requests in flight finish on SIGTERM")
    parser.add_argument("--header-timeout", type=float, default=10.0,
                        help="seconds a client has to send a request's head (also the keep-alive idle time)")
    parser.add_argument("--body-timeout", type=float, default=30.0, help="seconds a client has to send a body")
    parser.add_argument("--generation-slots", type=int, default=16,
                        help="cache slots of the continuous-batching generation engine, per language model")
    parser.add_argument("--auth-token-file", help="require 'Authorization: Bearer <token>' (the file's first line)")
    parser.add_argument("--certfile", help="serve HTTPS with this certificate (PEM; with --keyfile)")
    parser.add_argument("--keyfile", help="the certificate's private key (PEM)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without --auth-token-file or TLS")
    parser.set_defaults(run=_serve)
    return parser


def serve_options(args) -> dict:
    """The server options the parsed flags stand for."""
    from kerasllm.serving.server import read_token_file

    if (args.certfile is None) != (args.keyfile is None):
        raise ValueError("--certfile and --keyfile go together")
    labels = {}
    for model, label, version in args.version_label or ():
        labels.setdefault(model, {})[label] = version
    return dict(
        max_rows=args.max_rows, num_versions=args.num_versions, version_labels=labels,
        shutdown_timeout=args.shutdown_timeout, header_timeout=args.header_timeout, body_timeout=args.body_timeout,
        generation_slots=args.generation_slots,
        auth_token=read_token_file(args.auth_token_file) if args.auth_token_file else None,
        certfile=args.certfile, keyfile=args.keyfile, insecure=args.insecure)


def _serve(args):
    from tasks.serve import serve

    serve(args.root, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
          batch_timeout_micros=args.batch_timeout_micros, max_enqueued_batches=args.max_enqueued_batches,
          num_batch_threads=args.num_batch_threads, allowed_batch_sizes=_sizes(args.allowed_batch_sizes),
          enable_batching=not args.no_batching, request_timeout=args.request_timeout,
          poll_seconds=args.poll_seconds, max_text_bytes=args.max_text_bytes,
          max_request_bytes=args.max_request_bytes, **serve_options(args))
    return 0
