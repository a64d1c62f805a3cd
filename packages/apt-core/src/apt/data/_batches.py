"""Datasets and batches: random training windows from a seeded generator, fixed validation windows.

Tokens come either from text tokenized here (:class:`TextDataset`: small inputs, as one
tensor) or from a folder written by ``apt data prepare`` (:class:`PreparedDataset`:
memory-mapped shards, read window by window).

Every process draws the *global* batch (``world_size * grad_accum * batch_size``
windows) with the same generator and keeps its own slice, so a run on N processes sees
exactly the windows a one-process run with an N times larger batch sees, and the
generator state is the whole sampler state (saved in checkpoints for an exact resume).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

import torch
from torch import Tensor

from apt.data._corpus import load_corpus
from apt.data._corpus import split_tokens
from apt.data._corpus import unigram_bpb
from apt.data._shards import PreparedData
from apt.data._shards import TokenShards
from apt.data._shards import is_prepared
from apt.data._tokenizer import ByteTokenizer
from apt.data._tokenizer import Tokenizer
from apt.data._tokenizer import fingerprint
from apt.data._tokenizer import load_tokenizer
from apt.errors import ConfigError
from apt.errors import UsageError


if TYPE_CHECKING:
    from apt.core import APTConfig
    from apt.core import ProviderRegistry


__all__ = ["BatchSource", "PreparedDataset", "TextDataset", "load_dataset", "validation_windows"]

#: tokens of training text (from its start) a BPE tokenizer trained on the fly learns from
_BPE_TRAIN_CHARS = 64 * 1024 * 1024
Tokens = Tensor | TokenShards  # one split: a 1-D int64 tensor, or memory-mapped shards


class TextDataset:
    """A text split into train and validation token tensors (int64, 1-D).

    :param text: the whole corpus.
    :param block_size: context length; both splits must hold at least ``block_size + 1`` tokens.
    :param val_fraction: the share of the tokens (at the end) kept for validation.
    :param tokenizer: default: the byte tokenizer (one token per UTF-8 byte).
    """

    def __init__(
        self, text: str, block_size: int, val_fraction: float = 0.1, tokenizer: Tokenizer | None = None
    ) -> None:
        self.tokenizer: Tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        if isinstance(self.tokenizer, ByteTokenizer):
            tokens = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)  # (N,)
        else:
            tokens = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)  # (N,)
        self.train, self.val = split_tokens(tokens, val_fraction)
        self.block_size = block_size
        _check_long_enough(self.train, self.val, block_size)
        #: bits per byte of the validation text under the training text's token frequencies
        self.baseline_bpb = unigram_bpb(self.train, self.val, self.tokenizer.vocab_size) * _tokens_per_byte(
            self.tokenizer, self.val
        )
        #: what the data is, for a resume: ``None`` (text is read again; nothing to compare)
        self.fingerprint: str | None = None

    @classmethod
    def from_config(cls, config: APTConfig, registry: ProviderRegistry | None = None) -> TextDataset:
        """Load ``data.path`` (or the embedded corpus), tokenize it as ``data.tokenizer`` says, split it."""
        dc = config.data
        text = load_corpus(dc.path)
        tokenizer: Tokenizer
        if dc.tokenizer is None and dc.tokenizer_path is not None:
            tokenizer = load_tokenizer(dc.tokenizer_path)  # the file says which kind it is
        else:
            if registry is None:
                from apt.core import ProviderRegistry

                registry = ProviderRegistry()
            name = dc.tokenizer or "byte"
            # a tokenizer trained here learns from the training part of the text only
            train_text = text[: min(_BPE_TRAIN_CHARS, int(len(text) * (1 - dc.val_fraction)))]
            texts = _pieces(train_text) if name != "byte" and dc.tokenizer_path is None else None
            tokenizer = registry.build(
                "tokenizer", name, path=dc.tokenizer_path, texts=texts, vocab_size=dc.tokenizer_vocab_size
            )
        return cls(text, config.model.block_size, dc.val_fraction, tokenizer)

    def __repr__(self) -> str:
        return f"TextDataset(train={len(self.train)} tokens, val={len(self.val)} tokens, block_size={self.block_size})"


class PreparedDataset:
    """The train/val shards of a folder written by ``apt data prepare`` (memory-mapped, never loaded whole).

    :param folder: the prepared folder (its manifest and shard hashes are checked).
    :param block_size: context length; each split needs a shard of at least ``block_size + 1`` tokens.
    """

    def __init__(self, folder: str, block_size: int) -> None:
        data = PreparedData(folder)
        self.folder = data.folder
        self.manifest = data.manifest
        self.tokenizer: Tokenizer = data.tokenizer
        self.train: TokenShards = data.train
        self.val: TokenShards = data.val
        self.block_size = block_size
        for split, shards in (("train", self.train), ("validation", self.val)):
            if shards.n_starts(block_size) == 0:
                raise ConfigError(
                    f"data.path {str(self.folder)!r}: no {split} shard holds block_size + 1 = {block_size + 1} "
                    "tokens; prepare more text (or a larger --val-fraction), or use a smaller model.block_size",
                    key="data.path",
                )
        val = self.val.sample(1 << 22)
        self.baseline_bpb = unigram_bpb(self.train.sample(1 << 24), val, self.tokenizer.vocab_size) * _tokens_per_byte(
            self.tokenizer, val
        )
        self.fingerprint: str | None = data.sha256

    @classmethod
    def from_config(cls, config: APTConfig) -> PreparedDataset:
        """Open ``data.path``, refusing a tokenizer other than ``data.tokenizer`` / ``data.tokenizer_path``."""
        dc = config.data
        assert dc.path is not None
        ds = cls(dc.path, config.model.block_size)
        made_with = ds.manifest["tokenizer"]
        if dc.tokenizer is not None and dc.tokenizer != made_with["name"]:
            raise ConfigError(
                f"data.path {dc.path!r} was prepared with the {made_with['name']!r} tokenizer but data.tokenizer is "
                f"{dc.tokenizer!r}; drop data.tokenizer (the folder brings its tokenizer) or prepare it again "
                f"with --tokenizer {dc.tokenizer}",
                key="data.tokenizer",
            )
        if dc.tokenizer_path is not None:
            asked = fingerprint(load_tokenizer(dc.tokenizer_path))
            if asked != made_with["sha256"]:
                raise ConfigError(
                    f"data.path {dc.path!r} was prepared with another tokenizer than data.tokenizer_path "
                    f"{dc.tokenizer_path!r} (SHA-256 {made_with['sha256'][:12]} vs {asked[:12]}); drop "
                    f"data.tokenizer_path or prepare again with --tokenizer {dc.tokenizer_path}",
                    key="data.tokenizer_path",
                )
        return ds

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.folder)!r}, train={len(self.train)}, val={len(self.val)} tokens)"


def load_dataset(config: APTConfig, registry: ProviderRegistry | None = None) -> TextDataset | PreparedDataset:
    """The run's data: a prepared folder (``data.path`` with a ``manifest.json``), else text tokenized here."""
    if config.data.path is not None and is_prepared(config.data.path):
        return PreparedDataset.from_config(config)
    return TextDataset.from_config(config, registry)


