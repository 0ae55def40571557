"""``kerasllm serve``: the command-line wiring for the embedded server (the lead adds it to cli.py)."""
from __future__ import annotations


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
    parser.set_defaults(run=_serve)
    return parser


def _serve(args):
    from tasks.serve import serve

    serve(args.root, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
          batch_timeout_micros=args.batch_timeout_micros, max_enqueued_batches=args.max_enqueued_batches,
          num_batch_threads=args.num_batch_threads, allowed_batch_sizes=_sizes(args.allowed_batch_sizes),
          enable_batching=not args.no_batching, request_timeout=args.request_timeout,
          poll_seconds=args.poll_seconds, max_text_bytes=args.max_text_bytes,
          max_request_bytes=args.max_request_bytes)
    return 0
