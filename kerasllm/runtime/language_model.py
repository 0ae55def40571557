"""Generation from an exported language model, without the Keras model.

- ``TFLiteLanguageModel``: follows the window plan of ``kerasllm.generation.window``; rows run in
  groups of 8 (``*_8`` signatures; the last group padded with copies of its last row, or ``*_1``).
  Transformer: per segment one ``start_{B}`` invoke (prefill), then one ``step{T}_{B}`` invoke per
  token; the cache stays in the step signature's input tensors and only each step's new keys and
  values are written into it (``_Stepper``); tokens are picked from the logits by the sampler's
  NumPy ops (the rule and random numbers of the XLA loop). LSTM: chunks of the sampler's loop as a
  TFLite WHILE op (``generate_*``/``resume_*``, its small state passed along). Files exported
  before these signatures existed fall back to the one-row ``prefill``/``decode`` signatures
  (cache through NumPy). Needs only the ``.tflite`` file (its tokenizer and config are attached to
  it): ``load_tflite("model.tflite")``.
- ``SavedModelLanguageModel``: calls the SavedModel's ``generate_tokens`` signature once (the
  whole plan runs in the graph, each segment one XLA call), tokenizing in Python.
Both have the API of ``kerasllm.models.language_model_text.GenerationAPI`` (``generate``,
``generate_tokens``, ``stream``), like ``LanguageModel``, and give the same tokens for the same seed.
Not thread-safe: a TFLite interpreter runs one call at a time (use one runtime per thread).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasllm.generation.samplers import NUMPY
from kerasllm.generation.window import segments, window
from kerasllm.models.language_model_text import GenerationAPI


def _tokenizer(config):
    from kerasllm.text.subword import tokenizer_from_config

    return tokenizer_from_config(config) if config else None


class _Exported(GenerationAPI):
    def _describe(self, config):
        self.config = config
        self.tokenizer = _tokenizer(config.get("tokenizer"))
        self.architecture = config["architecture"]
        self.context_length = config["model"]["context_length"]
        self.vocab_size = config["model"]["vocab_size"]
        self.window_context = self.context_length if self.architecture == "transformer" else None


class TFLiteLanguageModel(_Exported):
    def __init__(self, tflite_path, config=None, num_threads=1):
        from kerasllm.export.tflite import interpreter, read_attached

        self.path = Path(tflite_path)
        self._describe(config if config is not None else read_attached(self.path))
        self.interpreter = interpreter(self.path, num_threads=num_threads)
        self._prefill = self.interpreter.get_signature_runner("prefill")
        self._decode = self.interpreter.get_signature_runner("decode")
        self._n_cache = self.config["cache_tensors"]
        self._batches = sorted(self.config.get("generate_batches", ()))
        if self.window_context is not None and not self.config.get("step_lengths"):
            self._batches = []  # a Transformer file from before the start/step signatures: rows one by one
        self._chunk = self.config.get("generate_chunk")
        self._runners = {}

    def prefill(self, tokens, pad):
        """tokens [B, W] left-padded -> (logits [B, V], cache dict)."""
        out = self._prefill(tokens=np.asarray(tokens, np.int32), pad=np.asarray(pad, np.int32))
        return out["logits"], {f"cache_{i}": out[f"cache_{i}"] for i in range(self._n_cache)}

    def decode(self, token, pos, pad, cache):
        """token [B] at cache slot ``pos`` -> (logits [B, V], cache dict)."""
        out = self._decode(token=np.asarray(token, np.int32), pos=np.int32(pos), pad=np.asarray(pad, np.int32),
                           **cache)
        return out["logits"], {f"cache_{i}": out[f"cache_{i}"] for i in range(self._n_cache)}

    def _chunks(self, tokens, pad, max_new_tokens, settings, seed, chunk):
        history, pad = np.asarray(tokens, np.int32), np.asarray(pad, np.int32)
        step = 0
        for seg in segments(history.shape[1] - int(pad.min()), max_new_tokens, self.window_context):
            win, w_pad = window(history, pad, seg)
            if self._batches:
                group = self._batches[-1]  # rows per invoke: the largest batch signature
                new = np.concatenate([self._segment(win[g:g + group], w_pad[g:g + group], seg.count, step, seed,
                                                    settings, g) for g in range(0, len(win), group)])
            else:
                new = self._segment_per_row(win, w_pad, seg.count, step, seed, settings)
            step += seg.count
            history = np.concatenate([history, new], 1)
            for at in range(0, seg.count, chunk or seg.count):
                yield new[:, at:at + (chunk or seg.count)]

    def _segment(self, tokens, pad, count, step, seed, sampler_settings, first_row):
        """One group of rows: ``count`` new tokens [rows, count] (Transformer: one ``start`` invoke and
        one ``step`` invoke per token; LSTM: one invoke per chunk)."""
        rows = len(tokens)
        batch = min(b for b in self._batches if b >= rows)
        extra = np.repeat(np.arange(rows)[-1:], batch - rows)  # pad rows: copies of the last row, dropped after
        tokens, pad = np.concatenate([tokens, tokens[extra]]), np.concatenate([pad, pad[extra]])
        width = tokens.shape[1]
        if self.window_context is not None:
            def pick(logits, i):
                return sampler.pick(logits, seed, step + i, params, NUMPY, first_row=first_row).astype(np.int32)

            sampler, params = sampler_settings.sampler(), sampler_settings.params()
            return self._segment_steps(batch, tokens, pad, count, pick)[:rows]
        temperature, top_k, top_p = sampler_settings.params()
        settings = dict(pad=pad, seed=np.int32(seed), temperature=temperature, top_k=top_k, top_p=top_p,
                        first_row=np.int32(first_row))
        parts, done, state = [], 0, None
        while done < count:  # LSTM: chunks of ``generate_chunk`` tokens, the state carried from one to the next
            n = min(count - done, self._chunk)
            if state is None:
                out = self._runner(f"generate_{batch}")(tokens=tokens, count=np.int32(n), step0=np.int32(step),
                                                        **settings)
            else:
                out = self._runner(f"resume_{batch}")(token=out["last"], index=np.int32(width + done - 1),
                                                      count=np.int32(n), step0=np.int32(step + done), **settings,
                                                      **state)
            state = {f"cache_{i}": out[f"cache_{i}"] for i in range(self._n_cache)}
            parts.append(out["new_tokens"][:rows, :n])
            done += n
        return np.concatenate(parts, 1)

    def _segment_steps(self, batch, tokens, pad, count, pick):
        """Transformer: ``start_{batch}`` prefills; then one invoke of ``step{T}_{batch}`` per token.
        The cache is an input of the step signature that stays in the interpreter: a step only
        reads it and returns the new keys and values, which are written into it here (a few floats
        per layer; no step copies the whole cache). T grows with the filled slots
        (``step_length``): when the cache is full, it moves once to the next step signature's
        inputs, so a step attends over few more slots than are filled. Tokens are picked from the
        returned logits by the sampler's NumPy ops (``pick(logits, i)``: the rule, and the random
        numbers, of the XLA loop; greedy decoding runs no vocabulary sort)."""
        from kerasllm.export.lm import step_length

        lengths = self.config["step_lengths"]
        index = tokens.shape[1]  # the cache slot of the token being decoded
        # the prefill fills slots below ``index``; a step at ``index`` needs one more (none when count is 1)
        length = step_length(lengths, index if count > 1 else index - 1)
        out = self._runner(f"start_{batch}")(tokens=tokens, pad=pad, cache_slots=np.zeros(length, np.int32))
        stepper = self._stepper(f"step{length}_{batch}")
        stepper.load([out[name] for name in stepper.cache], pad)
        new = np.empty((len(tokens), count), np.int32)
        new[:, 0] = token = pick(out["logits"], 0)
        for i in range(1, count):
            if index >= length:  # full: the cache moves to the next step signature
                length = step_length(lengths, index)
                stepper = self._stepper(f"step{length}_{batch}").load(stepper.views, pad)
            new[:, i] = token = pick(stepper.run(token, index, write=i < count - 1), i)
            index += 1
        return new

    def _stepper(self, name):
        if name not in self._runners:
            self._runners[name] = _Stepper(self.interpreter, name, self._n_cache)
        return self._runners[name]

    def _runner(self, name):
        if name not in self._runners:
            self._runners[name] = self.interpreter.get_signature_runner(name)
        return self._runners[name]

    def _segment_per_row(self, win, w_pad, count, step, seed, settings):
        """Files without ``generate_*`` signatures: rows one by one through prefill/decode (the
        window columns and pads of the batched plan), sampling in NumPy."""
        sampler, params = settings.sampler(), settings.params()
        new = np.zeros((len(win), count), np.int32)
        for r in range(len(win)):
            logits, cache = self.prefill(win[r:r + 1], w_pad[r:r + 1])
            for i in range(count):
                if i:
                    logits, cache = self.decode(new[r, i - 1:i], win.shape[1] + i - 1, w_pad[r:r + 1], cache)
                new[r, i] = sampler.pick(logits, seed, step + i, params, NUMPY, first_row=r)[0]
        return new


class _Stepper:
    """Runs one ``step{T}_{B}`` signature through the interpreter's own calls (a SignatureRunner
    sets every input on every call): the cache and the pads are set when a window segment starts
    or the cache moves here from a shorter step signature (``load``); a step sets token and slot,
    invokes, and writes the step's new keys/values into the cache inputs in place."""

    def __init__(self, interpreter, name, n_cache):
        self.wrapper = w = interpreter._interpreter
        self.subgraph = sub = w.GetSubgraphIndexFromSignature(name)
        signature = interpreter._get_full_signature_list()[name]
        self.inputs, self.outputs = signature["inputs"], signature["outputs"]
        self.cache = [f"cache_{i}" for i in range(n_cache)]
        w.AllocateTensors(sub)
        # views of the inputs and outputs, valid while the step signature is not re-allocated (its
        # shapes are static: it never is after the constructor); through them a step skips
        # SetTensor's checks and GetTensor's copy (measured: Python per step 4.7 -> 3.2 us at tiny
        # batch 1, 27 -> 15 us at small batch 8)
        self.views = [w.tensor(w, self.inputs[name], sub) for name in self.cache]
        self.token = w.tensor(w, self.inputs["token"], sub)  # (a scalar input has no view: SetTensor)
        entries = w.tensor(w, self.outputs["entries"], sub)
        # (cache view, the step's new entry for it): keys transposed [B * heads, head_dim, T] take
        # the entry as column ``index``, values [B * heads, T, head_dim] as row ``index``
        self.keys = [(view, entries[i]) for i, view in enumerate(self.views) if i % 2 == 0]
        self.values = [(view, entries[i]) for i, view in enumerate(self.views) if i % 2]
        self.logits = w.tensor(w, self.outputs["logits"], sub)

    def load(self, cache, pad):
        """Sets the cache (keys [B * heads, head_dim, t], values [B * heads, t, head_dim], t <= T:
        the slots from t on are zeroed; they are masked) and the pads -> self."""
        for i, (view, value) in enumerate(zip(self.views, cache)):
            t = value.shape[2 - i % 2]
            if i % 2:
                view[:, :t], view[:, t:] = value, 0.0
            else:
                view[:, :, :t], view[:, :, t:] = value, 0.0
        self.wrapper.SetTensor(self.inputs["pad"], np.asarray(pad, np.int32), self.subgraph)
        return self

    def run(self, token, index, write=True):
        """Decode ``token`` [B] at cache slot ``index`` -> logits [B, V], a view of the output that
        the next invoke overwrites."""
        self.token[:] = token
        self.wrapper.SetTensor(self.inputs["index"], np.int32(index), self.subgraph)
        self.wrapper.Invoke(self.subgraph)
        if write:
            for view, entry in self.keys:
                view[:, :, index] = entry
            for view, entry in self.values:
                view[:, index] = entry
        return self.logits


class SavedModelLanguageModel(_Exported):
    def __init__(self, version_dir, manifest):
        from kerasllm._tf import tf

        self.path = Path(version_dir)
        self._describe(manifest)
        self._loaded = tf.saved_model.load(str(self.path))
        self._generate = self._loaded.signatures["generate_tokens"]
        self._tf = tf

    def _chunks(self, tokens, pad, max_new_tokens, settings, seed, chunk):
        tf = self._tf
        temperature, top_k, top_p = settings.params()
        out = self._generate(tokens=tf.constant(tokens, tf.int32), pad=tf.constant(pad, tf.int32),
                             max_new_tokens=tf.constant(max_new_tokens, tf.int32),
                             temperature=tf.constant(temperature), top_k=tf.constant(top_k),
                             top_p=tf.constant(top_p), seed=tf.constant(seed, tf.int32))
        yield out["new_tokens"].numpy()


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
