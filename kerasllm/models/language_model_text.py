"""The generation API shared by ``LanguageModel`` (Keras), the SavedModel runtime and the TFLite
runtime: argument checks (all before any compiled call), prompt encoding and padding, the stop
rule, text and streaming. No TensorFlow here; a runtime only implements ``_chunks``.

``generate_tokens(token_ids, max_new_tokens, temperature, top_k, top_p, seed, stop, crop)``
    int32 [B, P] -> int32 [B, P + max_new_tokens]. ``stop``: a token id or a list of them; a row
    ends after the first stop id or the tokenizer's end-of-text id, and its later places hold the
    padding id 0.
``generate(prompt_or_prompts, ...)`` -> prompt + continuation, cut before the first ``stop`` string
    (and at end-of-text). ``stream(prompt, ...)`` yields the same continuation in pieces.

Prompts longer than the context keep their latest ``context_length`` tokens (``crop=True``, the
default) or are an error (``crop=False``). Empty prompts are an error (there is no start token).
Characters a character tokenizer never saw map to its unknown id.
"""
from __future__ import annotations

import numpy as np

from kerasllm.generation.samplers import SamplerSettings, seed_word
from kerasllm.generation.window import MAX_NEW_TOKENS, cut_text, left_pad, stop_lengths

STREAM_CHUNK = 16  # tokens per compiled call when streaming or watching for stop sequences


