"""Batches: random training windows from a seeded generator, fixed validation windows.

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
from apt.data._tokenizer import ByteTokenizer
from apt.errors import ConfigError


if TYPE_CHECKING:
    from apt.core import APTConfig


__all__ = ["BatchSource", "TextDataset", "validation_windows"]


class TextDataset:
    """A text split into train and validation token tensors (int64, 1-D).

    :param text: the whole corpus.
    :param block_size: context length; both splits must hold at least ``block_size + 1`` tokens.
    :param val_fraction: the share of the text (at its end) kept for validation.
    """

    def __init__(self, text: str, block_size: int, val_fraction: float = 0.1) -> None:
        self.tokenizer = ByteTokenizer()
        tokens = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)  # (N,)
        self.train, self.val = split_tokens(tokens, val_fraction)
        self.block_size = block_size
        for split, t in (("train", self.train), ("validation", self.val)):
            if len(t) < block_size + 1:
                raise ConfigError(
                    f"the {split} split has {len(t)} tokens, fewer than model.block_size + 1 = {block_size + 1}; "
                    "use more text (data.path), a larger data.val_fraction, or a smaller model.block_size",
                    key="data.path",
                )
        #: bits per byte of the validation text under the training text's byte frequencies
        self.baseline_bpb = unigram_bpb(self.train, self.val, self.tokenizer.vocab_size)

    @classmethod
    def from_config(cls, config: APTConfig) -> TextDataset:
        """Load ``data.path`` (or the embedded corpus) and split it as configured."""
        return cls(load_corpus(config.data.path), config.model.block_size, config.data.val_fraction)

    def __repr__(self) -> str:
        return f"TextDataset(train={len(self.train)} tokens, val={len(self.val)} tokens, block_size={self.block_size})"


def _windows(tokens: Tensor, starts: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    idx = starts[:, None] + torch.arange(block_size + 1)  # (N, T + 1)
    chunk = tokens[idx]  # (N, T + 1)
    return chunk[:, :-1], chunk[:, 1:]  # inputs and next-token targets, (N, T) each


class BatchSource:
    """Draws training batches for one process from a seeded ``torch.Generator``.

    :param tokens: the training tokens.
    :param block_size: window length ``T``.
    :param batch_size: sequences per micro-batch on this process ``B``.
    :param grad_accum: micro-batches per optimizer step.
    :param seed: seeds the generator; equal on every process.
    :param rank: / :param world_size: this process's slice of the global batch.
    """

    def __init__(
        self,
        tokens: Tensor,
        block_size: int,
        batch_size: int,
        grad_accum: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
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

    @property
    def local_batch(self) -> int:
        """Sequences this process gets per optimizer step (``grad_accum * batch_size``)."""
        return self.grad_accum * self.batch_size

    def next_step(self) -> tuple[Tensor, Tensor]:
        """The next optimizer step's ``(x, y)`` for this process, each ``(grad_accum * B, T)`` int64."""
        n_global = self.world_size * self.local_batch
        starts = torch.randint(len(self.tokens) - self.block_size, (n_global,), generator=self.generator)  # (N,)
        mine = starts[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]  # this rank's slice
        self.steps_drawn += 1
        return _windows(self.tokens, mine, self.block_size)

    def micro_batches(self, x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Split a step's batch into ``grad_accum`` micro-batches of ``(B, T)``."""
        return list(zip(x.split(self.batch_size), y.split(self.batch_size), strict=True))

    def state_dict(self) -> dict[str, Any]:
        """The sampler state: restoring it makes :meth:`next_step` continue with the same batches."""
        return {"generator": self.generator.get_state(), "steps_drawn": self.steps_drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.steps_drawn = int(state["steps_drawn"])


def validation_windows(
    tokens: Tensor, block_size: int, batch_size: int, n_batches: int, rank: int = 0, world_size: int = 1
) -> list[tuple[Tensor, Tensor]]:
    """Fixed, evenly spaced validation batches: this process's share of ``n_batches * B * world_size`` windows.

    The same windows every time, so validation losses are comparable across a run.
    """
    n_global = n_batches * batch_size * world_size
    starts = torch.linspace(0, len(tokens) - block_size - 1, n_global).long()  # (N,)
    mine = starts[rank * n_batches * batch_size : (rank + 1) * n_batches * batch_size]
    x, y = _windows(tokens, mine, block_size)  # (n_batches * B, T) each
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))
