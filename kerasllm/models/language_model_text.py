"""Text in, text out for the exported-model runtimes (no TensorFlow needed here)."""
from __future__ import annotations

import numpy as np

from kerasllm.generation.samplers import SamplerSettings


def continue_texts(runner, prompt_or_prompts, max_new_tokens, temperature, top_k, top_p, seed, stop):
    """``runner`` has ``tokenizer`` and ``new_tokens_for(list of id arrays, n, settings) -> list of id arrays``."""
    if runner.tokenizer is None:
        raise RuntimeError("this export carries no tokenizer: use generate_tokens")
    single = isinstance(prompt_or_prompts, str)
    prompts = [prompt_or_prompts] if single else list(prompt_or_prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompt_or_prompts must be a str or a non-empty list of str")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    stops = [] if stop is None else ([stop] if isinstance(stop, str) else list(stop))
    settings = SamplerSettings(temperature, top_k, top_p, seed)
    ids = []
    for p in prompts:
        e = runner.tokenizer.encode(p)
        ids.append(e if len(e) else runner.tokenizer.encode("\n")[-1:])
    new = runner.new_tokens_for(ids, max_new_tokens, settings) if max_new_tokens else [np.zeros(0, np.int32)] * len(ids)
    out = []
    for p, n in zip(prompts, new):
        text = runner.tokenizer.decode(n)
        for s in stops:
            at = text.find(s)
            if at >= 0:
                text = text[:at]
        out.append(p + text)
    return out[0] if single else out
