"""``TrainerView``: the typed ``trainer`` every hook receives.

It lists what a plugin may read or call on the trainer; nothing else is part of the
contract. :class:`apt.train.Trainer` satisfies it (checked by mypy and a test), and so
may any other host that fires hooks (``apt generate`` builds models through one).
Annotate handlers with it so that mypy checks a plugin against it::

    def on_step_end(self, trainer: TrainerView, step: int, **kwargs: Any) -> None:
        if trainer.is_global_zero:
            ...
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol
from typing import runtime_checkable


if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from apt.core.config import APTConfig
    from apt.core.schedules import Schedule


__all__ = ["TrainerView"]


@runtime_checkable
class TrainerView(Protocol):
    """What plugins may use of the trainer. Read-only unless a method says otherwise."""

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far (in ``on_step_end``: including the step just finished)."""

    @property
    def epoch(self) -> int:
        """The 0-based index of the current epoch."""

    @property
    def step_in_epoch(self) -> int:
        """Optimizer steps taken in the current epoch."""

    @property
    def rank(self) -> int:
        """This process's rank (0 without torchrun)."""

    @property
    def world_size(self) -> int:
        """How many processes train together (1 without torchrun)."""

    @property
    def is_global_zero(self) -> bool:
        """Whether this is the process that writes files and reports progress."""

    @property
    def is_distributed(self) -> bool:
        """Whether a process group is running (several processes; collectives needed)."""

    @property
    def parallelism(self) -> str:
        """``"single"``, ``"ddp"`` (replicated model) or ``"fsdp"`` (sharded model)."""

    @property
    def run_dir(self) -> Path | None:
        """The run folder (None for a run that writes nothing)."""

    @property
    def config(self) -> APTConfig:
        """The validated run configuration; writing to it raises :class:`~apt.errors.ReadOnlyConfigError`."""

    @property
    def model(self) -> torch.nn.Module | None:
        """The model (unwrapped: never the DDP wrapper); None before it is built."""

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer; None before it is built."""

    @property
    def device(self) -> torch.device:
        """Where the model runs."""

    @property
    def dtype(self) -> torch.dtype:
        """The autocast dtype of forward passes (parameters stay fp32)."""

    @property
    def schedule(self) -> Schedule:
        """The run's schedule: ``schedule.get_param(name, epoch=, step=)`` reads an annealed value."""

    @property
    def val_batches(self) -> list[tuple[Tensor, Tensor]]:
        """This process's fixed validation batches ``(x, y)``, each ``(B, T)``."""

    @property
    def tokenizer(self) -> Any:
        """The run's tokenizer (``encode``, ``decode``, ``vocab_size``)."""

    def request_stop(self, reason: str, source: str | None = None) -> None:
        """Ask the run to stop after the current step (requests from several plugins combine)."""

    def sync_optimizer(self) -> None:
        """Make the optimizer match the model after a plugin added or removed parameters."""

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """``t`` summed over all processes, in place (identity with one process)."""

    def all_reduce_mean(self, t: Tensor) -> Tensor:
        """``t`` averaged over all processes, in place (identity with one process)."""

    def check_fingerprint(self, saved: dict[str, Any] | None, strict: bool = False) -> list[str]:
        """How the plugin set differs from ``saved`` (a state's ``fingerprint``); raises when strict."""

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs (a collective under FSDP: every rank calls it)."""
