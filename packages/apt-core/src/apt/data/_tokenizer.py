"""Tokenizers: the byte tokenizer (the default) and byte-level BPE from Hugging Face ``tokenizers``.

Both are providers of kind ``tokenizer`` (``byte``, ``bpe``) and share one contract,
:class:`Tokenizer`. Each saves itself as a standard Hugging Face ``tokenizer.json``
(:meth:`Tokenizer.to_json`), which is what a run folder and a prepared data folder keep
and what :func:`load_tokenizer` reads back. The byte tokenizer's JSON is a byte-level BPE
without merges whose ids are the UTF-8 bytes, so ``AutoTokenizer`` gives the same ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from typing import Final
from typing import Protocol
from typing import runtime_checkable

from apt.errors import ConfigError


__all__ = [
    "EOS_TOKEN",
    "VOCAB_PAD_MULTIPLE",
    "BPETokenizer",
    "ByteTokenizer",
    "Tokenizer",
    "build_bpe",
    "build_byte",
    "fingerprint",
    "load_tokenizer",
    "padded_vocab_size",
    "save_tokenizer",
]

#: The document separator (end-of-text) special token of every APT tokenizer that has one.
EOS_TOKEN: Final = "<|endoftext|>"
#: ``model.vocab_size`` left unset becomes the tokenizer's vocabulary rounded up to this (matmul-friendly).
VOCAB_PAD_MULTIPLE: Final = 64


def padded_vocab_size(n: int, multiple: int = VOCAB_PAD_MULTIPLE) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (256 stays 256; GPT-2's 50257 becomes 50304)."""
    return -(-n // multiple) * multiple


@runtime_checkable
class Tokenizer(Protocol):
    """What APT needs from a tokenizer (provider kind ``tokenizer``).

    ``vocab_size`` counts every id, special tokens included; ``eos_id`` is the document
    separator (``None``: the tokenizer has none). ``token_bytes()[i]`` is the number of
    text bytes id ``i`` stands for (special tokens count one byte, like the blank line the
    text loader puts between files); validation divides the summed loss by these bytes.
    """

    name: str
    vocab_size: int
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_bytes(self) -> list[int]: ...

    def to_json(self) -> str: ...


def fingerprint(tokenizer: Tokenizer) -> str:
    """SHA-256 of the tokenizer's JSON: equal fingerprints encode equally."""
    return hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> None:
    """Write ``tokenizer.json`` (a standard Hugging Face tokenizers file)."""
    Path(path).write_text(tokenizer.to_json(), encoding="utf-8")


@cache
def _byte_to_unicode() -> tuple[str, ...]:
    """GPT-2's printable stand-in character for each byte (the byte-level BPE alphabet), indexed by byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return tuple(chars[b] for b in range(256))


class ByteTokenizer:
    """Encode text as its UTF-8 bytes (vocabulary 256) and back.

    Every string round-trips exactly. ``decode`` replaces byte sequences that are not
    valid UTF-8 (a sampled model can produce them) with U+FFFD instead of failing.

    :param eos: add the end-of-text token as id 256 (vocabulary 257); ``apt data prepare``
        uses it to separate documents. Training on text files does not (vocabulary 256).
    """

    name: str = "byte"

    def __init__(self, eos: bool = False) -> None:
        self.eos_id: int | None = 256 if eos else None
        self.vocab_size: int = 257 if eos else 256

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``: one per UTF-8 byte.

        Bytes that were not valid UTF-8 where the text came from (a command-line argument or
        file name, decoded with ``surrogateescape``) come back as those bytes.
        """
        return list(text.encode("utf-8", errors="surrogateescape"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        """Text of token ids; each id must be in ``range(256)`` (the end-of-text id is dropped)."""
        return bytes(i for i in ids if i != self.eos_id).decode("utf-8", errors="replace")

    def token_bytes(self) -> list[int]:
        return [1] * self.vocab_size

    def to_json(self) -> str:
        """A byte-level BPE without merges whose ids are the bytes (``use_regex`` off: no splitting)."""
        vocab = {ch: b for b, ch in enumerate(_byte_to_unicode())}
        added = [] if self.eos_id is None else [_added_token(self.eos_id, EOS_TOKEN)]
        if self.eos_id is not None:
            vocab[EOS_TOKEN] = self.eos_id
        data: dict[str, Any] = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {
                "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": vocab, "merges": [],
            },
        }  # fmt: skip
        return json.dumps(data, ensure_ascii=False, indent=2)

    @classmethod
    def from_json_data(cls, data: dict[str, Any]) -> ByteTokenizer | None:
        """The byte tokenizer a ``tokenizer.json`` describes, or ``None`` when it is another tokenizer."""
        model = data.get("model") or {}
        if model.get("type") != "BPE" or model.get("merges"):
            return None
        vocab = dict(model.get("vocab") or {})
        eos = vocab.pop(EOS_TOKEN, None)
        if vocab != {ch: b for b, ch in enumerate(_byte_to_unicode())} or eos not in (None, 256):
            return None
        return cls(eos=eos is not None)

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"


def _added_token(id_: int, content: str) -> dict[str, Any]:
    return {
        "id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
        "normalized": False, "special": True,
    }  # fmt: skip


class BPETokenizer:
    """A byte-level BPE (GPT-2 style) backed by a Hugging Face ``tokenizers.Tokenizer``.

    Any text round-trips exactly: the byte alphabet is part of the vocabulary, so no
    character is unknown. Make one with :meth:`train` or :meth:`from_file`.
    """

    name: str = "bpe"

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        # the text "<|endoftext|>" in a document is text, not the separator (which only prepare inserts)
        self.backend.encode_special_tokens = True
        self.vocab_size: int = int(backend.get_vocab_size(with_added_tokens=True))
        eos = backend.token_to_id(EOS_TOKEN)
        self.eos_id: int | None = int(eos) if eos is not None else None
        self._token_bytes: list[int] | None = None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn merges from ``texts`` (streamed) up to ``vocab_size`` ids, ``<|endoftext|>`` being id 0."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders
        from tokenizers import models
        from tokenizers import pre_tokenizers
        from tokenizers import trainers

        if vocab_size < 257 + 1:
            raise ConfigError(
                f"a BPE vocabulary needs more than 257 ids (256 bytes and end-of-text), got {vocab_size}; "
                "raise the vocabulary size (--vocab-size, data.tokenizer_vocab_size)",
                key="data.tokenizer_vocab_size",
            )
        backend = HFTokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: nothing is ever unknown
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)))

    def encode(self, text: str) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return str(self.backend.decode(ids, skip_special_tokens=True))

    def token_bytes(self) -> list[int]:
        if self._token_bytes is None:
            lengths = [1] * self.vocab_size
            special = {t.content for t in self.backend.get_added_tokens_decoder().values() if t.special}
            for token, id_ in self.backend.get_vocab(with_added_tokens=True).items():
                # byte-level vocabulary: one character per byte; special tokens stand for one byte
                lengths[id_] = 1 if token in special else max(1, len(token))
            self._token_bytes = lengths
        return self._token_bytes

    def to_json(self) -> str:
        return str(self.backend.to_str(pretty=True))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def build_byte(
    *,
    path: str | Path | None = None,
    texts: Iterable[str] | None = None,
    vocab_size: int | None = None,
    eos: bool = False,
) -> ByteTokenizer:
    """Provider ``tokenizer:byte``. ``path`` (a saved byte ``tokenizer.json``) decides ``eos``; ``texts`` is unused."""
    if path is None:
        return ByteTokenizer(eos=eos)
    tok = load_tokenizer(path)
    if not isinstance(tok, ByteTokenizer):
        raise ConfigError(
            f"{str(path)!r} is not a byte tokenizer; use data.tokenizer=bpe for a BPE tokenizer.json",
            key="data.tokenizer",
        )
    return tok


