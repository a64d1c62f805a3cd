"""The byte-level tokenizer: UTF-8 bytes are the tokens, so nothing is downloaded."""

from __future__ import annotations

from typing import Final


__all__ = ["ByteTokenizer"]


class ByteTokenizer:
    """Encode text as its UTF-8 bytes (vocabulary 256) and back.

    Every string round-trips exactly. ``decode`` replaces byte sequences that are not
    valid UTF-8 (a sampled model can produce them) with U+FFFD instead of failing.
    """

    vocab_size: Final = 256

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``: one per UTF-8 byte.

        Bytes that were not valid UTF-8 where the text came from (a command-line argument or
        file name, decoded with ``surrogateescape``) come back as those bytes.
        """
        return list(text.encode("utf-8", errors="surrogateescape"))

    def decode(self, ids: list[int]) -> str:
        """Text of token ids; each id must be in ``range(256)``."""
        return bytes(ids).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"
