"""VFTPlugin: providers ``attention:tva`` and ``ffn:vft``, the ``vft_ortho`` loss term and ``vft/`` metrics."""

from __future__ import annotations

from typing import Any

import torch
from apt.core import ProviderRegistry
from apt.errors import ConfigError
from apt.plugins import HookManager
from apt.plugins import Plugin
from apt.plugins import TrainerView
from torch import Tensor
from torch import nn

from apt_plugin_vft._attention import TriVeinAttention
from apt_plugin_vft._config import VFTConfig
from apt_plugin_vft._ffn import VeinFlowFFN
from apt_plugin_vft._vein import orthogonality_error


__all__ = ["TAU_SCHEDULE", "VFTPlugin", "vein_modules"]

#: the annealed parameter (``schedules.vft_tau``) that sets the compensator's threshold
TAU_SCHEDULE = "vft_tau"


def vein_modules(model: nn.Module) -> tuple[list[TriVeinAttention], list[VeinFlowFFN]]:
    """The model's ``attention:tva`` and ``ffn:vft`` modules, each in module order (= block order in a GPT)."""
    attns = [m for m in model.modules() if isinstance(m, TriVeinAttention)]
    ffns = [m for m in model.modules() if isinstance(m, VeinFlowFFN)]
    return attns, ffns


