"""``LanguageModel``: a tokenizer plus a Transformer or LSTM LM, with fast generation.

    lm.generate("ROMEO:", max_new_tokens=64)            # greedy; returns prompt + continuation
    lm.generate(["a", "longer prompt"], temperature=0.8, top_k=20, seed=1)
    for piece in lm.stream("ROMEO:"): print(piece, end="")
    lm.evaluate(text)                                   # {"loss", "perplexity", "bits_per_char"}
    lm.save("my_lm"); kerasllm.load_language_model("my_lm")
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from kerasllm._tf import keras, tf
from kerasllm.generation.decode import CHUNK, Decoder, _round_up, generate_uncached
from kerasllm.generation.samplers import SamplerSettings
from kerasllm.models.lstm_lm import LSTMLM, LSTMConfig
from kerasllm.models.transformer_lm import TransformerConfig, TransformerLM

ARCHITECTURES = {"transformer": (TransformerConfig, TransformerLM), "lstm": (LSTMConfig, LSTMLM)}
CONFIG_FILE = "language_model.json"
WEIGHTS = "weights"
STREAM_CHUNK = 16  # tokens per compiled call when streaming or watching for stop sequences


def build_model(architecture, config_dict, seed=0):
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
    config_cls, model_cls = ARCHITECTURES[architecture]
    config = config_cls(**config_dict)
    keras.utils.set_random_seed(seed)
    return model_cls(config).build_weights()


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


class LanguageModel:
    """A trained (or random) language model with its tokenizer. ``kind`` drives ``kerasllm.load``."""

    kind = "language_model"

    def __init__(self, model, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer
        self.architecture = model.architecture
        self.config = model.config
        ctx = self.config.context_length if self.architecture == "transformer" else None
        self._decoder = Decoder(model, ctx)
        self._evaluator = None
        self.history = None

    @property
    def context_length(self):
        return self.config.context_length

    @property
    def vocab_size(self):
        return self.config.vocab_size

    @property
    def num_params(self):
        return self.config.num_params

    def __repr__(self):
        return (f"LanguageModel({self.architecture}, {self.num_params:,} parameters, vocab {self.vocab_size}, "
                f"tokenizer {getattr(self.tokenizer, 'kind', None)})")

    # --- token-level API ------------------------------------------------------------------
    def _check_tokens(self, token_ids):
        arr = np.asarray(token_ids)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] < 1 or arr.shape[0] < 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"token_ids must be integers shaped [batch, prompt_len] with prompt_len >= 1, "
                             f"got dtype {arr.dtype} shape {arr.shape}")
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise ValueError(f"token_ids must be in [0, {self.vocab_size}), got values in [{arr.min()}, {arr.max()}]")
        return arr.astype(np.int32)

    @staticmethod
    def _settings(temperature, top_k, top_p, seed):
        return SamplerSettings(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)

    def generate_tokens(self, token_ids, max_new_tokens=64, temperature=0.0, top_k=None, top_p=None, seed=None,
                        stop=None, draft=None, num_speculative=4):
        """int32 [batch, prompt_len] -> int32 [batch, prompt_len + max_new_tokens] (one compiled loop).
        ``stop`` (token-id sequences) is not used at the token level; see ``generate``."""
        tokens = self._check_tokens(token_ids)
        n = _check_int("max_new_tokens", max_new_tokens, 0)
        if n == 0:
            return tokens
        settings = self._settings(temperature, top_k, top_p, seed)
        pad = np.zeros(tokens.shape[0], np.int32)
        if draft is not None:  # speculative decoding: kerasllm/generation/speculative.py
            from kerasllm.generation import speculative
            return speculative.generate_tokens(self, draft, tokens, pad, n, settings, num_speculative)
        return self._decoder.generate(tokens, pad, n, settings)

    def generate_tokens_uncached(self, token_ids, max_new_tokens=64):
        """Greedy generation recomputing the whole sequence each token (the reference for tests/benchmarks)."""
        tokens = self._check_tokens(token_ids)
        ctx = self.context_length if self.architecture == "transformer" else None
        return generate_uncached(self.model, tokens, _check_int("max_new_tokens", max_new_tokens, 0), ctx)

    # --- text API ---------------------------------------------------------------------------
    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise RuntimeError("this LanguageModel has no tokenizer (built by language_model_from_config): "
                               "use generate_tokens")

    def _encode_prompts(self, prompts):
        self._need_tokenizer()
        encoded = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompts[{i}] must be a str, got {type(p).__name__}")
            ids = self.tokenizer.encode(p)
            if len(ids) == 0:  # no BOS token: start an empty prompt from a line break
                ids = self.tokenizer.encode("\n")[-1:] if len(self.tokenizer.encode("\n")) else np.zeros(1, np.int32)
            encoded.append(ids)
        longest = max(len(e) for e in encoded)
        # left-pad to a multiple of 16 so nearby prompt lengths share one compiled function
        width = _round_up(longest, 16)
        if self.architecture == "transformer":
            width = min(width, max(longest, self.context_length // 2))
        tokens = np.zeros((len(encoded), width), np.int32)
        pad = np.zeros(len(encoded), np.int32)
        for i, e in enumerate(encoded):
            tokens[i, width - len(e):] = e
            pad[i] = width - len(e)
        return tokens, pad

    @staticmethod
    def _normalize_prompts(prompt_or_prompts):
        if isinstance(prompt_or_prompts, str):
            return [prompt_or_prompts], True
        if isinstance(prompt_or_prompts, (list, tuple)) and prompt_or_prompts:
            return list(prompt_or_prompts), False
        raise TypeError(f"prompt_or_prompts must be a str or a non-empty list of str, "
                        f"got {type(prompt_or_prompts).__name__}")

    @staticmethod
    def _normalize_stop(stop):
        if stop is None:
            return []
        stops = [stop] if isinstance(stop, str) else list(stop)
        if not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop must be a non-empty str or a list of them, got {stop!r}")
        return stops

    def _text_chunks(self, prompts, max_new_tokens, settings, stops, chunk, decoder=None):
        """Yield, per compiled chunk, the list of new texts so far (cut at stop sequences) and a done flag."""
        tokens, pad = self._encode_prompts(prompts)
        new_ids = [[] for _ in prompts]
        done = [False] * len(prompts)
        texts = [""] * len(prompts)
        for part in (decoder or self._decoder).chunks(tokens, pad, max_new_tokens, settings, chunk=chunk):
            for i, row in enumerate(part):
                if done[i]:
                    continue
                new_ids[i].extend(int(t) for t in row)
                text = self.tokenizer.decode(new_ids[i])
                for s in stops:
                    at = text.find(s)
                    if at >= 0:
                        text, done[i] = text[:at], True
                texts[i] = text
            yield texts, all(done)
            if all(done):
                return

    def generate(self, prompt_or_prompts, max_new_tokens=64, temperature=0.0, top_k=None, top_p=None, seed=None,
                 stop=None, draft=None, num_speculative=4):
        """Continue one prompt (returns a str) or a list of prompts of any lengths (returns a list):
        each result is the prompt followed by up to ``max_new_tokens`` generated tokens, cut before the
        first ``stop`` sequence. Greedy when ``temperature`` is 0; ``seed`` makes sampling repeatable.
        ``draft`` (a small ``LanguageModel`` on the same tokenizer): speculative decoding with
        ``num_speculative`` proposals per round, the same greedy output, faster."""
        prompts, single = self._normalize_prompts(prompt_or_prompts)
        n = _check_int("max_new_tokens", max_new_tokens, 0)
        settings = self._settings(temperature, top_k, top_p, seed)
        stops = self._normalize_stop(stop)
        texts = [""] * len(prompts)
        if n:
            chunk = STREAM_CHUNK * 2 if stops else None
            from kerasllm.generation.speculative import speculative_decoder  # draft: speculative decoding
            decoder = speculative_decoder(self, draft, num_speculative) if draft is not None else None
            for texts, _ in self._text_chunks(prompts, n, settings, stops, chunk, decoder):
                pass
        out = [p + t for p, t in zip(prompts, texts)]
        return out[0] if single else out

    def stream(self, prompt, max_new_tokens=64, temperature=0.0, top_k=None, top_p=None, seed=None, stop=None):
        """Yield the continuation of ``prompt`` piece by piece, as compiled chunks of tokens finish.
        The pieces joined equal ``generate(...)`` minus the prompt."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        n = _check_int("max_new_tokens", max_new_tokens, 0)
        settings = self._settings(temperature, top_k, top_p, seed)
        stops = self._normalize_stop(stop)
        sent = 0
        if not n:
            return
        for texts, done in self._text_chunks([prompt], n, settings, stops, STREAM_CHUNK):
            text = texts[0]
            # hold back a possible stop-sequence prefix and an unfinished multi-byte character
            hold = 0 if done else max([len(s) - 1 for s in stops] + [0])
            safe = len(text) - hold
            while safe > sent and text[safe - 1] == "\ufffd" and not done:
                safe -= 1
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        # (the loop's last chunk is yielded with done or after max_new_tokens)
        if sent < len(texts[0]):
            yield texts[0][sent:]

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(self, text, batch_size=32):
        """Mean next-token cross-entropy of ``text`` in nats per token, perplexity, and bits per character."""
        from kerasllm.training.lm import Evaluator

        self._need_tokenizer()
        if not isinstance(text, str) or not text:
            raise ValueError(f"text must be a non-empty str, got {type(text).__name__}")
        ids = self.encode_corpus(text)
        if len(ids) < 2:
            raise ValueError("text is too short to evaluate: it encodes to fewer than 2 tokens")
        if self._evaluator is None:
            self._evaluator = Evaluator(self.model)
        loss, count = self._evaluator(ids, self.context_length, batch_size)
        chars = len(self.tokenizer.decode(ids[1:]))
        return {"loss": loss, "perplexity": math.exp(loss),
                "bits_per_char": loss * count / max(chars, 1) / math.log(2), "tokens": int(count)}

    def encode_corpus(self, text):
        encode = getattr(self.tokenizer, "encode_long", self.tokenizer.encode)
        return encode(text)

    # --- persistence ------------------------------------------------------------------------
    def get_config(self):
        return {"format": 1, "architecture": self.architecture, "model": self.config.to_dict(),
                "tokenizer": self.tokenizer.get_config() if self.tokenizer is not None else None}

    def save(self, path):
        """Write config + tokenizer (JSON) and weights to the folder ``path`` (replaced atomically)."""
        from kerasllm.export.layout import replace_dir

        def write(tmp):
            with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
                json.dump(self.get_config(), f, ensure_ascii=False)
            self.model.save_weights(str(tmp / WEIGHTS))

        return replace_dir(path, write, CONFIG_FILE, "language model")

    @classmethod
    def from_config(cls, config, seed=0):
        from kerasllm.text.subword import tokenizer_from_config

        model = build_model(config["architecture"], config["model"], seed)
        tok = tokenizer_from_config(config["tokenizer"]) if config.get("tokenizer") else None
        return cls(model, tok)

    # --- export -------------------------------------------------------------------------------
    def export_artifacts(self, directory, formats, **options):
        from kerasllm.export.lm import export_language_model

        return export_language_model(self, directory, formats, **options)


def load_language_model(path):
    """Load a model written by ``LanguageModel.save``."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a saved language model ({CONFIG_FILE} missing)")
    with open(path / CONFIG_FILE, encoding="utf-8") as f:
        config = json.load(f)
    lm = LanguageModel.from_config(config)
    lm.model.load_weights(str(path / WEIGHTS)).expect_partial()
    return lm


def language_model_from_config(architecture, vocab_size, hidden, layers, heads=None, ff=None, context_length=256,
                               seed=0):
    """An untrained model with random weights and no tokenizer (for benchmarks via ``generate_tokens``)."""
    if architecture == "transformer":
        cfg = dict(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads or 4, ff=ff or 4 * hidden,
                   context_length=context_length)
    elif architecture == "lstm":
        cfg = dict(vocab_size=vocab_size, hidden=hidden, layers=layers, context_length=context_length)
    else:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
    return LanguageModel(build_model(architecture, cfg, seed))
