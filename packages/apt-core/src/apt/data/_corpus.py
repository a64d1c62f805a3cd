"""Where the text comes from: the embedded corpus, a file, or a folder of ``.txt`` files."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from apt.errors import ConfigError


__all__ = ["load_corpus", "split_tokens", "unigram_bpb"]


def load_corpus(path: str | Path | None = None) -> str:
    """The training text.

    :param path: ``None`` for the embedded corpus (the text of Python's documentation
        topics, ``pydoc_data.topics``, shipped with every CPython); a UTF-8 text file; or a
        folder whose ``.txt`` files (recursively, in sorted order) are joined with blank lines.
    :raises ConfigError: (key ``data.path``) if the path does not exist, is not UTF-8, or holds no text.
    """
    if path is None:
        from pydoc_data.topics import topics

        # sorted keys: the same text on every machine whatever the dict order
        return "\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n"
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.txt") if f.is_file())
        if not files:
            raise ConfigError(
                f"data.path {str(p)!r} is a folder without .txt files; add some or point to a file", key="data.path"
            )
        text = "\n\n".join(_read(f) for f in files)
    elif p.is_file():
        text = _read(p)
    else:
        raise ConfigError(
            f"data.path {str(p)!r} does not exist; give a UTF-8 text file or a folder of .txt files", key="data.path"
        )
    if not text.strip():
        raise ConfigError(f"data.path {str(p)!r} holds no text", key="data.path")
    return text


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"data.path: {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})", key="data.path"
        ) from None


def split_tokens(tokens: Tensor, val_fraction: float) -> tuple[Tensor, Tensor]:
    """Split a 1-D token tensor into (train, val): the last ``val_fraction`` is validation.

    A contiguous split (as nanoGPT's) keeps validation text unseen in training.
    """
    n_val = max(1, int(round(len(tokens) * val_fraction)))
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


def unigram_bpb(train: Tensor, val: Tensor, vocab_size: int = 256) -> float:
    """Bits per byte of ``val`` under the unigram byte distribution of ``train``.

    The baseline a language model must beat: it knows the byte frequencies and nothing
    else. Add-one smoothing keeps bytes unseen in training finite.
    """
    counts = torch.bincount(train.long(), minlength=vocab_size).double() + 1.0  # (V,)
    log2p = torch.log2(counts / counts.sum())  # (V,)
    return float(-log2p[val.long()].mean()) if len(val) else math.nan