def _pieces(text: str, size: int = 1 << 20) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _check_long_enough(train: Tensor, val: Tensor, block_size: int) -> None:
    for split, t in (("train", train), ("validation", val)):
        if len(t) < block_size + 1:
            raise ConfigError(
                f"the {split} split has {len(t)} tokens, fewer than model.block_size + 1 = {block_size + 1}; "
                "use more text (data.path), a larger data.val_fraction, or a smaller model.block_size",
                key="data.path",
            )


def _tokens_per_byte(tokenizer: Tokenizer, tokens: Tensor) -> float:
    """Tokens over the text bytes they stand for (exactly 1.0 for the byte tokenizer)."""
    if isinstance(tokenizer, ByteTokenizer):
        return 1.0
    lengths = torch.tensor(tokenizer.token_bytes(), dtype=torch.long)  # (V,)
    return len(tokens) / max(1, int(lengths[tokens].sum()))


def val_tokens_per_byte(
    tokenizer: Tokenizer, tokens: Tokens, block_size: int, batch_size: int, n_batches: int, world_size: int
) -> float:
    """Target tokens per text byte over every process's validation windows.

    Validation loss is a mean over target tokens; times this ratio and over ln 2 it is the
    loss summed over tokens divided by the bytes they cover: bits per byte, comparable
    across tokenizers. The byte tokenizer's ratio is exactly 1.0.
    """
    if isinstance(tokenizer, ByteTokenizer):
        return 1.0
    batches = validation_windows(tokens, block_size, batch_size, n_batches * world_size)  # all ranks' windows
    targets = torch.cat([y.reshape(-1) for _, y in batches])
    return _tokens_per_byte(tokenizer, targets)


