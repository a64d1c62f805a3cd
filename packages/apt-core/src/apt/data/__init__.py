"""Text data: the byte tokenizer, the embedded corpus and seeded, shardable batches."""

from __future__ import annotations

from apt.data._batches import BatchSource
from apt.data._batches import TextDataset
from apt.data._batches import validation_windows
from apt.data._corpus import load_corpus
from apt.data._corpus import split_tokens
from apt.data._corpus import unigram_bpb
from apt.data._tokenizer import ByteTokenizer


__all__ = [
    "BatchSource",
    "ByteTokenizer",
    "TextDataset",
    "load_corpus",
    "split_tokens",
    "unigram_bpb",
    "validation_windows",
]
