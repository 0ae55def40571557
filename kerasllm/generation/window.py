"""The one rule for what a language model sees while generating, how prompts are padded, and where
generation stops. Plain integers and NumPy; the Keras ``Decoder``, the SavedModel signatures (with
TF ops passed in as ``minimum``/``maximum``) and the TFLite runtime all call these functions.

Context window (Transformer; ``context_length=None`` for the LSTM, which has no limit):

- The prompt keeps its latest ``context_length`` tokens (``first_start``).
- Generation runs in *segments*. A segment prefills ``history[start:end]`` and then produces
  ``count`` tokens: the first from the prefill's logits, each next one after one cached decode
  step. Token ``t`` is predicted from ``history[start:t]``, at most ``context_length`` tokens, so a
  segment ends when its window is full (``segment_count``).
- The next segment rebuilds the cache from the latest ``keep_after_rebuild`` tokens (half the
  context) and goes on. The plan depends only on the prompt length and the context, not on
  ``max_new_tokens``, so a longer generation starts with the same tokens as a shorter one.

In a batch, rows are left-padded to the longest row and the plan follows the longest row (its
real length is ``width - min(pad)``): while no cropping or rebuild happens every row computes what
it computes alone; after one, the shorter rows see the same window columns as the longest row.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD_MULTIPLE = 16  # the Keras decoder pads prompt windows to a multiple of this (shared compiled functions)
MAX_NEW_TOKENS = 1_000_000


def keep_after_rebuild(context_length):
    return max(1, context_length // 2)


def first_start(prompt_len, context_length, maximum=max):
    """Index of the first prompt token the model sees (0 unless the prompt is longer than the context)."""
    return maximum(0, prompt_len - context_length)


def segment_count(start, end, remaining, context_length, minimum=min):
    """New tokens a segment prefilled with ``history[start:end]`` produces before its window is full."""
    return minimum(remaining, start + context_length - end + 1)


def next_start(end, context_length):
    """Where the window of the segment after one ending at history length ``end`` starts."""
    return end - keep_after_rebuild(context_length)


@dataclass(frozen=True)
class Segment:
    start: int  # first history index (in the longest row's tokens) in the window
    end: int  # history length when the window is prefilled: the window is history[start:end]
    count: int  # new tokens: the first from the prefill, then one decode step each

    @property
    def width(self):
        return self.end - self.start


def segments(prompt_len, max_new_tokens, context_length):
    """The plan for generating ``max_new_tokens`` after a prompt of ``prompt_len`` tokens."""
    if max_new_tokens <= 0:
        return []
    if context_length is None:
        return [Segment(0, prompt_len, max_new_tokens)]
    plan, produced = [], 0
    start, end = first_start(prompt_len, context_length), prompt_len
    while produced < max_new_tokens:
        count = segment_count(start, end, max_new_tokens - produced, context_length)
        plan.append(Segment(start, end, count))
        produced, end = produced + count, end + count
        start = next_start(end, context_length)
    return plan


def window_columns(pad, segment_start, segment_end, reduce_min=np.min, maximum=np.maximum):
    """Which columns of a left-padded history a segment prefills, and the window's pads:
    -> (first column, end column, pad [B]). NumPy by default; the SavedModel passes TF ops."""
    offset = reduce_min(pad)  # columns that are padding in every row
    return offset + segment_start, offset + segment_end, maximum(pad - offset - segment_start, 0)


def window(history, pad, segment, multiple=1):
    """The columns of left-padded ``history`` [B, W] (``pad`` [B] leading pads) that ``segment``
    prefills, left-padded again to a multiple of ``multiple`` -> (tokens [B, w], pad [B])."""
    first, end, w_pad = window_columns(np.asarray(pad), segment.start, segment.end)
    cols = history[:, first:end]
    extra = bucket_extra(cols.shape[1], multiple)
    if extra:
        cols = np.concatenate([np.zeros((cols.shape[0], extra), np.int32), cols], axis=1)
    return np.ascontiguousarray(cols, np.int32), (w_pad + extra).astype(np.int32)


def cache_slots(width, count, multiple=PAD_MULTIPLE):
    """Cache length for a segment prefilling ``width`` columns and producing ``count`` tokens (the
    last one is never written), rounded up so nearby lengths share a compiled shape."""
    return round_up(width + count - 1, multiple)


def round_up(n, m):
    return -(-n // m) * m


def bucket_extra(width, multiple):
    """Pad columns added in front of a window of ``width`` so that nearby widths share one compiled shape."""
    return round_up(width, multiple) - width


def left_pad(rows, multiple=1, pad_id=0):
    """Token lists of any lengths -> (tokens [B, W] left-padded with ``pad_id``, pad [B]); W is the
    longest row rounded up to ``multiple``."""
    width = round_up(max(len(r) for r in rows), multiple)
    tokens = np.full((len(rows), width), pad_id, np.int32)
    pad = np.zeros(len(rows), np.int32)
    for i, r in enumerate(rows):
        tokens[i, width - len(r):] = r
        pad[i] = width - len(r)
    return tokens, pad


# --- stop rule ------------------------------------------------------------------------------
def stop_lengths(new_tokens, stop_ids):
    """Per row, how many of ``new_tokens`` [B, N] to keep: up to and including the first stop id."""
    new_tokens = np.asarray(new_tokens)
    lengths = np.full(new_tokens.shape[0], new_tokens.shape[1], np.int64)
    if stop_ids:
        hit = np.isin(new_tokens, list(stop_ids))
        first = np.argmax(hit, axis=1)
        lengths = np.where(hit.any(axis=1), first + 1, lengths)
    return lengths


def cut_text(text, stops):
    """``text`` cut before the earliest occurrence of any stop string -> (text, stopped)."""
    cut = min((at for at in (text.find(s) for s in stops) if at >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
