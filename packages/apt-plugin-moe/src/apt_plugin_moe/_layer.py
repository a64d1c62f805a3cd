"""MoELayer: router + experts + optional shared experts, a drop-in ``ffn`` of a Block."""

from __future__ import annotations

from typing import Final
from typing import Literal

import torch
from apt.errors import ConfigError
from torch import Tensor
from torch import nn

from apt_plugin_moe._config import MoEConfig
from apt_plugin_moe._dispatch import capacity_for
from apt_plugin_moe._dispatch import loop_moe
from apt_plugin_moe._dispatch import plan_dispatch
from apt_plugin_moe._dispatch import sorted_moe
from apt_plugin_moe._experts import ExpertActivation
from apt_plugin_moe._experts import ModuleExperts
from apt_plugin_moe._experts import StackedExperts
from apt_plugin_moe._experts import compute_dtype
from apt_plugin_moe._losses import router_entropy
from apt_plugin_moe._losses import router_z_loss
from apt_plugin_moe._losses import switch_load_balancing_loss
from apt_plugin_moe._router import TopKRouter


__all__ = ["STAT_FIELDS", "MoELayer"]

#: Layout of a layer's statistics accumulator after its E per-expert slot counts.
STAT_FIELDS: Final = ("dropped", "slots", "entropy_sum", "tokens", "balance_sum", "z_sum", "forwards")


