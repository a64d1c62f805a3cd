"""``TrainerView``: the typed ``trainer`` every hook receives (:class:`apt.train.Trainer`, ``apt generate``'s host).

Annotate a handler's ``trainer`` with it and mypy checks each read; nothing else of the trainer is a contract."""

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
    from apt.data import PreparedDataset
    from apt.data import TextDataset


__all__ = ["TrainerView"]


@runtime_checkable
class TrainerView(Protocol):
    """What plugins may use of the trainer. Plugins read the attributes; they change nothing but the model."""

    global_step: int  #: optimizer steps taken (in ``on_step_end``: including the step just finished)
    epoch: int  #: the 0-based index of the current epoch
    step_in_epoch: int  #: optimizer steps taken in the current epoch
    rank: int  #: this process's rank (0 without torchrun)
    world_size: int  #: processes training together (1 without torchrun)
    is_global_zero: bool  #: whether this process writes files and reports progress
    parallelism: str  #: ``"single"``, ``"ddp"`` (replicated model) or ``"fsdp"`` (sharded model)
    run_dir: Path | None  #: the run folder (None for a run that writes nothing)
    config: APTConfig  #: the validated run config; a write raises ReadOnlyConfigError
    model: torch.nn.Module | None  #: the model, never the DDP wrapper (None before it is built)
    optimizer: torch.optim.Optimizer | None  #: the optimizer (None before it is built)
    device: torch.device  #: where the model runs
    dtype: torch.dtype  #: the autocast dtype of forward passes (parameters stay fp32)
    stop_reason: str | None  #: why the run stops after this step (a plugin's or the core's), else None

    # whether a process group is running (collectives needed)
    @property
    def is_distributed(self) -> bool: ...
    # the run's schedule; ``schedule.get_param(name, epoch=, step=)`` reads an annealed value
    @property
    def schedule(self) -> Schedule: ...
    # this process's fixed validation batches ``(x, y)``, each ``(B, T)``
    @property
    def val_batches(self) -> list[tuple[Tensor, Tensor]]: ...
    # the run's data (``train`` and ``val`` tokens, ``tokenizer``); None where no data is loaded (``apt generate``)
    @property
    def data(self) -> TextDataset | PreparedDataset | None: ...
    # the run's tokenizer (``encode``, ``decode``, ``vocab_size``)
    @property
    def tokenizer(self) -> Any: ...
    # ask the run to stop after the current step (requests from several plugins combine)
    def request_stop(self, reason: str, source: str | None = None) -> None: ...
    # veto the coming optimizer step (from ``on_after_backward`` or ``on_before_optimizer_step``)
    def skip_optimizer_step(self, reason: str) -> None: ...
    # make the optimizer match the model after a plugin added or removed parameters
    def sync_optimizer(self) -> None: ...
    # ``t`` summed over all processes, in place (identity with one process)
    def all_reduce_sum(self, t: Tensor) -> Tensor: ...
    # ``t`` averaged over all processes, in place (identity with one process)
    def all_reduce_mean(self, t: Tensor) -> Tensor: ...
    # how the plugin set differs from ``saved`` (a state's ``fingerprint``); raises when strict
    def check_fingerprint(self, saved: dict[str, Any] | None, strict: bool = False) -> list[str]: ...
    # everything an exact resume needs (a collective under FSDP: every rank calls it)
    def state_dict(self) -> dict[str, Any]: ...