def check_max_new_tokens(value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be an int in [0, {MAX_NEW_TOKENS:,}], got {value!r}")
    return int(value)


class GenerationAPI:
    """Mixin: needs ``tokenizer`` (or None), ``vocab_size``, ``window_context`` (the context length
    that limits generation, None for the LSTM) and ``_chunks(tokens, pad, n, settings, seed, chunk)``
    yielding int32 [B, m] new tokens following ``kerasllm.generation.window``."""

    tokenizer = None

    # --- checks ---------------------------------------------------------------------------------
    def _check_prompt(self, ids, crop, what):
        if len(ids) == 0:
            raise ValueError(f"{what} is empty: give at least one token (there is no start token)")
        ctx = self.window_context
        if ctx is not None and len(ids) > ctx and not crop:
            raise ValueError(f"{what} has {len(ids)} tokens, more than the context length {ctx}; "
                             f"pass crop=True to keep its latest {ctx} tokens")

    def _token_rows(self, token_ids, crop):
        arr = np.asarray(token_ids)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[0] < 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"token_ids must be integers shaped [batch, prompt_len], got dtype {arr.dtype} "
                             f"shape {arr.shape}")
        self._check_prompt(arr[0], crop, "token_ids")
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise ValueError(f"token_ids must be in [0, {self.vocab_size}), got values in [{arr.min()}, {arr.max()}]")
        return arr.astype(np.int32)

    def _stop_ids(self, stop):
        ids = [] if stop is None else ([stop] if isinstance(stop, (int, np.integer)) else list(stop))
        for s in ids:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < self.vocab_size:
                raise ValueError(f"stop must be a token id or a list of token ids in [0, {self.vocab_size}), "
                                 f"got {stop!r}")
        eot = getattr(self.tokenizer, "end_of_text_id", None)
        return sorted(set(int(s) for s in ids) | ({eot} if eot is not None else set()))

    @staticmethod
    def _stop_strings(stop):
        stops = [] if stop is None else ([stop] if isinstance(stop, str) else list(stop))
        if not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop must be a non-empty str or a list of them, got {stop!r}")
        return stops

    def _encode(self, prompt_or_prompts, crop):
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer: use generate_tokens")
        single = isinstance(prompt_or_prompts, str)
        prompts = [prompt_or_prompts] if single else prompt_or_prompts
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise TypeError(f"prompt_or_prompts must be a str or a non-empty list of str, "
                            f"got {type(prompt_or_prompts).__name__}")
        rows = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompts[{i}] must be a str, got {type(p).__name__}")
            ids = self.tokenizer.encode(p)
            self._check_prompt(ids, crop, "prompt" if single else f"prompts[{i}]")
            rows.append(ids[-self.window_context:] if self.window_context else ids)
        return list(prompts), single, rows

    # --- token level ---------------------------------------------------------------------------
    def generate_tokens(self, token_ids, max_new_tokens=64, temperature=0.0, top_k=None, top_p=None, seed=None,
                        stop=None, crop=True):
        """int32 [batch, prompt_len] -> int32 [batch, prompt_len + max_new_tokens] (see the module doc)."""
        tokens = self._token_rows(token_ids, crop)
        n = check_max_new_tokens(max_new_tokens)
        settings = SamplerSettings(temperature, top_k, top_p, seed)
        stop_ids = self._stop_ids(stop)
        if n == 0:
            return tokens
        parts, alive = [], np.ones(len(tokens), bool)
        chunk = STREAM_CHUNK * 2 if stop_ids else None
        for part in self._chunks(tokens, np.zeros(len(tokens), np.int32), n, settings, seed_word(seed), chunk):
            parts.append(part)
            if stop_ids and (stop_lengths(np.concatenate(parts, 1), stop_ids) < sum(p.shape[1] for p in parts)).all():
                break  # every row has stopped
        new = np.concatenate(parts, 1)
        keep = stop_lengths(new, stop_ids)
        out = np.zeros((len(tokens), n), np.int32)
        for r, k in enumerate(keep):
            out[r, :k] = new[r, :k]
        return np.concatenate([tokens, out], axis=1)

    # --- text -------------------------------------------------------------------------------------
    def _text_chunks(self, rows, n, settings, seed, stops, chunk):
        """Yield, per chunk, the new texts so far (cut at stop strings and end-of-text) and whether all are done."""
        tokens, pad = left_pad(rows)
        stop_ids = self._stop_ids(None)
        new_ids = [[] for _ in rows]
        done, texts = [False] * len(rows), [""] * len(rows)
        for part in self._chunks(tokens, pad, n, settings, seed, chunk):
            for i, row in enumerate(part):
                if done[i]:
                    continue
                keep = int(stop_lengths(row[None], stop_ids)[0])
                new_ids[i].extend(int(t) for t in row[:keep])
                if keep < len(row) or (stop_ids and new_ids[i] and new_ids[i][-1] in stop_ids):
                    done[i] = True
                texts[i], stopped = cut_text(self.tokenizer.decode(new_ids[i]), stops)
                done[i] = done[i] or stopped
            yield texts, all(done)
            if all(done):
                return

    def generate(self, prompt_or_prompts, max_new_tokens=64, temperature=0.0, top_k=None, top_p=None, seed=None,
                 stop=None, crop=True):
        """Continue one prompt (returns a str) or a list of prompts of any lengths (returns a list):
        each result is the prompt followed by up to ``max_new_tokens`` generated tokens, cut before
        the first ``stop`` string. Greedy when ``temperature`` is 0; ``seed`` makes sampling repeatable
        (the same text on every runtime); ``seed=None`` draws a fresh seed."""
        prompts, single, rows = self._encode(prompt_or_prompts, crop)
        n = check_max_new_tokens(max_new_tokens)
        settings = SamplerSettings(temperature, top_k, top_p, seed)
        stops = self._stop_strings(stop)
        texts = [""] * len(prompts)
        if n:
            chunk = STREAM_CHUNK * 2 if stops else None
            for texts, _ in self._text_chunks(rows, n, settings, seed_word(seed), stops, chunk):
                pass
        out = [p + t for p, t in zip(prompts, texts)]
        return out[0] if single else out

    def stream(self, prompt, max_new_tokens=64, temperature=0.0, top_k=None, top_p=None, seed=None, stop=None,
               crop=True):
        """Yield the continuation of ``prompt`` piece by piece, as compiled chunks of tokens finish.
        The pieces joined equal ``generate(...)`` minus the prompt (for the same seed)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        _, _, rows = self._encode(prompt, crop)
        n = check_max_new_tokens(max_new_tokens)
        settings = SamplerSettings(temperature, top_k, top_p, seed)
        stops = self._stop_strings(stop)
        return self._stream(rows, n, settings, seed_word(seed), stops)

    def _stream(self, rows, n, settings, seed, stops):
        sent, text = 0, ""
        if not n:
            return
        for texts, done in self._text_chunks(rows, n, settings, seed, stops, STREAM_CHUNK):
            text = texts[0]
            # hold back a possible stop-string prefix and an unfinished multi-byte character
            hold = 0 if done else max([len(s) - 1 for s in stops] + [0])
            safe = len(text) - hold
            while safe > sent and text[safe - 1] == "\ufffd" and not done:
                safe -= 1
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if sent < len(text):
            yield text[sent:]
