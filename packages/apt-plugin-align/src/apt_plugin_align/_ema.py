"""The stable state: an fp32 exponential moving average of the live model's weights.

Design (see the align reference note, section 2.10):

- a ``copy.deepcopy`` of the live model, cast to fp32, in ``eval()`` mode, with
  ``requires_grad=False`` and without the live model's forward/backward hooks (a hook
  registered by another plugin must not fire, or accumulate state, for teacher passes);
- updated over ``named_parameters()``, which lists a shared tensor once, so tied weights
  (``wte``/``lm_head``) move by ``1 - m`` per update, not ``1 - m**2``; ``deepcopy`` keeps
  the tie inside the copy;
- buffers are copied, not averaged (integer buffers could not be averaged anyway);
- plain attributes that a module lists in ``synced_attributes`` (MoE's scheduled
  ``capacity_factor``) are copied before each teacher pass (:meth:`StableState.follow`),
  so the stable copy computes the live model's function, with its own weights;
- the update is one ``torch._foreach_lerp_`` call, the kernel ``AveragedModel`` uses, but
  with the decay passed per call so it can be scheduled, and without ``AveragedModel``'s
  "first call copies" rule (the copy is made at construction).

Under FSDP2 the live parameters are ``DTensor`` shards, and a deep copy of a sharded model
is no model. The stable copy is then made from a *template*: a hook-free copy of the model
taken in ``on_model_built``, before sharding, and filled with the gathered live weights.
Every rank keeps the whole fp32 stable model, as under DDP; each update and drift reading
gathers the live parameters (a collective, so every rank must call them together).
"""

from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch import nn


__all__ = ["StableState"]

