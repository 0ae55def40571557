"""kerasllm's verbs beyond TF Serving's predict, mapped onto signatures (no HTTP here).

- ``:classify`` (TF Serving's JSON shape ``{"examples": [...], "context": {...}}`` -> ``{"result":
  [[[label, score], ...], ...]}``), here on any signature whose inputs the examples name, with class
  scores from ``classes``+``scores`` outputs, or ``scores``/``probabilities`` with names from the
  manifest's ``labels``.
- ``:generate`` on a ``generate`` signature (string prompts in, strings out; other inputs such as
  ``max_new_tokens`` or ``temperature`` come from request fields of the same name).
- ``:query`` on a top-k signature (``query``, ``top_k``, ``topk`` or ``search``): texts in, ids and scores out.
"""
from __future__ import annotations

import numpy as np

from kerasllm.serving.codec import BadRequest, _strings, check_shape, parse_instances, to_array

GENERATE_SIGNATURE = "generate"
QUERY_SIGNATURES = ("query", "top_k", "topk", "search")
TEXT_INPUT_NAMES = ("prompts", "prompt", "texts", "text", "queries", "inputs")
# used when the request leaves out a signature input of this name
# the language model's own defaults (greedy; top_k 0 and top_p 1.0 mean "off")
GENERATE_DEFAULTS = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "top_p": 1.0}  # seed: streaming._request_seed
QUERY_DEFAULTS = {"k": 10, "top_k": 10}
ALIASES = {"top_k": "k", "k": "top_k", "prompt_texts": "prompts"}


def find_signature(servable, names, verb):
    for name in names:
        if name in servable.signatures:
            return servable.signatures[name]
    if verb == "query":  # any signature that answers ids and scores is a top-k signature
        for signature in servable.signatures.values():
            outputs = [k.lower() for k in signature.outputs]
            if any("id" in k for k in outputs) and any("score" in k for k in outputs):
                return signature
    raise BadRequest(f"model {servable.name!r} has no {' / '.join(repr(n) for n in names)} signature, so it does "
                     f"not answer :{verb}; its signatures: {sorted(servable.signatures)}")


def text_input(signature):
    strings = [i for i in signature.inputs.values() if i.is_string and i.batched]
    if not strings:
        raise BadRequest(f"signature {signature.name!r} has no batched string input")
    for name in TEXT_INPUT_NAMES:
        for info in strings:
            if info.name == name:
                return info
    return strings[0]


def texts_from(body, keys, limits):
    for key in keys:
        if key in body:
            value = body[key]
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise BadRequest(f"{key!r} must be a string or a non-empty list of strings")
            if len(value) > limits.max_rows:
                raise BadRequest(f"{len(value)} texts is more than the limit of {limits.max_rows}", status=413)
            return value
    raise BadRequest(f"the request needs one of {list(keys)}")


def build_inputs(signature, body, texts, defaults, limits):
    """The text input gets ``texts``; each other input comes from the request field of its name."""
    text = text_input(signature)
    arrays = {text.name: to_array(texts, text, limits)}
    for name, info in signature.inputs.items():
        if name == text.name:
            continue
        alias = ALIASES.get(name)
        if name in body:
            value = body[name]
        elif alias in body:
            value = body[alias]
        elif name in defaults:
            value = defaults[name]
        else:
            raise BadRequest(f"signature {signature.name!r} needs input {name!r}: give it as a request field")
        if info.batched and not isinstance(value, list):
            value = [value] * len(texts)  # one setting for every text
        array = to_array(value, info, limits)
        check_shape(array, info)
        arrays[name] = array
    return arrays


def string_output(signature, outputs):
    for name in ("completions", "texts", "text", "generated", "outputs"):
        if name in outputs:
            return outputs[name]
    for name, info in signature.outputs.items():
        if info.is_string:
            return outputs[name]
    raise BadRequest(f"signature {signature.name!r} has no string output")


def classify_inputs(signature, body, limits):
    if not isinstance(body, dict) or not isinstance(body.get("examples"), list) or not body["examples"]:
        raise BadRequest("the classify request needs 'examples', a non-empty list of objects")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise BadRequest("'context' must be an object")
    instances = []
    for i, example in enumerate(body["examples"]):
        if not isinstance(example, dict):
            raise BadRequest(f"example {i} is not an object")
        instances.append({**context, **example})
    return parse_instances(instances, signature.inputs, limits)


def classify_result(outputs, manifest):
    if "classes" in outputs and "scores" in outputs:
        classes, scores = _strings(outputs["classes"].tolist()), outputs["scores"]
    else:
        scores = next((outputs[k] for k in ("scores", "probabilities") if k in outputs), None)
        if scores is None:
            raise BadRequest(f"the signature has no class scores (outputs {sorted(outputs)}); "
                             "expected 'classes' and 'scores', or 'scores' or 'probabilities'")
        labels = manifest.get("labels") or manifest.get("classes")
        if not isinstance(labels, list) or len(labels) != np.shape(scores)[-1]:
            labels = [str(i) for i in range(np.shape(scores)[-1])]
        classes = [list(map(str, labels))] * len(scores)
    if np.ndim(scores) != 2:
        raise BadRequest(f"class scores have shape {np.shape(scores)}, expected [batch, classes]")
    return {"result": [[[c, float(s)] for c, s in zip(row_classes, row_scores)]
                       for row_classes, row_scores in zip(classes, scores)]}


def query_result(outputs, k=None):
    ids = outputs.get("ids", next((v for k, v in sorted(outputs.items()) if "id" in k.lower()), None))
    scores = outputs.get("scores", next((v for k, v in sorted(outputs.items())
                                         if "score" in k.lower() or "similar" in k.lower()), None))
    if ids is None or scores is None:
        raise BadRequest(f"the top-k signature's outputs {sorted(outputs)} do not include ids and scores")
    if k is not None:  # a signature with a fixed k may return more than asked
        ids, scores = np.asarray(ids)[:, :k], np.asarray(scores)[:, :k]
    ids = _strings(np.asarray(ids).tolist())
    scores = np.asarray(scores, dtype=np.float64).tolist()
    return {"results": [[{"id": i, "score": s} for i, s in zip(row_ids, row_scores)]
                        for row_ids, row_scores in zip(ids, scores)]}
