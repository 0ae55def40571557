"""A small REST client for the kerasllm server and for TensorFlow Serving (standard library only).

    client = Client("http://127.0.0.1:8501")
    client.predict("sms", ["free prize, call now", "see you at 6"])   # -> predictions, one per text

``predict``, ``classify``, ``status`` and ``metadata`` use TF Serving's REST API, so the same code works
against ``tensorflow_model_server``; ``generate`` and ``query`` are kerasllm's additions.
"""
from __future__ import annotations

import http.client
import json
import threading
from urllib.parse import quote, urlsplit


class ClientError(Exception):
    """The server answered an error: ``status`` is the HTTP code, the message the server's ``error``."""

    def __init__(self, status, message):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class Client:
    def __init__(self, url="http://127.0.0.1:8501", timeout=60.0, token=None, ssl_context=None):
        """``token``: sent as ``Authorization: Bearer <token>`` (a server started with --auth-token-file);
        ``ssl_context`` for an https URL with a private certificate."""
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must look like http://host:port, got {url!r}")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._ssl_context = ssl_context
        self._local = threading.local()  # one keep-alive connection per thread

    # ---- TF Serving's API --------------------------------------------------------------------

    def predict(self, model, instances, signature_name=None, version=None, label=None):
        """Row format: one instance per example (a value for one-input signatures, else a dict of
        named inputs). Returns the ``predictions`` list."""
        if not isinstance(instances, (list, tuple)):
            raise TypeError(f"instances must be a list, got {type(instances).__name__}")
        body = {"instances": list(instances)}
        if signature_name:
            body["signature_name"] = signature_name
        return self._post(model, "predict", body, version, label)["predictions"]

    def predict_columnar(self, model, inputs, signature_name=None, version=None, label=None):
        """Columnar format: ``inputs`` is a dict of named inputs (or one value). Returns ``outputs``."""
        body = {"inputs": inputs}
        if signature_name:
            body["signature_name"] = signature_name
        return self._post(model, "predict", body, version, label)["outputs"]

    def classify(self, model, examples, context=None, signature_name=None, version=None, label=None):
        """Returns, per example, a list of ``[label, score]`` pairs."""
        body = {"examples": list(examples)}
        if context:
            body["context"] = context
        if signature_name:
            body["signature_name"] = signature_name
        return self._post(model, "classify", body, version, label)["result"]

    def status(self, model, version=None, label=None):
        return self._request("GET", self._path(model, version, label))

    def metadata(self, model, version=None, label=None):
        return self._request("GET", self._path(model, version, label) + "/metadata")

    # ---- kerasllm's additions --------------------------------------------------------------

    def generate(self, model, prompts, stream=False, version=None, label=None, **settings):
        """Completions for one prompt (str) or many (list). With ``stream=True`` returns an iterator of
        ``{"index": i, "text": piece}`` events ending with ``{"done": True, "completions": [...]}``."""
        single = isinstance(prompts, str)
        body = {"prompts": [prompts] if single else list(prompts), **settings}
        if stream:
            body["stream"] = True
            return self._stream(self._path(model, version, label) + ":generate", body)
        completions = self._post(model, "generate", body, version, label)["completions"]
        return completions[0] if single else completions

    def query(self, model, texts, k=10, version=None, label=None):
        """Top-k neighbours per text: lists of ``{"id": ..., "score": ...}``, best first."""
        single = isinstance(texts, str)
        body = {"texts": [texts] if single else list(texts), "k": k}
        results = self._post(model, "query", body, version, label)["results"]
        return results[0] if single else results

    # ---- plumbing ----------------------------------------------------------------------------

    def _path(self, model, version=None, label=None):
        path = f"{self._prefix}/v1/models/{quote(str(model), safe='')}"
        if version is not None and label is not None:
            raise ValueError("give version or label, not both")
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label is not None:
            path += f"/labels/{quote(str(label), safe='')}"
        return path

    def _post(self, model, verb, body, version, label):
        return self._request("POST", f"{self._path(model, version, label)}:{verb}", body)

    def _connection(self, fresh=False):
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = self._local.conn = self._new_connection()
        return conn

    def _new_connection(self):
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                               context=self._ssl_context)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _send(self, method, path, body):
        payload = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", **self._auth} if payload is not None else dict(self._auth)
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            conn = self._connection(fresh=attempt == 1)
            try:
                conn.request(method, path, body=payload, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest):
                if attempt == 1:
                    raise

    def _request(self, method, path, body=None):
        response = self._send(method, path, body)
        data = response.read()
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {"error": data[:500].decode("utf-8", "replace")}
        if response.status >= 400:
            message = decoded.get("error", decoded) if isinstance(decoded, dict) else decoded
            raise ClientError(response.status, message)
        return decoded

    def _stream(self, path, body):
        conn = self._new_connection()  # its own connection: the answer is long
        try:
            conn.request("POST", path, body=json.dumps(body).encode("utf-8"),
                         headers={"Content-Type": "application/json", "Accept": "text/event-stream", **self._auth})
            response = conn.getresponse()
            if response.status >= 400:
                data = response.read()
                try:
                    message = json.loads(data).get("error", data)
                except ValueError:
                    message = data[:500]
                raise ClientError(response.status, message)
            for line in response:
                line = line.strip()
                if line.startswith(b"data:"):
                    event = json.loads(line[5:])
                    if "error" in event:
                        raise ClientError(200, event["error"])
                    yield event
        finally:
            conn.close()
