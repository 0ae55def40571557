"""Generation from an exported language model, without the Keras model.

- ``TFLiteLanguageModel``: runs the ``prefill``/``decode`` signatures with ``ai_edge_litert``;
  the cache goes in and out as explicit tensors; sampling in NumPy. Needs only the ``.tflite``
  file (its tokenizer and config are attached to it): ``load_tflite("model.tflite")``.
- ``SavedModelLanguageModel``: calls the XLA-compiled ``generate_tokens`` signature (the whole
  decode loop in one call), tokenizing in Python.
Both have ``generate(prompt_or_prompts, max_new_tokens, temperature, top_k, top_p, seed, stop)``
and ``generate_tokens(token_ids, max_new_tokens, ...)`` like ``LanguageModel``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasllm.generation.samplers import SamplerSettings


def _tokenizer(config):
    from kerasllm.text.subword import tokenizer_from_config

    return tokenizer_from_config(config) if config else None


def sample_numpy(logits, settings: SamplerSettings, rng):
    """NumPy twin of ``kerasllm.generation.samplers.next_token`` (greedy is bit-identical; sampling
    follows the same rules with NumPy's generator)."""
    if settings.greedy:
        return np.argmax(logits, axis=-1).astype(np.int32)
    logits = logits.astype(np.float64) / settings.temperature
    if settings.top_k is not None:
        kth = np.sort(logits, axis=-1)[:, ::-1][:, min(settings.top_k, logits.shape[-1]) - 1][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    if settings.top_p is not None:
        ordered = np.sort(logits, axis=-1)[:, ::-1]
        probs = np.exp(ordered - ordered[:, :1])
        probs /= probs.sum(-1, keepdims=True)
        before = np.cumsum(probs, axis=-1) - probs
        cutoff = np.where(before < settings.top_p, ordered, np.inf).min(-1, keepdims=True)
        logits = np.where(logits < cutoff, -np.inf, logits)
    gumbel = -np.log(-np.log(rng.uniform(1e-20, 1.0, size=logits.shape)))
    return np.argmax(logits + gumbel, axis=-1).astype(np.int32)


class _TextAPI:
    tokenizer = None

    def generate(self, prompt_or_prompts, max_new_tokens=64, temperature=0.0, top_k=None, top_p=None, seed=None,
                 stop=None):
        from kerasllm.models.language_model_text import continue_texts

        return continue_texts(self, prompt_or_prompts, max_new_tokens, temperature, top_k, top_p, seed, stop)


class TFLiteLanguageModel(_TextAPI):
    def __init__(self, tflite_path, config=None, num_threads=1):
        from kerasllm.export.tflite import interpreter, read_attached

        self.path = Path(tflite_path)
        self.config = config if config is not None else read_attached(self.path)
        self.tokenizer = _tokenizer(self.config.get("tokenizer"))
        self.architecture = self.config["architecture"]
        self.context_length = self.config["model"]["context_length"]
        self.vocab_size = self.config["model"]["vocab_size"]
        self.interpreter = interpreter(self.path, num_threads=num_threads)
        self._prefill = self.interpreter.get_signature_runner("prefill")
        self._decode = self.interpreter.get_signature_runner("decode")
        self._n_cache = self.config["cache_tensors"]

    def _one(self, ids, max_new_tokens, settings, rng):
        ids = np.asarray(ids, np.int32)
        limit = self.context_length if self.architecture == "transformer" else None
        keep = limit // 2 if limit else None
        history = list(ids)
        window = ids if keep is None or len(ids) <= max(keep, limit - max_new_tokens) else ids[-keep:]
        out = self._prefill(tokens=window[None])
        logits, cache = out["logits"], {f"cache_{i}": out[f"cache_{i}"] for i in range(self._n_cache)}
        pos = len(window)
        new = []
        for _ in range(max_new_tokens):
            token = sample_numpy(logits, settings, rng)
            new.append(int(token[0]))
            history.append(int(token[0]))
            if limit is not None and pos >= limit:  # context full: rebuild the cache from the last half-context
                window = np.asarray(history[-keep:], np.int32)
                out = self._prefill(tokens=window[None])
                logits = out["logits"]
                cache = {f"cache_{i}": out[f"cache_{i}"] for i in range(self._n_cache)}
                pos = len(window)
                continue
            out = self._decode(token=token, pos=np.int32(pos), **cache)
            logits = out["logits"]
            cache = {f"cache_{i}": out[f"cache_{i}"] for i in range(self._n_cache)}
            pos += 1
        return np.asarray(new, np.int32)

    def generate_tokens(self, token_ids, max_new_tokens=64, temperature=0.0, top_k=None, top_p=None, seed=None,
                        stop=None):
        tokens = _as_batch(token_ids)
        settings = SamplerSettings(temperature, top_k, top_p, seed)
        rng = np.random.default_rng(seed)
        rows = [self._one(row, max_new_tokens, settings, rng) for row in tokens]
        return np.concatenate([tokens, np.stack(rows).reshape(len(rows), -1)], axis=1)

    def new_tokens_for(self, prompts_ids, max_new_tokens, settings):
        rng = np.random.default_rng(settings.seed)
        return [self._one(ids, max_new_tokens, settings, rng) for ids in prompts_ids]


class SavedModelLanguageModel(_TextAPI):
    def __init__(self, version_dir, manifest):
        from kerasllm._tf import tf

        self.path = Path(version_dir)
        self.config = manifest
        self.tokenizer = _tokenizer(manifest.get("tokenizer"))
        self.architecture = manifest["architecture"]
        self.context_length = manifest["model"]["context_length"]
        self.vocab_size = manifest["model"]["vocab_size"]
        self._loaded = tf.saved_model.load(str(self.path))
        self._generate = self._loaded.signatures["generate_tokens"]
        self._tf = tf

    def _run(self, tokens, pad, max_new_tokens, settings):
        """Call the compiled signature until ``max_new_tokens`` exist, rebuilding the cache from the
        latest tokens when the context is full (the same rule as ``Decoder.chunks``)."""
        from kerasllm.export.lm import first_window

        ctx = self.context_length if self.architecture == "transformer" else None
        history, produced, parts = np.asarray(tokens, np.int32), 0, []
        while produced < max_new_tokens:
            keep = first_window(history.shape[1], max_new_tokens - produced, ctx) if not produced else \
                (ctx // 2 if ctx and history.shape[1] > ctx // 2 else None)
            window = history if keep is None else history[:, -keep:]
            w_pad = np.maximum(pad - (history.shape[1] - window.shape[1]), 0).astype(np.int32)
            new = self._call(window, w_pad, max_new_tokens - produced, settings)
            parts.append(new)
            history = np.concatenate([history, new], axis=1)
            produced += new.shape[1]
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(tokens), 0), np.int32)

    def _call(self, tokens, pad, max_new_tokens, settings):
        tf = self._tf
        out = self._generate(tokens=tf.constant(tokens, tf.int32), pad=tf.constant(pad, tf.int32),
                             max_new_tokens=tf.constant(max_new_tokens, tf.int32),
                             temperature=tf.constant(float(settings.temperature), tf.float32),
                             top_k=tf.constant(settings.top_k or 0, tf.int32),
                             top_p=tf.constant(float(settings.top_p or 0.0), tf.float32),
                             seed=tf.constant((settings.seed or 0) % (2 ** 31), tf.int32))
        return out["new_tokens"].numpy()[:, :int(out["count"])]

    def generate_tokens(self, token_ids, max_new_tokens=64, temperature=0.0, top_k=None, top_p=None, seed=None,
                        stop=None):
        tokens = _as_batch(token_ids)
        settings = SamplerSettings(temperature, top_k, top_p, seed)
        new = self._run(tokens, np.zeros(len(tokens), np.int32), max_new_tokens, settings)
        return np.concatenate([tokens, new], axis=1)

    def new_tokens_for(self, prompts_ids, max_new_tokens, settings):
        width = max(len(p) for p in prompts_ids)
        tokens = np.zeros((len(prompts_ids), width), np.int32)
        pad = np.zeros(len(prompts_ids), np.int32)
        for i, p in enumerate(prompts_ids):
            tokens[i, width - len(p):] = p
            pad[i] = width - len(p)
        return list(self._run(tokens, pad, max_new_tokens, settings))


def load(version_dir, manifest, prefer="tflite"):
    from kerasllm.export import TFLITE_FILE

    version_dir = Path(version_dir)
    has_tflite = (version_dir / TFLITE_FILE).is_file()
    has_sm = (version_dir / "saved_model.pb").is_file()
    if has_tflite and (prefer == "tflite" or not has_sm):
        return TFLiteLanguageModel(version_dir / TFLITE_FILE)
    if has_sm:
        return SavedModelLanguageModel(version_dir, manifest)
    raise FileNotFoundError(f"{version_dir} holds neither {TFLITE_FILE} nor a SavedModel")


def load_tflite(path, num_threads=1):
    """A generator from a ``.tflite`` file alone (tokenizer and config come from inside the file)."""
    return TFLiteLanguageModel(path, num_threads=num_threads)


def _as_batch(token_ids):
    """int32 [batch, prompt_len]; one prompt may be given as a flat list."""
    tokens = np.asarray(token_ids, np.int32)
    return tokens[None] if tokens.ndim == 1 else tokens