def build_bpe(
    *,
    path: str | Path | None = None,
    texts: Iterable[str] | None = None,
    vocab_size: int | None = None,
    eos: bool = True,
) -> BPETokenizer:
    """Provider ``tokenizer:bpe``: load ``path`` (any byte-level ``tokenizer.json``), or train on ``texts``."""
    if path is not None:
        tok = load_tokenizer(path)
        if isinstance(tok, ByteTokenizer):
            return BPETokenizer.from_file(path)
        return tok
    if texts is None:
        raise ConfigError("tokenizer bpe needs a tokenizer.json (data.tokenizer_path) or text to train on")
    return BPETokenizer.train(texts, vocab_size or 4096)


def load_tokenizer(path: str | Path) -> ByteTokenizer | BPETokenizer:
    """Read a ``tokenizer.json``: the byte tokenizer when it is one, else a :class:`BPETokenizer`.

    :raises ConfigError: (key ``data.tokenizer_path``) if the file is missing or not a tokenizers JSON.
    """
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"tokenizer file {str(p)!r} does not exist; give a tokenizer.json", key="data.tokenizer_path"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"tokenizer file {str(p)!r} is not a tokenizer.json ({exc}); give one saved by Hugging Face tokenizers",
            key="data.tokenizer_path",
        ) from None
    byte = ByteTokenizer.from_json_data(data) if isinstance(data, dict) else None
    if byte is not None:
        return byte
    try:
        return BPETokenizer.from_file(p)
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
        raise ConfigError(
            f"tokenizer file {str(p)!r} cannot be loaded by Hugging Face tokenizers ({exc})", key="data.tokenizer_path"
        ) from None


def iter_texts_within(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """``texts`` until about ``max_bytes`` of UTF-8 have gone by (BPE training memory grows with its input)."""
    seen = 0
    for text in texts:
        if seen >= max_bytes:
            return
        seen += len(text.encode("utf-8", errors="surrogateescape"))
        yield text
