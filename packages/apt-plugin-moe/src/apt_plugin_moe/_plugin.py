"""MoEPlugin: providers ``router:topk``, ``ffn:moe``, ``plot:moe_load``, ``hf_ffn:mixtral`` and the MoE lifecycle."""

from __future__ import annotations

import math
from typing import Any

import torch
from apt.core import ProviderRegistry
from apt.errors import CheckpointError
from apt.errors import ConfigError
from apt.plugins import HookManager
from apt.plugins import Plugin
from apt.plugins import TrainerView
from torch import Tensor
from torch import nn

from apt_plugin_moe._config import MoEConfig
from apt_plugin_moe._experts import StackedExperts
from apt_plugin_moe._layer import MoELayer
from apt_plugin_moe._metrics import reduce_moe_stats
from apt_plugin_moe._mixtral import MixtralConverter
from apt_plugin_moe._plot import plot_expert_load
from apt_plugin_moe._router import TopKRouter
from apt_plugin_moe._upcycle import stack_ffns
from apt_plugin_moe._upcycle import upcycle_ffn


__all__ = ["MoEPlugin", "moe_layers"]


def moe_layers(model: nn.Module) -> list[tuple[int, MoELayer]]:
    """``(block index, layer)`` of every MoE FFN in ``model`` (module order when it has no ``blocks``)."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        found = [(i, getattr(b, "ffn", None)) for i, b in enumerate(blocks)]
        return [(i, f) for i, f in found if isinstance(f, MoELayer)]
    return list(enumerate(m for m in model.modules() if isinstance(m, MoELayer)))


class MoEPlugin(Plugin):
    """Turns the model's FFNs into top-k Mixture-of-Experts layers.

    Enabled from the start, it replaces the FFN of the blocks chosen by ``moe.layers``
    with fresh MoE layers in ``on_model_built``. Enabled by a schedule at epoch N > 0
    (``schedules: {enable_moe_at_epoch: N}``), it *upcycles*: each dense FFN becomes an
    MoE whose experts are copies of it, so the model's output is unchanged, and the
    optimizer is told about the new parameters. Each micro-batch adds the named loss
    terms ``moe_aux`` (Switch balance loss, 1 at perfect balance, averaged over MoE
    layers, times ``aux_loss_weight``) and ``moe_z`` (router z-loss times
    ``z_loss_weight``); each optimizer step logs ``moe/...`` routing metrics.

    Experts are stacked weight tensors (:class:`~apt_plugin_moe.StackedExperts`) so that
    they can run as one grouped matmul; fresh ones are built with the core ffn provider
    named by ``moe.expert_ffn`` and copied into the stack, so they have that provider's
    layout and init.
    """

    name = "moe"
    version = "1.0.0"
    description = "Top-k Mixture-of-Experts FFN: fast sorted dispatch, balance/z losses, sparse upcycling, metrics."
    providers = ("router:topk", "ffn:moe", "plot:moe_load", "hf_ffn:mixtral")
    config_model = MoEConfig
    state_version = 1
    config: MoEConfig  # validated once (by the plugin manager, or Plugin.__init__ from a mapping); read-only

    def __init__(self, config: MoEConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.aux_loss_weight = self.config.aux_loss_weight
        self.z_loss_weight = self.config.z_loss_weight
        self.capacity_factor = self.config.capacity_factor
        self.upcycled_at: dict[str, int | None] | None = None  # epoch/step of the upcycling, if any

    # --- providers ----------------------------------------------------------------------

    def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
        """Register ``router:topk``, ``ffn:moe``, ``plot:moe_load`` and ``hf_ffn:mixtral`` (apt export / init_from)."""
        super().setup(registry, hook_manager)
        registry.register("router", "topk", self.build_router)
        registry.register("ffn", "moe", self.build_ffn)
        registry.register("plot", "moe_load", plot_expert_load)
        registry.register("hf_ffn", "mixtral", MixtralConverter)

    def build_router(self, d_model: int, num_experts: int, top_k: int, **opts: Any) -> TopKRouter:
        """Provider ``router:topk``: ``(d_model, num_experts, top_k, jitter=0.0) -> TopKRouter``."""
        unknown = set(opts) - {"jitter"}
        if unknown:
            raise ConfigError(f"router:topk takes only the option 'jitter', got {sorted(unknown)}", key="moe")
        return TopKRouter(d_model, num_experts, top_k, float(opts.get("jitter", self.config.jitter)))

    def build_ffn(self, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = False) -> MoELayer:
        """Provider ``ffn:moe`` with the core ffn signature; everything else comes from the ``moe`` config.

        The experts are ``moe.num_experts`` modules built by the core ffn provider
        ``moe.expert_ffn`` (width ``moe.d_ff`` or ``d_ff``) and stacked.
        """
        cfg = self.config
        width = cfg.d_ff or d_ff
        layer = MoELayer.from_config(cfg, d_model, width, dropout=dropout, bias=bias)
        layer.capacity_factor = self.capacity_factor
        if self.registry is not None:
            ffns = [
                self.registry.build("ffn", cfg.expert_ffn, d_model=d_model, d_ff=width, dropout=0.0, bias=bias)
                for _ in range(cfg.num_experts)
            ]
            bank = stack_ffns(ffns)
            if bank is not None:
                layer.experts = bank
        return layer

    # --- model --------------------------------------------------------------------------

    def on_model_built(self, trainer: TrainerView | None = None, model: Any = None, config: Any = None) -> None:
        """Enabled at build time: replace the selected blocks' FFNs with fresh MoE layers.

        New experts are initialised as the GPT initialises its FFNs (normal, std 0.02; the
        output projection 0.02 / sqrt(2 * n_layer)); the router with std 0.02. MoE layers
        the model already has (``model.ffn: moe``) are kept and initialised the same way.
        """
        if model is None:
            return
        blocks = self._blocks(model)
        n_layer = len(blocks)
        mc = getattr(config, "model", None)
        gen = torch.Generator().manual_seed(int(getattr(getattr(config, "training", None), "seed", 0)) + 4099)
        for i in self._selected(n_layer):
            block = blocks[i]
            old = block.ffn
            assert isinstance(old, nn.Module)
            if not isinstance(old, MoELayer):
                ref = next(old.parameters())
                d_model = getattr(mc, "d_model", None) or ref.shape[-1]
                d_ff = getattr(mc, "ffn_hidden", None) or ref.shape[0]
                dropout = float(getattr(mc, "dropout", 0.0))
                bias = bool(getattr(mc, "bias", False))
                old = self.build_ffn(d_model=d_model, d_ff=d_ff, dropout=dropout, bias=bias)
                block.ffn = old.to(device=ref.device, dtype=ref.dtype)
            _init_like_gpt(old, n_layer, gen)

    def on_enable(self, trainer: TrainerView | None = None, epoch: int | None = None, step: int | None = None) -> None:
        """Scheduled enabling: sparse-upcycle the selected dense FFNs, then sync the optimizer.

        Also called on resume (``epoch``/``step`` None) before the weights are loaded, so
        that the model has the MoE structure the checkpoint was written with.
        """
        model = trainer.model if trainer is not None else None
        if trainer is None or model is None:
            return
        blocks = self._blocks(model)
        seed = trainer.config.training.seed
        gen = torch.Generator().manual_seed(seed + 8191)
        changed = False
        for i in self._selected(len(blocks)):
            dense = blocks[i].ffn
            if isinstance(dense, MoELayer) or not isinstance(dense, nn.Module):
                continue
            blocks[i].ffn = upcycle_ffn(
                dense,
                num_experts=self.config.num_experts,
                top_k=self.config.top_k,
                capacity_factor=self.capacity_factor,
                jitter=self.config.jitter,
                shared_experts=self.config.shared_experts,
                dispatch=self.config.dispatch,
                generator=gen,
            )
            changed = True
        if changed:
            self.upcycled_at = {"epoch": epoch, "step": step}
            trainer.sync_optimizer()

    # --- training -----------------------------------------------------------------------

    def on_step_begin(
        self, trainer: TrainerView | None = None, model: Any = None, epoch: int = 0, step: int = 0
    ) -> None:
        """Read annealed ``moe_capacity`` / ``moe_aux_loss_weight`` / ``moe_z_loss_weight``; reset the stats."""
        if trainer is not None:
            schedule = trainer.schedule
            if schedule.has_param("moe_capacity"):
                self.capacity_factor = float(schedule.get_param("moe_capacity", epoch=epoch, step=step))
            if schedule.has_param("moe_aux_loss_weight"):
                self.aux_loss_weight = float(schedule.get_param("moe_aux_loss_weight", epoch=epoch, step=step))
            if schedule.has_param("moe_z_loss_weight"):
                self.z_loss_weight = float(schedule.get_param("moe_z_loss_weight", epoch=epoch, step=step))
        for _, layer in moe_layers(model) if model is not None else []:
            layer.capacity_factor = self.capacity_factor
            layer.reset_stats()

    def on_compute_loss(self, model: Any = None, **kwargs: Any) -> dict[str, Tensor] | None:
        """``moe_aux`` and ``moe_z`` of this micro-batch's forward, averaged over MoE layers, weighted."""
        layers = [layer for _, layer in moe_layers(model)] if model is not None else []
        bal = [layer.last_balance for layer in layers if layer.last_balance is not None]
        zs = [layer.last_z for layer in layers if layer.last_z is not None]
        if not bal:
            return None
        balance = torch.stack(bal).mean()
        z = torch.stack(zs).mean()
        return {"moe_aux": self.aux_loss_weight * balance, "moe_z": self.z_loss_weight * z}

    def on_step_end(
        self, trainer: TrainerView | None = None, model: Any = None, **kwargs: Any
    ) -> dict[str, float] | None:
        """Routing metrics of the step, from the layers' on-device accumulators (one host read)."""
        layers = moe_layers(model) if model is not None else []
        acc = [(i, t) for i, layer in layers if (t := layer.stats_tensor()) is not None]
        if not acc:
            return None
        stacked = torch.stack([t for _, t in acc])  # (layers, E + 7): counts and sums only
        if trainer is not None:
            trainer.all_reduce_sum(stacked)  # every rank's slots: the global batch's routing
        rows = stacked.tolist()  # the step's only host sync
        for _, layer in layers:
            layer.reset_stats()
        metrics = reduce_moe_stats(rows, [i for i, _ in acc], self.config.num_experts)
        metrics["moe/aux_loss_weight"] = self.aux_loss_weight
        metrics["moe/z_loss_weight"] = self.z_loss_weight
        if self.capacity_factor is not None:
            metrics["moe/capacity_factor"] = self.capacity_factor
        return metrics

    # --- state --------------------------------------------------------------------------

    def on_save_checkpoint(self, trainer: TrainerView | None = None, **kwargs: Any) -> dict[str, Any]:
        """Annealed values, the MoE block indices and when upcycling happened."""
        model = trainer.model if trainer is not None else None
        return {
            "aux_loss_weight": self.aux_loss_weight,
            "z_loss_weight": self.z_loss_weight,
            "capacity_factor": self.capacity_factor,
            "layers": [i for i, _ in moe_layers(model)] if model is not None else None,
            "upcycled_at": self.upcycled_at,
        }

    def on_load_checkpoint(self, trainer: TrainerView | None = None, state: Any = None, **kwargs: Any) -> None:
        """Restore the annealed values; check that the model has the checkpoint's MoE blocks."""
        if state is None:
            return
        self.aux_loss_weight = float(state["aux_loss_weight"])
        self.z_loss_weight = float(state["z_loss_weight"])
        cf = state["capacity_factor"]
        self.capacity_factor = None if cf is None else float(cf)
        self.upcycled_at = state.get("upcycled_at")
        model = trainer.model if trainer is not None else None
        want = state.get("layers")
        if model is not None and want is not None:
            have = [i for i, _ in moe_layers(model)]
            if have != list(want):
                raise CheckpointError(
                    f"plugin 'moe': the checkpoint has MoE FFNs in blocks {list(want)} but the model has them in "
                    f"{have}; resume with the same moe.layers and schedules (enable_moe_at_*) as the run that wrote it"
                )
            for _, layer in moe_layers(model):
                layer.capacity_factor = self.capacity_factor

    # --- helpers ------------------------------------------------------------------------

    def _selected(self, n_layer: int) -> list[int]:
        try:
            return self.config.selected_layers(n_layer)
        except ValueError as exc:
            raise ConfigError(str(exc), key="moe.layers") from None

    @staticmethod
    def _blocks(model: nn.Module) -> nn.ModuleList:
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.ModuleList):
            raise ConfigError(
                f"plugin 'moe' needs a model with `blocks` (an nn.ModuleList of blocks with an `ffn`), got "
                f"{type(model).__name__}",
                key="moe.layers",
            )
        return blocks


@torch.no_grad()
def _init_like_gpt(layer: nn.Module, n_layer: int, gen: torch.Generator) -> None:
    """GPT-2 init for an MoE layer: N(0, 0.02) weights, output projections N(0, 0.02/sqrt(2L)), zero biases."""
    if not isinstance(layer, MoELayer):
        return
    proj_std = 0.02 / math.sqrt(2 * n_layer)

    def normal_(t: Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=gen) * std)

    normal_(layer.router.gate.weight, 0.02)
    banks = [b for b in (layer.experts, layer.shared) if isinstance(b, StackedExperts)]
    for bank in banks:
        for name, p in bank.named_parameters():
            if name.startswith("b"):
                p.zero_()
            else:
                normal_(p, proj_std if name == "w2" else 0.02)