class MoELayer(nn.Module):
    """A top-k Mixture-of-Experts FFN ``(B, T, D) -> (B, T, D)``.

    ``y = sum_{j<k} gate_j(x) * expert_{e_j}(x) [+ shared(x)]``, then dropout.

    After each forward the layer keeps ``last_balance`` and ``last_z`` (scalars with
    gradient, this forward's Switch balance loss and z-loss) for the loss hook. In
    training mode it also adds, without any host sync, the forward's routing counts to
    an accumulator that :meth:`pop_stats` reads once per optimizer step.

    :param experts: an expert bank to use instead of fresh :class:`StackedExperts`
        (upcycling, Mixtral import).
    """

    experts: StackedExperts | ModuleExperts
    router: TopKRouter
    shared: StackedExperts | None
    #: Plain attributes that copies of the model must follow (align's stable state does): a
    #: schedule may anneal the capacity every step.
    synced_attributes: Final = ("capacity_factor",)

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        num_experts: int = 8,
        top_k: int = 2,
        expert_ffn: ExpertActivation = "gelu",
        bias: bool = False,
        dropout: float = 0.0,
        capacity_factor: float | None = None,
        jitter: float = 0.0,
        shared_experts: int = 0,
        dispatch: str = "auto",
        experts: StackedExperts | ModuleExperts | None = None,
        router: TopKRouter | None = None,
    ) -> None:
        super().__init__()
        if dispatch not in ("auto", "grouped_mm", "sliced", "loop"):
            raise ConfigError(
                f"moe.dispatch must be 'auto', 'grouped_mm', 'sliced' or 'loop', got {dispatch!r}", key="moe.dispatch"
            )
        self.d_model, self.d_ff = d_model, d_ff
        self.num_experts, self.top_k = num_experts, top_k
        self.capacity_factor = capacity_factor
        self.dispatch = dispatch
        self.router = router if router is not None else TopKRouter(d_model, num_experts, top_k, jitter)
        self.experts = experts if experts is not None else StackedExperts(num_experts, d_model, d_ff, expert_ffn, bias)
        # shared experts: S always-on FFNs of width d_ff, i.e. one FFN of width S*d_ff (DeepSeekMoE, Qwen-MoE)
        self.shared = StackedExperts(1, d_model, d_ff * shared_experts, expert_ffn, bias) if shared_experts else None
        self.drop = nn.Dropout(dropout)
        self.last_balance: Tensor | None = None
        self.last_z: Tensor | None = None
        self._acc: Tensor | None = None  # (E + len(STAT_FIELDS),) float64, see pop_stats

    @classmethod
    def from_config(cls, cfg: MoEConfig, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = False) -> MoELayer:
        """A layer with fresh experts from the plugin config (``cfg.d_ff`` overrides ``d_ff``)."""
        return cls(
            d_model,
            cfg.d_ff or d_ff,
            num_experts=cfg.num_experts,
            top_k=cfg.top_k,
            expert_ffn=cfg.expert_ffn,
            bias=bias,
            dropout=dropout,
            capacity_factor=cfg.capacity_factor,
            jitter=cfg.jitter,
            shared_experts=cfg.shared_experts,
            dispatch=cfg.dispatch,
        )

    # --- forward ------------------------------------------------------------------------

    def backend(self, x: Tensor) -> Literal["loop", "sliced", "grouped_mm"]:
        """The dispatch used for input ``x``: 'loop', 'sliced' or 'grouped_mm'."""
        if self.dispatch == "loop":
            return "loop"
        if self.dispatch == "sliced":
            return "sliced"
        dtype = compute_dtype(x)
        if self.dispatch == "grouped_mm":
            if not (isinstance(self.experts, StackedExperts) and self.experts.grouped_ok(dtype)):
                raise ConfigError(
                    "moe.dispatch='grouped_mm' needs a grouped matmul (torch.nn.functional.grouped_mm, or "
                    "torch._grouped_mm before torch 2.10), stacked experts, and "
                    f"d_model={self.d_model} and d_ff={self.d_ff} whose rows are multiples of 16 bytes "
                    f"in {dtype}; use moe.dispatch='auto' or 'sliced'",
                    key="moe.dispatch",
                )
            return "grouped_mm"
        # auto: grouped_mm on CUDA (no host sync), matmuls over slices on CPU (faster there, measured)
        if x.is_cuda and isinstance(self.experts, StackedExperts) and self.experts.grouped_ok(dtype):
            return "grouped_mm"
        return "sliced"

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, D) -> (B, T, D)`` (any leading shape)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, D)
        n = flat.shape[0]
        r = self.router(flat)  # logits/probs (N, E), weights/experts (N, k)
        capacity = capacity_for(n, self.top_k, self.num_experts, self.capacity_factor)
        plan = plan_dispatch(r.experts, r.weights, self.num_experts, capacity)
        backend = self.backend(flat)
        if backend == "loop":
            y = loop_moe(flat, r.weights, r.experts, plan.keep, self.experts)  # (N, D)
        else:
            y = sorted_moe(flat, r.weights, plan, self.experts, backend)
        if self.shared is not None:
            y = y + self.shared.forward_dense(flat)  # (N, D)
        y = self.drop(y)

        self.last_balance = switch_load_balancing_loss(r.probs, r.experts, self.num_experts, plan.counts)
        self.last_z = router_z_loss(r.logits)
        if self.training:
            self._accumulate(r.probs, plan.counts, plan.num_dropped, n)
        out: Tensor = y.view(shape)
        return out

    # --- statistics ---------------------------------------------------------------------

    @torch.no_grad()
    def _accumulate(self, probs: Tensor, counts: Tensor, dropped: Tensor, n: int) -> None:
        assert self.last_balance is not None and self.last_z is not None
        dev = probs.device
        if self._acc is None or self._acc.device != dev:
            self._acc = torch.zeros(self.num_experts + len(STAT_FIELDS), dtype=torch.float64, device=dev)

        def const(v: float) -> Tensor:
            return probs.new_full((), v, dtype=torch.float64)  # a fill kernel, no host-to-device copy

        row = torch.cat(
            [
                counts.to(torch.float64),
                torch.stack(
                    [
                        dropped.to(torch.float64),
                        const(float(n * self.top_k)),
                        router_entropy(probs).double() * n,
                        const(float(n)),
                        self.last_balance.detach().double(),
                        self.last_z.detach().double(),
                        const(1.0),
                    ]
                ),
            ]
        )
        self._acc.add_(row)  # stays on the device: no host sync during the step

    def stats_tensor(self) -> Tensor | None:
        """The accumulator ``(E + 7,)``: per-expert slot counts, then :data:`STAT_FIELDS`; None if empty."""
        return self._acc

    def reset_stats(self) -> None:
        """Zero the accumulator (start of a new optimizer step)."""
        if self._acc is not None:
            self._acc.zero_()

    def extra_repr(self) -> str:
        return f"capacity_factor={self.capacity_factor}, dispatch={self.dispatch!r}"
