"""How the model runs under torchrun: replicated (DDP) or sharded (FSDP2), and its state dicts.

With ``training.distributed: fsdp`` every transformer block becomes one FSDP2 unit
(``fully_shard``): its parameters live sharded across the ranks and are gathered just for
its forward and backward; the root unit holds the embeddings, the final norm and the head.
Checkpoints stay in the full (unsharded) layout: the state is gathered onto rank 0 with
``torch.distributed.checkpoint.state_dict`` and every rank loads the full state back, so a
checkpoint written under FSDP2 resumes under FSDP2, DDP or one process alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch import nn

from apt.errors import ConfigError
from apt.errors import UsageError
from apt.train._weights import shape_mismatches


__all__ = [
    "ddp_find_unused",
    "fsdp_shard",
    "full_model_state",
    "full_optimizer_state",
    "grad_norm_value",
    "load_model_state",
    "load_optimizer_state",
    "refuse_scheduled_model_plugins",
]


def ddp_find_unused(setting: bool | str, core_params: frozenset[str], model: nn.Module) -> bool:
    """DDP's ``find_unused_parameters`` for ``training.ddp_find_unused``.

    ``"auto"``: on only when plugins changed the model's parameters (their names differ from
    ``core_params``, those of the model as core built it): the core model uses every
    parameter in every step, and the extra autograd traversal would be wasted.
    """
    if setting == "auto":
        return frozenset(name for name, _ in model.named_parameters()) != core_params
    return bool(setting)


def fsdp_shard(model: nn.Module) -> None:
    """Shard ``model`` in place: one FSDP2 unit per block of ``model.blocks`` (if any), then the root."""
    from torch.distributed.fsdp import fully_shard

    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        for block in blocks:
            fully_shard(block)
    fully_shard(model)


def refuse_scheduled_model_plugins(plugin_manager: Any) -> None:
    """FSDP2 shards the model once, at set-up: a plugin that works on the model as it is built
    (an ``on_model_built`` handler) may not switch on or off later.

    :raises ConfigError: naming the first such plugin that has a schedule.
    """
    from apt.plugins.base import handled_events

    for plugin in plugin_manager.loaded():
        name = plugin.get_name()
        if "on_model_built" in handled_events(type(plugin)) and plugin_manager.schedule.is_scheduled(name):
            raise ConfigError(
                f"plugin {name!r} works on the model as it is built (on_model_built) and is scheduled to switch "
                "on or off during the run, which a model sharded with training.distributed=fsdp cannot take; "
                "remove its schedule (run it from the start) or use training.distributed=ddp",
                key="schedules",
            )


def _options(cpu_offload: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The unsharded weights on rank 0 (on the CPU), ``{}`` elsewhere. A collective: call it on every rank."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state: dict[str, Tensor] = get_model_state_dict(model, options=_options(cpu_offload=True))  # type: ignore[assignment]
    return state


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, unsharded, on rank 0 (a collective, like the model's)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return dict(get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True)))


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any], sharded: bool
) -> None:
    """Load an optimizer state written by :func:`full_optimizer_state` or by ``optimizer.state_dict()``.

    Name-keyed states (from an FSDP2 run) load into any layout; index-keyed ones (from DDP
    or one process) only into an unsharded model, whose parameter order they describe.
    """
    groups = state.get("param_groups") or []
    by_name = any(isinstance(p, str) for group in groups for p in group.get("params", []))
    if by_name:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim_state_dict=dict(state), options=_options(cpu_offload=False))
    elif sharded:
        raise UsageError(
            "this checkpoint was written without training.distributed=fsdp, and its optimizer state cannot be "
            "resumed into a sharded model; resume it with training.distributed=ddp (or one process)"
        )
    else:
        optimizer.load_state_dict(dict(state))


def load_model_state(
    model: nn.Module, state: Mapping[str, Tensor], sharded: bool
) -> tuple[list[str], list[str], list[str]]:
    """Load full weights into ``model`` (sharding them where it is sharded).

    :returns: (missing, unexpected, mismatched shapes); nothing is loaded when shapes differ.
    """
    mismatched = shape_mismatches(model.state_dict(), state)  # a sharded model's DTensors have full shapes
    if mismatched:
        return [], [], mismatched
    if not sharded:
        missing, unexpected = model.load_state_dict(dict(state), strict=False)
        return list(missing), list(unexpected), []
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    names = set(model.state_dict())  # local shards; no communication
    unexpected = sorted(set(state) - names)
    missing = sorted(names - set(state))
    if not missing and not unexpected:
        set_model_state_dict(model, dict(state), options=_options(cpu_offload=False))
    return missing, unexpected, []


def grad_norm_value(norm: Tensor) -> float:
    """A total gradient norm as a float (under FSDP2 it is a DTensor, whose full value needs a collective)."""
    full_tensor = getattr(norm, "full_tensor", None)
    return float(full_tensor() if callable(full_tensor) else norm)
