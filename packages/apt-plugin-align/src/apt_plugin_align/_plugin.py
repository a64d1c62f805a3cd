"""``AlignPlugin``: bistate alignment, wired into the trainer's hooks.

Lifecycle (see the align reference note, section 3):

1. *Inactive* until the first step of ``align.start_epoch`` (or of the epoch in which a
   schedule ``enable_align_at_epoch`` enables the plugin, whichever is later). Until then
   every hook returns ``None`` and touches nothing, RNG included: the run is bitwise the
   run without the plugin.
2. *Activation* copies the live model into the fp32 :class:`StableState`.
3. Every micro-batch: a teacher forward with the stable weights under ``no_grad`` and the
   terms ``align_kl = w alpha T^2 KL_T`` and ``align_hidden = w beta (1 - cos)``
   (skipped entirely when ``alpha = beta = 0``).
4. Every applied optimizer step: one EMA update with the scheduled decay.
5. Validation: the stable state is evaluated on the same batches as the live model.
6. Train end: the stable weights go to ``run_dir/align/stable.safetensors``, which the
   ``weights:stable`` provider serves to ``apt generate --weights stable``.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING
from typing import Any

import torch
from torch import Tensor
from torch import nn

from apt.errors import CheckpointError
from apt.errors import ConfigError
from apt.plugins import Plugin
from apt.plugins import TrainerView
from apt.plugins import hook
from apt_plugin_align._config import AlignConfig
from apt_plugin_align._ema import StableState
from apt_plugin_align._ema import copy_without_hooks
from apt_plugin_align._losses import hidden_cosine_loss
from apt_plugin_align._losses import temperature_kl
from apt_plugin_align._metrics import StepStats
from apt_plugin_align._metrics import compare_states
from apt_plugin_align._metrics import summarize_comparison
from apt_plugin_align._schedules import align_weight
from apt_plugin_align._schedules import ema_decay_at
from apt_plugin_align._weights import load_stable_weights
from apt_plugin_align._weights import save_stable_weights


if TYPE_CHECKING:
    from apt.core import ProviderRegistry
    from apt.plugins import HookManager


__all__ = ["AlignPlugin"]

log = logging.getLogger("apt.align")


class AlignPlugin(Plugin):
    """Keeps an EMA *stable state* of the model and aligns the live model to it.

    :param config: the validated ``align:`` section (an :class:`AlignConfig`, a mapping, or ``None``).
    """

    name = "align"
    version = "1.0.0"
    description = "Bistate alignment: an EMA stable state kept consistent with the live model by a scheduled loss."
    providers = ("align:bistate", "weights:stable")
    config_model = AlignConfig
    state_version = 1

    config: AlignConfig  # validated once (by the plugin manager, or Plugin.__init__ from a mapping); read-only

    def __init__(self, config: AlignConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.stable: StableState | None = None
        self.activation_step: int | None = None
        self.activation_epoch: int | None = None
        self._pending: dict[str, Any] | None = None  # a loaded state waiting for the model
        self._steps_per_epoch = 0
        self._total_steps = 0
        self._stats = StepStats()
        self._weight = 0.0
        self._decay: float | None = None
        self._template: nn.Module | None = None  # FSDP2: the unsharded model's structure, see capture_template

    # --- setup --------------------------------------------------------------------------

    def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
        """Register ``align:bistate`` (builds a :class:`StableState` from a model) and ``weights:stable``."""
        super().setup(registry, hook_manager)
        registry.register("align", "bistate", StableState)
        registry.register("weights", "stable", load_stable_weights)

    # --- activation ---------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether the stable state exists (or is waiting in a loaded checkpoint)."""
        return self.stable is not None or self._pending is not None

    def _read_trainer(self, trainer: TrainerView | None) -> None:
        if trainer is not None:
            training = trainer.config.training
            self._steps_per_epoch = training.steps_per_epoch
            self._total_steps = training.steps_per_epoch * training.max_epochs

    @hook("on_model_built", priority=-(10**9))
    def capture_template(self, trainer: TrainerView | None, model: nn.Module) -> None:
        """Under FSDP2, keep a hook-free copy of the finished model (on the CPU) before it is sharded.

        It runs after every other ``on_model_built`` handler (lowest priority), so it sees the
        model as the other plugins left it (MoE layers in place). A sharded model cannot be
        copied into a working module; the stable state is later built from this copy.
        """
        if trainer is not None and trainer.parallelism == "fsdp":
            self._template = copy_without_hooks(model).to("cpu")

    def _build_stable(self, model: nn.Module) -> StableState:
        kwargs: dict[str, Any] = {"model": model}
        if _is_sharded(model):
            if self._template is None:
                raise ConfigError(
                    "align under training.distributed=fsdp must be enabled when the model is built (it copies "
                    "the unsharded model then); remove its schedule and use align.start_epoch to start it later",
                    key="schedules",
                )
            kwargs["template"] = copy.deepcopy(self._template)
        if self.registry is not None and self.registry.has("align", "bistate"):
            state: StableState = self.registry.build("align", "bistate", **kwargs)
            return state
        return StableState(**kwargs)

    def activate(self, model: nn.Module, epoch: int, step: int) -> None:
        """Create the stable state as a copy of ``model`` now (epoch ``epoch``, global step ``step``).

        The trainer path calls this from ``on_step_begin`` of the first step in which the plugin
        is enabled (from the start, or by a schedule's ``on_enable``) and ``epoch >= start_epoch``:
        by then every plugin enabled at the same boundary (MoE upcycling) has changed the model,
        and a model rebuilt for ``apt generate`` never pays for a copy.
        """
        self.stable = self._build_stable(model)
        self.activation_step, self.activation_epoch = step, epoch
        n = sum(p.numel() for p in self.stable.module.parameters())
        log.info("align: stable state created at epoch %d, step %d (%d parameters, fp32)", epoch, step, n)

    def _maybe_activate(
        self, trainer: TrainerView | None, model: nn.Module | None, epoch: int | None, step: int | None
    ) -> None:
        if model is None:
            return
        if self._pending is not None:
            self._materialize(model)
        if self.stable is None and epoch is not None and step is not None and epoch >= self.config.start_epoch:
            self._read_trainer(trainer)
            self.activate(model, epoch, step)
        elif self.stable is not None and not self.stable.matches(model):
            kept, new = self.stable.rebuild(model)
            log.info("align: the model's parameters changed; stable state rebuilt (%d tensors kept, %d new)", kept, new)

    def _materialize(self, model: nn.Module) -> None:
        """Turn a loaded checkpoint state into a stable state shaped like ``model``."""
        pending, self._pending = self._pending, None
        assert pending is not None
        stable = self._build_stable(model)
        kept = stable.load_state_dict(pending, strict=False)
        total = len(pending["tensors"])
        if kept < total:
            log.warning("align: %d of %d checkpointed stable tensors match the model; the others restart", kept, total)
        self.stable = stable

    # --- training -----------------------------------------------------------------------

    def on_train_begin(self, trainer: TrainerView | None) -> None:
        """Read the run's length (one epoch is the default ramp; the run's end, the default anneal)."""
        self._read_trainer(trainer)

    def on_step_begin(self, trainer: TrainerView | None, model: nn.Module, epoch: int, step: int) -> None:
        """Activate when due, follow model changes, restore a loaded state, and fix this step's ``w(t)``."""
        self._maybe_activate(trainer, model, epoch, step)
        self._stats.reset()
        if self.stable is not None:
            self._weight = align_weight(step, self.activation_step, self._ramp_steps(), self.config.ramp)

    def _ramp_steps(self) -> int:
        if self.config.ramp_steps is not None:
            return self.config.ramp_steps
        return self._steps_per_epoch

    def on_compute_loss(
        self, trainer: TrainerView | None, model: nn.Module, batch: Any, outputs: Any
    ) -> dict[str, Tensor] | None:
        """Teacher forward with the stable weights and the two weighted alignment terms."""
        if self.stable is None or self.config.ema_only:
            return None
        self.stable.follow(model)
        cfg = self.config
        x, y = batch
        if cfg.beta > 0 and getattr(outputs, "hidden", None) is None:
            raise ConfigError(
                "align.beta > 0 needs the live model's final hidden states, but the trainer passed outputs "
                "without .hidden; set align.beta: 0 or use a trainer that runs the model with return_hidden=True",
                key="align.beta",
            )
        teacher = self.stable.forward(x, cfg.beta > 0, trainer.dtype if trainer is not None else torch.float32)
        mask = y >= 0  # (B, T) targets of -1 are ignored, as in the model's loss
        kl = temperature_kl(outputs.logits, teacher.logits, cfg.tau_align, mask)
        hidden = hidden_cosine_loss(outputs.hidden, teacher.hidden, mask) if cfg.beta > 0 else None
        self._stats.add(kl, hidden)
        w = self._weight
        terms = {"align_kl": w * cfg.alpha * cfg.tau_align**2 * kl}
        if hidden is not None:
            terms["align_hidden"] = w * cfg.beta * hidden
        return terms

    def on_optimizer_step(self, model: nn.Module) -> None:
        """One EMA update of the stable state per applied optimizer step."""
        if self.stable is None:
            return
        cfg = self.config
        k = self.stable.num_updates + 1
        total = cfg.ema_schedule_steps
        if total is None:
            total = max(self._total_steps - (self.activation_step or 0), 1)
        self._decay = ema_decay_at(cfg.ema_schedule, k, cfg.ema_decay, cfg.decay_end, total)
        self.stable.update(model, self._decay)

    def on_step_end(self, trainer: TrainerView | None) -> dict[str, float] | None:
        """``align/w``, ``align/decay``, ``align/num_updates`` and the raw ``align/kl``, ``align/hidden``."""
        if self.stable is None:
            return None
        out = {"align/w": self._weight, "align/num_updates": float(self.stable.num_updates)}
        if self._decay is not None:
            out["align/decay"] = self._decay
        reduce = trainer.all_reduce_sum if trainer is not None else None  # every process's micro-batches
        out.update({f"align/{k}": v for k, v in self._stats.means(reduce).items()})
        return out

    # --- validation ---------------------------------------------------------------------

    def on_validation_end(self, trainer: TrainerView, model: nn.Module) -> dict[str, float] | None:
        """Validate both states on the trainer's validation batches.

        :returns: ``align/stable_val_loss``, ``align/live_val_loss``, ``align/argmax_agreement`` and
            ``align/param_drift`` (``||theta - xi|| / ||xi||``).
        """
        if self.stable is None or not self.config.eval_stable:
            return None
        batches = trainer.val_batches  # the trainer's fixed windows, this process's share
        self.stable.follow(model)
        device = next(self.stable.module.parameters()).device
        totals = compare_states(model, self.stable.module, batches, device, trainer.dtype)
        trainer.all_reduce_sum(totals)  # each process validated its own share of the windows
        out = {f"align/{k}": v for k, v in summarize_comparison(totals).items()}
        out["align/param_drift"] = self.stable.drift(model)
        return out

    # --- end of run ---------------------------------------------------------------------

    def on_train_end(self, trainer: TrainerView | None, model: nn.Module) -> None:
        """Write ``run_dir/align/stable.safetensors`` (rank 0) for ``apt generate --weights stable``."""
        if self._pending is not None:
            self._materialize(model)
        self._save_stable(trainer)

    def on_disable(self, trainer: TrainerView | None = None, epoch: int | None = None, step: int | None = None) -> None:
        """A schedule stops align: its stable state stops moving, so write it now (no ``on_train_end`` follows)."""
        self._save_stable(trainer)

    def _save_stable(self, trainer: TrainerView | None) -> None:
        if trainer is None:
            return
        if self._pending is not None and trainer.model is not None:
            self._materialize(trainer.model)  # a resumed state not used by a step yet
        if self.stable is None or not self.config.save_stable or trainer.run_dir is None or not trainer.is_global_zero:
            return
        path = save_stable_weights(self.stable.module, trainer.run_dir)
        log.info("align: stable weights (%d EMA updates) written to %s", self.stable.num_updates, path)

    # --- state --------------------------------------------------------------------------

    def on_save_checkpoint(self) -> dict[str, Any] | None:
        """EMA tensors (fp32, shared ones once), update count and activation point; ``None`` before activation."""
        if self.stable is not None:
            stable = self.stable.state_dict()
        elif self._pending is not None:
            stable = self._pending
        else:
            return None
        return {
            "activation_step": self.activation_step,
            "activation_epoch": self.activation_epoch,
            "num_updates": stable["num_updates"],
            "tensors": stable["tensors"],
            "decay": self._decay,
        }

    def on_load_checkpoint(self, state: Any) -> None:
        """Restore the stable state; it is rebuilt against the model at the next hook that sees it."""
        if state is None:
            return
        try:
            tensors = state["tensors"]
            num_updates = int(state["num_updates"])
            self.activation_step = state["activation_step"]
            self.activation_epoch = state["activation_epoch"]
            self._decay = state.get("decay")
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"the align plugin's checkpoint state is malformed ({exc!r}); it must hold 'tensors', "
                "'num_updates', 'activation_step' and 'activation_epoch' as written by apt-plugin-align 1.x"
            ) from exc
        self.stable = None
        self._pending = {"tensors": dict(tensors), "num_updates": num_updates}


def _is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` is sharded with FSDP2 (its parameters are ``DTensor`` shards)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed support
        return False
    return isinstance(model, FSDPModule)
