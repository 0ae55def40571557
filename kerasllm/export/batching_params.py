"""TF Serving's batching settings and rules, read by the exporter (which writes them) and the embedded server.

``BatchingOptions`` carries TF Serving's ``BatchingParameters`` fields (session_bundle_config.proto) with
TF Serving's checks; ``to_pbtxt``/``from_pbtxt`` are the text proto TF Serving reads from
``--batching_parameters_file`` and, with ``--enable_per_model_batching_parameters``, from each
version's ``batching_params.pbtxt`` (bundle_factory_util.cc). The embedded server follows the same
file, so a model batches the same way under both servers.

The batch-dimension rule (batching_session.cc): TF Serving batches *every* signature of a model whose
session is wrapped for batching; each input must have a 0th dimension shared by all inputs, and each
output a 0th dimension equal to the sum of the merged inputs'. A model gets batching only when every
signature meets that (``model_batchable``); inputs whose other dimensions vary between requests need
``pad_variable_length_inputs`` (TF Serving refuses to merge tensors of different shapes otherwise, and
pads with the tensor's first element when asked).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

BATCHING_PARAMS_FILE = "batching_params.pbtxt"  # TF Serving: kBatchingParamsFilename, in the version folder


def auto_batch_sizes(max_batch_size: int) -> tuple:
    """Powers of two below ``max_batch_size``, then ``max_batch_size``: an XLA-compiled signature then
    compiles for a handful of shapes instead of one per batch size seen."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return tuple(sizes) + (max_batch_size,)


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 128
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.batch_timeout_micros, int) or self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros must be an integer >= 0, got {self.batch_timeout_micros!r}")
        if not isinstance(self.pad_variable_length_inputs, bool):
            raise ValueError(f"pad_variable_length_inputs must be true or false, got {self.pad_variable_length_inputs!r}")
        sizes = self.allowed_batch_sizes
        if sizes == "auto":
            sizes = auto_batch_sizes(self.max_batch_size)
        if isinstance(sizes, str):
            raise ValueError(f"allowed_batch_sizes must be 'auto' or a tuple of sizes, got {sizes!r}")
        sizes = tuple(sizes or ())
        if sizes:
            if any(not isinstance(s, int) or s < 1 for s in sizes) or list(sizes) != sorted(set(sizes)):
                raise ValueError(f"allowed_batch_sizes must be increasing positive integers, got {sizes!r}")
            if sizes[-1] != self.max_batch_size:  # TF Serving refuses the model otherwise (WrapSessionForBatching)
                raise ValueError(f"the last of allowed_batch_sizes {sizes!r} must equal max_batch_size "
                                 f"({self.max_batch_size}), as in TF Serving")
        object.__setattr__(self, "allowed_batch_sizes", sizes)

    @property
    def max_queued_rows(self) -> int:
        return self.max_enqueued_batches * self.max_batch_size

    def padded_size(self, rows: int) -> int:
        for size in self.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    def to_pbtxt(self) -> str:
        """TF Serving's ``BatchingParameters`` text proto (wrapper types for the numbers)."""
        lines = [f"max_batch_size {{ value: {self.max_batch_size} }}",
                 f"batch_timeout_micros {{ value: {self.batch_timeout_micros} }}",
                 f"max_enqueued_batches {{ value: {self.max_enqueued_batches} }}",
                 f"num_batch_threads {{ value: {self.num_batch_threads} }}"]
        lines += [f"allowed_batch_sizes: {size}" for size in self.allowed_batch_sizes]
        if self.pad_variable_length_inputs:
            lines.append("pad_variable_length_inputs: true")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_pbtxt(cls, text: str) -> "BatchingOptions":
        """Parse the subset of ``BatchingParameters`` text proto that ``to_pbtxt`` writes (what a hand-written
        file uses); fields this server has no use for (thread pool name, splitting) are accepted and ignored."""
        known = {f.name for f in fields(cls)}
        ignored = {"thread_pool_name", "enable_large_batch_splitting", "max_execution_batch_size"}
        values, sizes = {}, []
        pattern = re.compile(r"\s*(\w+)\s*(?:\{\s*value\s*:\s*([^}\s]+)\s*\}|:\s*(\S+))\s*")
        position = 0
        text = re.sub(r"#[^\n]*", "", text)
        while position < len(text.rstrip()):
            match = pattern.match(text, position)
            if match is None:
                raise ValueError(f"cannot parse batching parameters near {text[position:position + 40]!r}: expected "
                                 "lines like 'max_batch_size { value: 32 }' or 'allowed_batch_sizes: 8'")
            name, value = match[1], match[2] if match[2] is not None else match[3]
            position = match.end()
            if name in ignored:
                continue
            if name not in known:
                raise ValueError(f"unknown batching parameter {name!r}; known: {sorted(known | ignored)}")
            if name == "pad_variable_length_inputs":
                values[name] = value.lower() in ("true", "1")
            elif name == "allowed_batch_sizes":
                sizes.append(int(value))
            else:
                values[name] = int(value)
        if sizes:
            values["allowed_batch_sizes"] = tuple(sizes)
        return cls(**values)


def has_batch_dimension(shape) -> bool:
    """``shape``: a tuple with None for unknown sizes, or None for an unknown rank. TF Serving stacks
    requests along dimension 0, so it must exist and be left open (-1) in the signature."""
    return shape is not None and len(shape) >= 1 and shape[0] is None


def signature_batchable(inputs: dict, outputs: dict) -> bool:
    """Every input and every output has a batch dimension (batching_session.cc's rule)."""
    return bool(inputs) and all(has_batch_dimension(s) for s in inputs.values()) and all(
        has_batch_dimension(s) for s in outputs.values())


def needs_padding(inputs: dict) -> bool:
    """Some input has an open dimension after the batch one: requests of different widths meet in a batch."""
    return any(shape is not None and any(d is None for d in shape[1:]) for shape in inputs.values())


def model_batching(signatures: dict, options: BatchingOptions) -> BatchingOptions | None:
    """The batching a model can have under TF Serving, or None. ``signatures``: {name: (inputs, outputs)},
    each a {tensor name: shape} dict. TF Serving wraps the whole session, so one signature without a
    batch dimension (a language model's scalar settings) rules batching out for the model."""
    if not signatures or not all(signature_batchable(i, o) for i, o in signatures.values()):
        return None
    pad = any(needs_padding(i) for i, _ in signatures.values())
    if pad == options.pad_variable_length_inputs:
        return options
    return replace(options, pad_variable_length_inputs=pad)
