"""Serve task: the embedded TF-Serving-compatible server over ``saved_models/``."""


def serve(root="saved_models", host="127.0.0.1", port=8501, max_batch_size=32, batch_timeout_micros=2000,
          allowed_batch_sizes="auto", **options):
    """Serve every model under ``root`` (``<root>/<name>/<version>/``) with TF Serving's REST API until
    Ctrl-C; new versions are picked up as they appear. Blocks. ``allowed_batch_sizes="auto"`` pads batches
    to powers of two (XLA compiles once per size; ``()`` for no padding). Other options: see
    ``kerasllm.serving.server.ServerOptions`` (``max_enqueued_batches``, ``num_batch_threads``, ``enable_batching``,
    ``request_timeout``, ``max_text_bytes``, ``max_rows``, ``version_labels``, ``auth_token``, ``certfile``/``keyfile``,
    ``insecure``, ``shutdown_timeout``, ``generation_slots``, ...)."""
    from kerasllm.serving.server import serve as _serve

    _serve(root, host=host, port=port, max_batch_size=max_batch_size,
           batch_timeout_micros=batch_timeout_micros, allowed_batch_sizes=allowed_batch_sizes, **options)