def n_starts(tokens: Tokens, block_size: int) -> int:
    """How many windows of ``block_size + 1`` tokens fit (the range of window starts)."""
    return tokens.n_starts(block_size) if isinstance(tokens, TokenShards) else len(tokens) - block_size


def _windows(tokens: Tokens, starts: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    if isinstance(tokens, TokenShards):
        return tokens.windows(starts, block_size)
    idx = starts[:, None] + torch.arange(block_size + 1)  # (N, T + 1)
    chunk = tokens[idx]  # (N, T + 1)
    return chunk[:, :-1], chunk[:, 1:]  # inputs and next-token targets, (N, T) each


class BatchSource:
    """Draws training batches for one process from a seeded ``torch.Generator``.

    :param tokens: the training tokens: a 1-D tensor or memory-mapped shards.
    :param block_size: window length ``T``.
    :param batch_size: sequences per micro-batch on this process ``B``.
    :param grad_accum: micro-batches per optimizer step.
    :param seed: seeds the generator; equal on every process.
    :param rank: / :param world_size: this process's slice of the global batch.
    """

    def __init__(
        self,
        tokens: Tokens,
        block_size: int,
        batch_size: int,
        grad_accum: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        fingerprint: str | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in range(world_size={world_size})")
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.rank = rank
        self.world_size = world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.steps_drawn = 0
        #: names the data (a prepared folder's manifest hash); a state from other data is refused
        self.fingerprint = fingerprint

    @property
    def local_batch(self) -> int:
        """Sequences this process gets per optimizer step (``grad_accum * batch_size``)."""
        return self.grad_accum * self.batch_size

    def next_step(self) -> tuple[Tensor, Tensor]:
        """The next optimizer step's ``(x, y)`` for this process, each ``(grad_accum * B, T)`` int64."""
        n_global = self.world_size * self.local_batch
        starts = torch.randint(n_starts(self.tokens, self.block_size), (n_global,), generator=self.generator)  # (N,)
        mine = starts[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]  # this rank's slice
        self.steps_drawn += 1
        return _windows(self.tokens, mine, self.block_size)

    def micro_batches(self, x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Split a step's batch into ``grad_accum`` micro-batches of ``(B, T)``."""
        return list(zip(x.split(self.batch_size), y.split(self.batch_size), strict=True))

    def state_dict(self) -> dict[str, Any]:
        """The sampler state: restoring it makes :meth:`next_step` continue with the same batches."""
        state: dict[str, Any] = {"generator": self.generator.get_state(), "steps_drawn": self.steps_drawn}
        if self.fingerprint is not None:
            state["data"] = self.fingerprint
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("data")
        if saved != self.fingerprint and (saved is not None or self.fingerprint is not None):
            raise UsageError(
                f"the checkpoint's batches came from other data (prepared data {str(saved)[:12]}, this run "
                f"{str(self.fingerprint)[:12]}); resume with the data.path it was trained on"
            )
        self.generator.set_state(state["generator"])
        self.steps_drawn = int(state["steps_drawn"])


def validation_windows(
    tokens: Tokens, block_size: int, batch_size: int, n_batches: int, rank: int = 0, world_size: int = 1
) -> list[tuple[Tensor, Tensor]]:
    """Fixed, evenly spaced validation batches: this process's share of ``n_batches * B * world_size`` windows.

    The same windows every time, so validation losses are comparable across a run.
    """
    n_global = n_batches * batch_size * world_size
    starts = torch.linspace(0, n_starts(tokens, block_size) - 1, n_global).long()  # (N,)
    mine = starts[rank * n_batches * batch_size : (rank + 1) * n_batches * batch_size]
    x, y = _windows(tokens, mine, block_size)  # (n_batches * B, T) each
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))
