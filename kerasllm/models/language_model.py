"""``LanguageModel``: a tokenizer plus a Transformer or LSTM LM, with fast generation.

    lm.generate("ROMEO:", max_new_tokens=64)            # greedy; returns prompt + continuation
    lm.generate(["a", "longer prompt"], temperature=0.8, top_k=20, seed=1)
    lm.generate_tokens(ids, 32, stop=[eol_id])          # int32 [B, P + 32]
    for piece in lm.stream("ROMEO:"): print(piece, end="")
    lm.evaluate(text)                                   # {"loss", "perplexity", "bits_per_char"}
    lm.save("my_lm"); kerasllm.load_language_model("my_lm")
"""
from __future__ import annotations

import json
import math
from pathlib import Path


from kerasllm._tf import keras
from kerasllm.generation.decode import Decoder, generate_uncached
from kerasllm.models.language_model_text import GenerationAPI, check_max_new_tokens
from kerasllm.models.lstm_lm import LSTMLM, LSTMConfig
from kerasllm.models.transformer_lm import TransformerConfig, TransformerLM

ARCHITECTURES = {"transformer": (TransformerConfig, TransformerLM), "lstm": (LSTMConfig, LSTMLM)}
CONFIG_FILE = "language_model.json"
WEIGHTS = "weights"


def build_model(architecture, config_dict, seed=0):
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
    config_cls, model_cls = ARCHITECTURES[architecture]
    config = config_cls(**config_dict)
    keras.utils.set_random_seed(seed)
    return model_cls(config).build_weights()


class LanguageModel(GenerationAPI):
    """A trained (or random) language model with its tokenizer. ``kind`` drives ``kerasllm.load``."""

    kind = "language_model"

    def __init__(self, model, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer
        self.architecture = model.architecture
        self.config = model.config
        self._decoder = Decoder(model, self.window_context)
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

    # --- generation (the API itself is ``GenerationAPI``) ------------------------------------
    @property
    def window_context(self):
        """The context length that limits what the model sees while generating (None: the LSTM)."""
        return self.context_length if self.architecture == "transformer" else None

    def _chunks(self, tokens, pad, max_new_tokens, settings, seed, chunk):
        return self._decoder.chunks(tokens, pad, max_new_tokens, settings, seed, chunk)

    def with_draft(self, draft, num_speculative=4, draft_vocab=None):
        """This model generating with speculative decoding: ``draft`` (a small ``LanguageModel`` on the
        same tokenizer, or ``"prompt_lookup"``: copy what followed the last n-gram's earlier occurrence)
        proposes ``num_speculative`` tokens per round; the same generation API and output distribution
        (greedy: the same tokens). ``draft_vocab`` (an int N: the first N token ids, or a list of ids)
        restricts the draft's proposals and makes its head that much cheaper. See
        ``kerasllm.generation.speculative``."""
        from kerasllm.generation.speculative import SpeculativeDecoder
        return SpeculativeDecoder.of(self, draft, num_speculative, draft_vocab)

    def generate_tokens_uncached(self, token_ids, max_new_tokens=64):
        """Greedy generation recomputing the whole window for each token (the reference for tests
        and benchmarks; the same window plan as ``generate_tokens``)."""
        tokens = self._token_rows(token_ids, crop=True)
        return generate_uncached(self.model, tokens, check_max_new_tokens(max_new_tokens), self.window_context)

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise RuntimeError("this LanguageModel has no tokenizer (built by language_model_from_config): "
                               "use generate_tokens")

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
                               seed=0, positions="learned"):
    """An untrained model with random weights and no tokenizer (for benchmarks via ``generate_tokens``)."""
    if architecture == "transformer":
        cfg = dict(vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads or 4, ff=ff or 4 * hidden,
                   context_length=context_length, positions=positions)
    elif architecture == "lstm":
        cfg = dict(vocab_size=vocab_size, hidden=hidden, layers=layers, context_length=context_length)
    else:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
    return LanguageModel(build_model(architecture, cfg, seed))
