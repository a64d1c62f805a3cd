"""Models in and out of APT: Hugging Face ``transformers`` folders (GPT-2, Llama, Mixtral).

``apt export RUN_DIR --format hf --out DIR`` calls :func:`save_hf`; ``model.init_from: PATH``
makes the trainer call :func:`resolve_init_from` and :func:`init_weights`. A plugin whose
FFN has a Hugging Face counterpart registers an ``hf_ffn`` provider building a
:class:`HFBlockConverter` (apt-plugin-moe: Mixtral's sparse block).
"""

from __future__ import annotations

from apt.interop._hf import ARCHITECTURES
from apt.interop._hf import HFBlockConverter
from apt.interop._hf import apt_to_hf
from apt.interop._hf import architecture_of
from apt.interop._hf import hf_config
from apt.interop._hf import hf_to_apt
from apt.interop._hf import model_fields_from_hf
from apt.interop._io import DEFAULT_MAX_SHARD_BYTES
from apt.interop._io import hf_converters
from apt.interop._io import init_weights
from apt.interop._io import load_hf_weights
from apt.interop._io import resolve_init_from
from apt.interop._io import save_hf
from apt.interop._tokenizer import byte_tokenizer_json
from apt.interop._tokenizer import bytes_to_unicode
from apt.interop._tokenizer import token_count
from apt.interop._tokenizer import write_tokenizer_files


__all__ = [
    "ARCHITECTURES",
    "DEFAULT_MAX_SHARD_BYTES",
    "HFBlockConverter",
    "apt_to_hf",
    "architecture_of",
    "byte_tokenizer_json",
    "bytes_to_unicode",
    "hf_config",
    "hf_converters",
    "hf_to_apt",
    "init_weights",
    "load_hf_weights",
    "model_fields_from_hf",
    "resolve_init_from",
    "save_hf",
    "token_count",
    "write_tokenizer_files",
]
