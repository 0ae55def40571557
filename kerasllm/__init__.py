"""kerasllm: small text models trained on your text, compressed, and served fast.

Importing ``kerasllm`` is cheap: TensorFlow is imported only when a model is built or loaded.
"""
import importlib

from kerasllm import logs as _logs

__version__ = "0.1.0"
_logs.install_import_hook()  # TensorFlow's start-up lines filtered wherever it is first imported

# public name -> "module:attribute", resolved on first use
_LAZY = {
    "load": "kerasllm.runtime:load",
    "load_classifier": "kerasllm.models.classifier:load_classifier",
    "TextClassifier": "kerasllm.models.classifier:TextClassifier",
    "load_similarity_index": "kerasllm.models.similarity:load_similarity_index",
    "SimilarityIndex": "kerasllm.models.similarity:SimilarityIndex",
    "WordTokenizer": "kerasllm.text.word:WordTokenizer",
    "compress": "kerasllm.compression:compress",
    "CompressionReport": "kerasllm.compression.report:CompressionReport",
    "Client": "kerasllm.serving.client:Client",
    "LanguageModel": "kerasllm.models.language_model:LanguageModel",
    "load_language_model": "kerasllm.models.language_model:load_language_model",
    "language_model_from_config": "kerasllm.models.language_model:language_model_from_config",
    "CharTokenizer": "kerasllm.text.char:CharTokenizer",
    "SubwordTokenizer": "kerasllm.text.subword:SubwordTokenizer",
}


def __getattr__(name):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'kerasllm' has no attribute {name!r}")
    module, attribute = target.split(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = sorted(_LAZY)