class VFTPlugin(Plugin):
    """Tri-Vein attention and the Vein-Flow feed-forward as providers.

    Choose them in the model section (``model.attention: tva``, ``model.ffn: vft``); the
    ``vft:`` section sets ranks, the threshold ``tau`` and the optional paths. Loaded
    without either provider selected, the plugin does nothing. With them, each micro-batch
    adds the loss term ``vft_ortho`` (``ortho_weight`` × Σ ‖V Vᵀ − I‖²_F over every vein) and
    each optimizer step logs, summed over all processes:

    ``vft/layer{i}/eps_mean``, ``vft/layer{i}/frac_over_tau``
        mean relative off-manifold rate ``ε`` of the feed-forward's input tokens in the i-th
        ``ffn:vft`` layer, and the fraction of them above ``τ`` (where the compensator fires);
    ``vft/eps_mean``, ``vft/frac_over_tau``
        the same over every layer's tokens;
    ``vft/tau``, ``vft/ortho_err``
        the threshold in force (annealed by ``schedules.vft_tau``) and the largest
        ``‖V Vᵀ − I‖_F`` of any vein.
    """

    name = "vft"
    version = "1.0.0"
    description = "Tri-Vein attention (per-head rank-r vein subspace) and the Vein-Flow FFN with its compensator."
    providers = ("attention:tva", "ffn:vft")
    config_model = VFTConfig

    config: VFTConfig

    def __init__(self, config: VFTConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)  # validated once (by the plugin manager, or here from a mapping); read-only
        self.tau = self.config.tau

    # --- providers ----------------------------------------------------------------------

    def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
        """Register ``attention:tva`` and ``ffn:vft``."""
        super().setup(registry, hook_manager)
        registry.register("attention", "tva", self.build_attention)
        registry.register("ffn", "vft", self.build_ffn)

    def build_attention(
        self, d_model: int, n_head: int, block_size: int, dropout: float = 0.0, bias: bool = False
    ) -> TriVeinAttention:
        """Provider ``attention:tva`` with the core attention signature; ``rank`` and ``fold`` from ``vft``."""
        hs = d_model // n_head
        if self.config.rank > hs:
            raise ConfigError(
                f"vft.rank ({self.config.rank}) exceeds the head size model.d_model/model.n_head "
                f"({d_model}/{n_head} = {hs}); set vft.rank to at most {hs}",
                key="vft.rank",
            )
        return TriVeinAttention(
            d_model, n_head, block_size, dropout=dropout, bias=bias, rank=self.config.rank, fold=self.config.fold
        )

    def build_ffn(self, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = False) -> VeinFlowFFN:
        """Provider ``ffn:vft`` with the core ffn signature (``d_ff`` is unused: the width is ``hidden_mult * r``)."""
        cfg = self.config
        rank = cfg.ffn_vein_rank
        if rank > d_model:
            key = "vft.ffn_rank" if cfg.ffn_rank is not None else "vft.rank"
            raise ConfigError(
                f"{key} ({rank}) exceeds model.d_model ({d_model}); set {key} to at most {d_model}", key=key
            )
        if cfg.compensator and cfg.compensator_rank > d_model:
            raise ConfigError(
                f"vft.compensator_rank ({cfg.compensator_rank}) exceeds model.d_model ({d_model})",
                key="vft.compensator_rank",
            )
        return VeinFlowFFN(
            d_model, rank, cfg.hidden_mult * rank, dropout=dropout, bias=bias, stabilizer=cfg.stabilizer,
            compensator=cfg.compensator, compensator_rank=cfg.compensator_rank, tau=self.tau,
        )  # fmt: skip

    # --- training -----------------------------------------------------------------------

    def on_step_begin(
        self, trainer: TrainerView | None = None, model: Any = None, epoch: int = 0, step: int = 0
    ) -> None:
        """Read the annealed ``vft_tau`` (if scheduled), hand it to the layers, reset their statistics."""
        if trainer is not None and trainer.schedule.has_param(TAU_SCHEDULE):
            tau = float(trainer.schedule.get_param(TAU_SCHEDULE, epoch=epoch, step=step))
            if not 0.0 <= tau <= 1.0:
                raise ConfigError(
                    f"schedules.{TAU_SCHEDULE} gives tau = {tau} at step {step}; the relative off-manifold rate is in "
                    "[0, 1], so start and end must be too",
                    key=f"schedules.{TAU_SCHEDULE}",
                )
            self.tau = tau
        if model is None:
            return
        for ffn in vein_modules(model)[1]:
            ffn.tau = self.tau
            ffn.reset_stats()

    def on_compute_loss(self, model: Any = None, **kwargs: Any) -> dict[str, Tensor] | None:
        """``vft_ortho``: ``ortho_weight`` × Σ ‖V Vᵀ − I‖²_F over every vein of the model."""
        if model is None or self.config.ortho_weight == 0.0:
            return None
        veins = _veins(model)
        if not veins:
            return None
        penalty = torch.stack([orthogonality_error(v) for v in veins]).sum()
        return {"vft_ortho": self.config.ortho_weight * penalty}

    def on_step_end(
        self, trainer: TrainerView | None = None, model: Any = None, **kwargs: Any
    ) -> dict[str, float] | None:
        """The step's ``vft/`` metrics from the layers' on-device accumulators (one host read)."""
        if model is None:
            return None
        veins = _veins(model)
        if not veins:
            return None
        metrics: dict[str, float] = {"vft/tau": self.tau}
        with torch.no_grad():
            # the largest per-layer error; an attention vein's error sums its heads
            metrics["vft/ortho_err"] = float(torch.stack([orthogonality_error(v) for v in veins]).max().sqrt())
        ffns = vein_modules(model)[1]
        acc = [(i, t) for i, f in enumerate(ffns) if (t := f.stats_tensor()) is not None]
        if not acc:
            return metrics
        stacked = _all_reduce_sum(trainer, torch.stack([t for _, t in acc]))  # (layers, 3), every process's tokens
        rows = stacked.tolist()
        for f in ffns:
            f.reset_stats()
        for (i, _), (eps_sum, over, count) in zip(acc, rows, strict=True):
            metrics[f"vft/layer{i}/eps_mean"] = eps_sum / max(count, 1.0)
            metrics[f"vft/layer{i}/frac_over_tau"] = over / max(count, 1.0)
        eps_sum, over, count = (sum(col) for col in zip(*rows, strict=True))
        metrics["vft/eps_mean"] = eps_sum / max(count, 1.0)
        metrics["vft/frac_over_tau"] = over / max(count, 1.0)
        return metrics


def _veins(model: nn.Module) -> list[nn.Parameter]:
    attns, ffns = vein_modules(model)
    return [m.vein for m in attns] + [m.vein for m in ffns]


def _all_reduce_sum(trainer: TrainerView | None, t: Tensor) -> Tensor:
    """Sum ``t`` over processes: the trainer's ``all_reduce_sum``; torch.distributed when called without one."""
    if trainer is not None:
        return trainer.all_reduce_sum(t)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t
