"""Tokenizer files a Hugging Face ``AutoTokenizer`` loads: the byte tokenizer as a tokenizers JSON.

The byte tokenizer becomes a byte-level BPE with no merges: the vocabulary maps each of the
256 byte characters of GPT-2's ``bytes_to_unicode`` table to the byte's value, and
``ByteLevel(use_regex=False)`` turns text into those characters, so the ids are exactly the
UTF-8 bytes and decoding replaces invalid sequences with U+FFFD, as
:class:`apt.data.ByteTokenizer` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


__all__ = ["byte_tokenizer_json", "bytes_to_unicode", "token_count", "write_tokenizer_files"]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, str] = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)  # unprintable bytes move past Latin-1
            n += 1
    return dict(sorted(table.items()))


def byte_tokenizer_json() -> dict[str, Any]:
    """A ``tokenizer.json`` whose ids are the UTF-8 bytes of the text (256 tokens, no specials)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {ch: b for b, ch in bytes_to_unicode().items()},
            "merges": [],
        },
    }


def token_count(data: dict[str, Any]) -> int:
    """How many ids a tokenizers JSON uses: one past the largest id of its vocabulary and added tokens."""
    ids = [int(i) for i in (data.get("model") or {}).get("vocab", {}).values()]
    ids += [int(t["id"]) for t in data.get("added_tokens") or []]
    return max(ids) + 1 if ids else 0


def write_tokenizer_files(out: Path, tokenizer_json: Path | None, model_max_length: int) -> int:
    """Write ``tokenizer.json`` (a copy of ``tokenizer_json``, or the byte tokenizer's) and ``tokenizer_config.json``.

    ``tokenizer_config.json`` names ``PreTrainedTokenizerFast`` and no automatic BOS/EOS, so
    ``AutoTokenizer`` encodes exactly what the APT tokenizer does; special tokens the
    tokenizer JSON marks as special (BPE's end-of-text) become its ``eos_token``.

    :returns: the number of token ids the tokenizer uses (:func:`token_count`).
    """
    if tokenizer_json is not None:
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    else:
        data = byte_tokenizer_json()
    specials = [t["content"] for t in data.get("added_tokens") or [] if t.get("special")]
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    if specials:
        config["eos_token"] = specials[0]
    paths = [out / "tokenizer.json", out / "tokenizer_config.json", out / "special_tokens_map.json"]
    paths[0].write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    paths[1].write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    special_map = {"eos_token": specials[0]} if specials else {}
    paths[2].write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
    return token_count(data)