# Hook dictionaries a deepcopy would otherwise carry over (bound methods in them would even
# deep-copy the plugin object that owns them).
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _full(t: Tensor) -> Tensor:
    """``t`` whole: a ``DTensor`` shard gathered from every rank (a collective), any other tensor as is."""
    full_tensor = getattr(t, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else t


def _reshard(model: nn.Module) -> None:
    """Put an FSDP2 model's parameters back into their sharded ``DTensor`` objects (a no-op if they are).

    After a forward without backward (validation), the root unit keeps plain unsharded
    parameters registered; the sharded ones are the lasting objects to pair with.
    """
    reshard = getattr(model, "reshard", None)
    if callable(reshard):
        reshard()


def copy_without_hooks(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` with every forward/backward hook dict replaced by an empty one.

    A tensor that a module keeps from its last forward as a plain attribute (MoE's
    ``last_balance``) is part of that forward's autograd graph, which deepcopy refuses; the copy
    gets it detached, a value without a graph, as the copy's own next forward would make.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for attr in _HOOK_DICTS:
            hooks = module.__dict__.get(attr)
            if hooks:  # map the original dict to a fresh empty one; deepcopy then uses it
                memo[id(hooks)] = type(hooks)()
        for value in module.__dict__.values():
            if isinstance(value, Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


class StableState:
    """An EMA copy of ``model``: ``xi <- m * xi + (1 - m) * theta`` after each optimizer step.

    :param model: the live model; copied on construction (same device, fp32).
    :param template: for a sharded (FSDP2) ``model``: an unsharded, hook-free copy of it
        (see :func:`copy_without_hooks`), made before sharding; it becomes the stable copy,
        filled with the gathered live weights.
    """

    def __init__(self, model: nn.Module, template: nn.Module | None = None) -> None:
        self.sharded = template is not None
        if template is None:
            stable = copy_without_hooks(model).float()
        else:
            _reshard(model)
            stable = _filled(template, model)
        stable.eval()
        for p in stable.parameters():
            p.requires_grad_(False)
            p.grad = None  # deepcopy copies .grad too; the stable state never has one
        self.module: nn.Module = stable
        self.num_updates = 0
        self._template = template
        self._bind(model)

    # --- structure --------------------------------------------------------------------

    def _bind(self, model: nn.Module) -> None:
        """Pair each live parameter/buffer with the stable tensor of the same name."""
        stable_params = dict(self.module.named_parameters())
        stable_buffers = dict(self.module.named_buffers())
        live_params = list(model.named_parameters())  # shared tensors appear once
        live_buffers = list(model.named_buffers())
        self._signature = self._signature_of(model)
        self._live_params = [p for _, p in live_params]
        self._stable_params: list[Tensor] = [stable_params[n] for n, _ in live_params]
        self._live_buffers = [b for _, b in live_buffers]
        self._stable_buffers = [stable_buffers[n] for n, _ in live_buffers]
        stable_modules = dict(self.module.named_modules())
        self._synced = [
            (live, stable_modules[name], tuple(names))
            for name, live in model.named_modules()
            if (names := getattr(live, "synced_attributes", ())) and name in stable_modules
        ]

    def follow(self, model: nn.Module) -> None:
        """Copy to the stable modules the plain attributes their live twins list in ``synced_attributes``.

        A schedule may change such an attribute every step (MoE's ``capacity_factor``); the
        teacher pass and the stable validation must route like the live model does.
        """
        for live, stable, names in self._synced:
            for name in names:
                setattr(stable, name, getattr(live, name))

    @staticmethod
    def signature(model: nn.Module) -> tuple[tuple[str, int, tuple[int, ...]], ...]:
        """Names, identities and shapes of ``model``'s parameters: changes when a plugin edits the model."""
        return tuple((n, id(p), tuple(p.shape)) for n, p in model.named_parameters())

    def _signature_of(self, model: nn.Module) -> tuple[tuple[str, int, tuple[int, ...]], ...]:
        # sharded: names and shapes only, as FSDP2 swaps parameter objects around each forward
        if self.sharded:
            return tuple((n, 0, tuple(p.shape)) for n, p in model.named_parameters())
        return self.signature(model)

    def matches(self, model: nn.Module) -> bool:
        """Whether ``model`` still has the parameters this stable state was built from."""
        return self._signature_of(model) == self._signature

    def rebuild(self, model: nn.Module) -> tuple[int, int]:
        """Follow a structural change of the live model (MoE upcycling, a replaced block ...).

        The stable copy is re-created from ``model``; every tensor whose name and shape are
        unchanged keeps its EMA value, new ones start from the live values (as at activation),
        removed ones are dropped. The update count is kept, so the decay schedule continues.

        :returns: ``(kept, new)``, the number of parameter/buffer tensors in each group.
        """
        old = self.state_dict()["tensors"]
        fresh = StableState(model, copy.deepcopy(self._template) if self._template is not None else None)
        kept = fresh._load_matching(old)
        self.module = fresh.module
        self._bind(model)
        n_total = len(self._named_stable_tensors())
        return kept, n_total - kept

    # --- teacher pass -----------------------------------------------------------------

    @torch.no_grad()
    def forward(self, idx: Tensor, return_hidden: bool = True, autocast_dtype: torch.dtype = torch.float32) -> Any:
        """The stable model's output on ``idx`` ``(B, T)``, without autograd.

        :param autocast_dtype: run under autocast to this dtype (the trainer's ``dtype``), as the
            live forward does; ``float32`` runs plainly.
        """
        device = idx.device
        ctx = (
            contextlib.nullcontext()
            if autocast_dtype == torch.float32
            else torch.autocast(device_type=device.type, dtype=autocast_dtype)
        )
        with ctx:
            return self.module(idx, return_hidden=return_hidden)

    # --- update -----------------------------------------------------------------------

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """One EMA step towards ``model`` with decay ``decay`` (in ``[0, 1]``); copies buffers.

        :raises ValueError: for a decay outside ``[0, 1]``.
        """
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"Invalid decay value {decay} provided. Please provide a value in [0,1] range.")
        if not self.matches(model):
            self.rebuild(model)
        if self.sharded:
            _reshard(model)
        if self._stable_params:
            live = self._live_fp32()
            # xi <- xi + (1 - m) (theta - xi)  ==  m xi + (1 - m) theta
            torch._foreach_lerp_(self._stable_params, live, 1.0 - decay)
        for s, b in zip(self._stable_buffers, self._live_buffers, strict=True):
            s.copy_(b)
        self.num_updates += 1

    def _live_fp32(self) -> list[Tensor]:
        """The live parameters in fp32, whole (gathered from every rank when sharded)."""
        if self.sharded:
            return [_full(p.detach()).to(torch.float32) for p in self._live_params]
        return [p.detach().to(torch.float32) for p in self._live_params]

    @torch.no_grad()
    def drift(self, model: nn.Module) -> float:
        """``||theta - xi|| / ||xi||`` over all parameters: how far apart the two states are.

        It grows before a self-distillation run diverges (the align reference note, section 6).
        """
        if not self.matches(model) or not self._stable_params:
            return float("nan")
        if self.sharded:
            _reshard(model)
        live = self._live_fp32()
        diff = torch._foreach_sub(live, self._stable_params)
        num = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(diff)))
        den = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self._stable_params)))
        return float(num / den) if float(den) > 0 else float("inf")

    # --- state ------------------------------------------------------------------------

    def _named_stable_tensors(self) -> dict[str, Tensor]:
        """Parameters and buffers of the stable copy, each shared tensor once."""
        out: dict[str, Tensor] = OrderedDict(self.module.named_parameters())
        out.update(self.module.named_buffers())
        return out

    def state_dict(self) -> dict[str, Any]:
        """``{"tensors": {name: fp32 tensor}, "num_updates": int}``; tensors are cloned, shared ones listed once."""
        tensors = {k: v.detach().clone() for k, v in self._named_stable_tensors().items()}
        return {"tensors": tensors, "num_updates": self.num_updates}

    def _load_matching(self, tensors: Mapping[str, Tensor]) -> int:
        """Copy the tensors whose name and shape match; returns how many."""
        kept = 0
        with torch.no_grad():
            for name, target in self._named_stable_tensors().items():
                source = tensors.get(name)
                if source is not None and tuple(source.shape) == tuple(target.shape):
                    target.copy_(source)
                    kept += 1
        return kept

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> int:
        """Restore what :meth:`state_dict` returned; returns how many tensors were restored.

        :param strict: require exactly the same tensor names and shapes (the default); with
            ``False`` matching tensors are restored and the others keep their current values.
        :raises KeyError: in strict mode, naming the missing/unexpected/mismatched tensors.
        """
        tensors: Mapping[str, Tensor] = state["tensors"]
        own = self._named_stable_tensors()
        if strict:
            missing = sorted(set(own) - set(tensors))
            unexpected = sorted(set(tensors) - set(own))
            shape = sorted(n for n in set(own) & set(tensors) if tuple(own[n].shape) != tuple(tensors[n].shape))
            if missing or unexpected or shape:
                raise KeyError(
                    f"stable state does not match the model: missing {missing}, unexpected {unexpected}, "
                    f"shape mismatch {shape}"
                )
        kept = self._load_matching(tensors)
        self.num_updates = int(state["num_updates"])
        return kept


@torch.no_grad()
def _filled(template: nn.Module, model: nn.Module) -> nn.Module:
    """``template`` in fp32 on ``model``'s device, holding ``model``'s (gathered) weights and buffers."""
    device = next(model.parameters()).device
    stable = template.to(device=device, dtype=torch.float32)
    params = dict(stable.named_parameters())
    buffers = dict(stable.named_buffers())
    for name, p in model.named_parameters():  # shared tensors appear once, in the same order on every rank
        params[name].copy_(_full(p.detach()))
    for name, b in model.named_buffers():
        buffers[name].copy_(b)
    return stable
