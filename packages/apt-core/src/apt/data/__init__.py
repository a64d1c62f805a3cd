"""Text data: tokenizers, the embedded corpus, prepared token shards and seeded, shardable batches."""

from __future__ import annotations

from apt.data._batches import BatchSource
from apt.data._batches import PreparedDataset
from apt.data._batches import TextDataset
from apt.data._batches import load_dataset
from apt.data._batches import val_tokens_per_byte
from apt.data._batches import validation_windows
from apt.data._corpus import load_corpus
from apt.data._corpus import split_tokens
from apt.data._corpus import unigram_bpb
from apt.data._prepare import prepare
from apt.data._shards import PreparedData
from apt.data._shards import TokenShards
from apt.data._shards import is_prepared
from apt.data._tokenizer import EOS_TOKEN
from apt.data._tokenizer import VOCAB_PAD_MULTIPLE
from apt.data._tokenizer import BPETokenizer
from apt.data._tokenizer import ByteTokenizer
from apt.data._tokenizer import Tokenizer
from apt.data._tokenizer import fingerprint
from apt.data._tokenizer import load_tokenizer
from apt.data._tokenizer import padded_vocab_size
from apt.data._tokenizer import save_tokenizer


__all__ = [
    "EOS_TOKEN",
    "VOCAB_PAD_MULTIPLE",
    "BPETokenizer",
    "BatchSource",
    "ByteTokenizer",
    "PreparedData",
    "PreparedDataset",
    "TextDataset",
    "TokenShards",
    "Tokenizer",
    "fingerprint",
    "is_prepared",
    "load_corpus",
    "load_dataset",
    "load_tokenizer",
    "padded_vocab_size",
    "prepare",
    "save_tokenizer",
    "split_tokens",
    "unigram_bpb",
    "val_tokens_per_byte",
    "validation_windows",
]
