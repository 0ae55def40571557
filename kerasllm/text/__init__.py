"""Tokenizers. ``word``: words for the classifier and similarity (Python and in-graph)."""
from kerasllm.text.word import OOV, PAD, WordTokenizer, check_texts

__all__ = ["WordTokenizer", "check_texts", "PAD", "OOV"]
