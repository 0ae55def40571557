"""Serving: the embedded TF-Serving-compatible server, dynamic batching, metrics and a client.

``kerasllm.serving.client`` needs only the standard library; the server imports aiohttp and,
when it loads models, TensorFlow.
"""
from kerasllm.serving.client import Client, ClientError

__all__ = ["Client", "ClientError"]
