"""``GradientPlugin``: gradient logging, non-finite handling, adaptive clipping, PCGrad, noise scale.

Where each part runs in one optimizer step (``A`` micro-batches)::

    per micro-batch   tensor hooks on the parameters   |g_i|^2 of the micro-batch (noise scale)
                      on_backward                      per-term gradients (surgery / cosine steps)
    once              on_after_backward                terms -> cosines, PCGrad -> .grad;
                                                       norms before clipping; non-finite check;
                                                       noise-scale update; adaptive clipping;
                                                       weight snapshot (logging steps)
                      [core clipping, optimizer.step()]
                      on_optimizer_step                update/weight ratios, parameter norms
                      on_step_end                      the metrics, read with one host transfer

Everything is computed on the gradients after accumulation and (under DDP) the all-reduce,
so the metrics are those of the whole global batch.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING
from typing import Any

import torch
from apt.errors import CheckpointError
from apt.errors import UsageError
from apt.plugins import Plugin
from apt.plugins import TrainerView
from torch import Tensor
from torch import nn

from apt_plugin_gradient._clip import AutoClip
from apt_plugin_gradient._clip import ZScoreClip
from apt_plugin_gradient._clip import agc_clip_
from apt_plugin_gradient._clip import scale_grads_
from apt_plugin_gradient._config import GradientConfig
from apt_plugin_gradient._groups import ParamGroups
from apt_plugin_gradient._noise import NoiseScale
from apt_plugin_gradient._plot import plot_gradient
from apt_plugin_gradient._surgery import pcgrad
from apt_plugin_gradient._surgery import term_cosines


if TYPE_CHECKING:
    from apt.core import ProviderRegistry
    from apt.plugins import HookManager


__all__ = ["GradientPlugin"]

log = logging.getLogger("apt.gradient")


class GradientPlugin(Plugin):
    """Watches and shapes the gradients of every optimizer step (see the package README).

    :param config: the validated ``gradient:`` section (a :class:`GradientConfig`, a mapping, or ``None``).
    """

    name = "gradient"
    version = "1.0.0"
    description = (
        "Gradient logging, non-finite step skipping, adaptive clipping, PCGrad across loss terms, noise scale."
    )
    providers = ("plot:gradient",)
    config_model = GradientConfig
    critical = True  # it changes gradients and vetoes steps: a failure must stop the run
    state_version = 1

    config: GradientConfig

    def __init__(self, config: GradientConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)  # validated once (by the plugin manager, or here from a mapping); read-only
        c = self.config
        self.autoclip = AutoClip(c.clip.autoclip_percentile, c.clip.autoclip_history)
        self.zscore = ZScoreClip(c.clip.zscore_alpha, c.clip.zscore_threshold, c.clip.zscore_warmup, c.clip.zscore_mode)
        self.noise = NoiseScale(c.noise_scale.beta)
        self.generator = torch.Generator()  # PCGrad's projection order; seeded from training.seed
        self._seeded = False
        self.nonfinite_steps = 0  # steps whose gradient held NaN/inf
        self.consecutive_skips = 0
        self.clip_window = [0, 0]  # (steps clipped, steps) since the last logging step
        # per run
        self._groups: ParamGroups | None = None
        self._hooks: list[Any] = []
        self._noise_ok = False
        self._hook_on = True
        self._micro_sq: list[Tensor] = []  # this step's per-parameter |g|^2 of every micro-batch (local)
        self._term_grads: dict[str, list[Tensor | None]] = {}  # per-term gradients accumulated over the step
        self._took_over = False
        self._before: list[Tensor] | None = None  # weights before the step (logging steps)
        self._pending: dict[str, Tensor | float] = {}

    def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
        """Register the ``plot`` provider ``gradient`` (noise scale, term cosines, norms)."""
        super().setup(registry, hook_manager)
        registry.register("plot", "gradient", plot_gradient)

    # --- set-up for a run -----------------------------------------------------------------

    def on_train_begin(self, trainer: TrainerView, model: nn.Module) -> None:
        """Check the run can use the enabled parts, group the parameters, attach the noise-scale hooks."""
        self._prepare(trainer, model)

    def on_enable(self, trainer: TrainerView | None = None, epoch: int | None = None, step: int | None = None) -> None:
        """A schedule enabled the plugin mid-run: prepare as at the start of training."""
        if trainer is not None and trainer.model is not None:
            self._prepare(trainer, trainer.model)

    def on_disable(self, trainer: TrainerView | None = None, epoch: int | None = None, step: int | None = None) -> None:
        self._remove_hooks()

    def teardown(self) -> None:
        self._remove_hooks()

    def _prepare(self, trainer: TrainerView, model: nn.Module) -> None:
        c, tc = self.config, trainer.config.training
        parallelism = trainer.parallelism
        if parallelism == "fsdp":
            raise UsageError(
                "plugin 'gradient' reads whole gradients, which training.distributed=fsdp shards; "
                "use training.distributed=ddp or disable the plugin"
            )
        if c.surgery.mode != "none" and parallelism != "single":
            raise UsageError(
                f"gradient.surgery.mode={c.surgery.mode!r} needs one process (it owns the backward pass, which DDP's "
                "gradient all-reduce runs inside); set gradient.surgery.mode=none (gradient.surgery.cosine_every "
                "still logs the term-gradient cosines) or train on one process"
            )
        if not self._seeded:
            self.generator.manual_seed(int(tc.seed))
            self._seeded = True
        self._groups = ParamGroups(model, c.log.groups)
        self._remove_hooks()
        micro_batches = int(tc.grad_accum) * trainer.world_size
        self._noise_ok = c.noise_scale.enabled and micro_batches >= 2
        if c.noise_scale.enabled and not self._noise_ok:
            log.warning(
                "gradient.noise_scale is not estimated: it needs two batch sizes, and with training.grad_accum=1 on "
                "one process every step has one micro-batch; set training.grad_accum >= 2 or run under torchrun"
            )
        if self._noise_ok:
            for p in self._groups.params:
                self._hooks.append(p.register_hook(self._record_micro))

    def _record_micro(self, grad: Tensor) -> None:
        if self._hook_on:
            self._micro_sq.append(torch.linalg.vector_norm(grad, dtype=torch.float32).square())

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _ensure_groups(self, trainer: TrainerView, model: nn.Module) -> ParamGroups:
        if self._groups is None or not self._groups.matches(model):  # first use, or a plugin changed the model
            self._prepare(trainer, model)
        assert self._groups is not None
        return self._groups

    # --- per-term gradients -------------------------------------------------------------

    def _surgery_on(self, epoch: int) -> bool:
        return self.config.surgery.mode == "pcgrad" and epoch >= self.config.surgery.start_epoch

    def _cosine_step(self, step: int) -> bool:
        every = self.config.surgery.cosine_every
        return every > 0 and (step + 1) % every == 0

    def on_backward(
        self, trainer: TrainerView, model: nn.Module, terms: dict[str, Tensor], epoch: int, step: int, micro_step: int
    ) -> bool | None:
        """On surgery and cosine steps: one gradient per selected term from this forward (one backward each).

        On one process the plugin owns the backward (``True``): the selected terms' gradients
        wait in per-term buffers for :meth:`on_after_backward`, the other terms' gradient goes
        to ``.grad``. Under DDP (cosines only) it takes the per-term gradients with
        ``retain_graph`` and lets the trainer run the all-reducing backward (one more pass).
        """
        if not (self._surgery_on(epoch) or self._cosine_step(step)):
            return None
        wanted = self.config.surgery.terms
        names = [n for n, t in terms.items() if (not wanted or n in wanted) and t.requires_grad]
        if len(names) < 2:
            return None
        groups = self._ensure_groups(trainer, model)
        params = groups.params
        own = trainer.parallelism == "single"
        rest_names = [n for n, t in terms.items() if n not in names and t.requires_grad]
        pieces: list[tuple[Tensor | None, ...]] = []
        self._hook_on = False  # the noise scale needs the micro-batch's total gradient, added up below
        try:
            for i, name in enumerate(names):
                last = own and not rest_names and i == len(names) - 1
                grads = torch.autograd.grad(terms[name], params, retain_graph=not last, allow_unused=True)
                buf = self._term_grads.setdefault(name, [None] * len(params))
                for j, g in enumerate(grads):
                    prev = buf[j]
                    if g is not None:
                        buf[j] = g if prev is None else prev + g
                pieces.append(grads)
            if own and rest_names:
                rest = torch.stack([terms[n] for n in rest_names]).sum()
                grads = torch.autograd.grad(rest, params, allow_unused=True)
                for p, g in zip(params, grads, strict=True):
                    if g is not None:
                        p.grad = g if p.grad is None else p.grad + g
                pieces.append(grads)
        finally:
            self._hook_on = True
        if not own:
            return None
        self._took_over = True
        if self._noise_ok:
            for j in range(len(params)):
                parts = [t for t in (piece[j] for piece in pieces) if t is not None]
                if parts:  # this micro-batch's whole gradient of parameter j: the sum of its pieces
                    whole = torch.stack(parts).sum(dim=0)
                    self._micro_sq.append(torch.linalg.vector_norm(whole, dtype=torch.float32).square())
        return True

    def _apply_terms(self, trainer: TrainerView, params: list[nn.Parameter], epoch: int) -> None:
        """Cosines and norms of the step's per-term gradients; on one process, their (projected) sum to .grad."""
        names = list(self._term_grads)
        rows = []
        for name in names:
            buf = self._term_grads[name]
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                                   for g, p in zip(buf, params, strict=True)]))  # fmt: skip
        flat = torch.stack(rows)  # (T, P)
        self._term_grads = {}
        if trainer.parallelism != "single":
            trainer.all_reduce_mean(flat)  # each term's gradient of the global batch
        cos, norms = term_cosines(flat)
        for i, a in enumerate(names):
            self._pending[f"grad/term_norm/{a}"] = norms[i]
            for j in range(i + 1, len(names)):
                self._pending[f"grad/cos/{a}|{names[j]}"] = cos[i, j]
        if not self._took_over:
            return
        combined = (pcgrad(flat, self.generator) if self._surgery_on(epoch) else flat).sum(dim=0)  # (P,)
        offset = 0
        for p in params:
            g = combined[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
            p.grad = g if p.grad is None else p.grad + g
        self._took_over = False

    # --- once per step, before the core's clipping ----------------------------------------

    def _log_step(self, step: int) -> bool:
        return self.config.log.enabled and (step + 1) % self.config.log.every == 0

    @torch.no_grad()
    def on_after_backward(self, trainer: TrainerView, model: nn.Module, epoch: int, step: int) -> None:
        """Norms before clipping, the non-finite check, the noise scale and the adaptive clipping."""
        c = self.config
        groups = self._ensure_groups(trainer, model)
        params = groups.params
        if self._term_grads:
            self._apply_terms(trainer, params, epoch)
        grads = [p.grad for p in params]
        present = [g for g in grads if g is not None]
        if not present:
            self._micro_sq = []
            return
        param_norms = groups.norms(grads)  # (n_params,) one pass over the gradients gives every norm below
        total = param_norms.square().sum().sqrt()
        log_now = self._log_step(step)
        if log_now and groups.groups:
            for name, value in zip(groups.groups, groups.group_norms(param_norms), strict=True):
                self._pending[f"grad/norm/{name}"] = value
        micro_sum = torch.stack(self._micro_sq).sum() if self._micro_sq else torch.zeros(())
        self._micro_sq = []
        if self._noise_ok:  # the sum over every micro-batch of every process
            micro_sum = trainer.all_reduce_sum(micro_sum.to(total.device))
        total_f, micro_f = (float(v) for v in torch.stack([total, micro_sum.to(total.device)]).tolist())
        self._pending["grad/norm"] = total_f

        # 1. non-finite gradients: name the first offending parameter, then the policy
        if not math.isfinite(total_f):
            self._nonfinite(trainer, groups, step)
            return
        self.consecutive_skips = 0

        # 2. noise scale from the micro-batch norms and the accumulated norm
        if self._noise_ok:
            self._update_noise(trainer, micro_f, total_f**2)

        # 3. adaptive clipping (before the core's training.grad_clip)
        clipped = False
        norm_after = total_f
        if c.clip.mode == "agc":
            pairs = [(p, p.grad) for n, p in zip(groups.names, params, strict=True)
                     if p.grad is not None and not n.startswith(tuple(c.clip.agc_exclude))]  # fmt: skip
            n_clipped, units = agc_clip_(pairs, c.clip.agc_lambda, c.clip.agc_eps, count=log_now)
            if n_clipped is not None:  # logging steps: the share of units (rows) clipped
                self._pending["grad/agc_clipped_units"] = n_clipped.float() / max(units, 1)
            norm_after = math.nan
        elif c.clip.mode in ("autoclip", "zscore"):
            rule = self.autoclip if c.clip.mode == "autoclip" else self.zscore
            threshold = rule.threshold(total_f)
            self._pending["grad/clip_threshold"] = threshold
            if total_f > threshold:
                scale_grads_(present, threshold / (total_f + 1e-6))
                clipped, norm_after = True, threshold
        core_clip = trainer.config.training.grad_clip
        if core_clip is not None and norm_after > core_clip:
            clipped = True
        self.clip_window[0] += int(clipped)
        self.clip_window[1] += 1

        # 4. the weights before the update, for the update ratios
        if log_now and c.log.update_ratio:
            self._before = [p.detach().clone() for p in params]

    def _nonfinite(self, trainer: TrainerView, groups: ParamGroups, step: int) -> None:
        culprit = next(
            (n for n, p in zip(groups.names, groups.params, strict=True)
             if p.grad is not None and not bool(torch.isfinite(p.grad).all())),
            "?",
        )  # fmt: skip
        self.nonfinite_steps += 1
        self._pending["grad/nonfinite_steps"] = float(self.nonfinite_steps)
        policy = self.config.nonfinite.policy
        what = f"non-finite gradient at step {step}, first in parameter {culprit!r}"
        if policy == "warn":
            log.warning("%s; the optimizer steps anyway (gradient.nonfinite.policy=warn)", what)
            return
        trainer.skip_optimizer_step(f"gradient: {what}")
        self.consecutive_skips += 1
        limit = self.config.nonfinite.max_consecutive
        if policy == "stop":
            trainer.request_stop(f"{what} (gradient.nonfinite.policy=stop)", source="gradient")
        elif self.consecutive_skips >= limit:
            trainer.request_stop(
                f"{self.consecutive_skips} optimizer steps in a row skipped for non-finite gradients, the last {what} "
                f"(gradient.nonfinite.max_consecutive={limit})",
                source="gradient",
            )

    def _update_noise(self, trainer: TrainerView, micro_sum: float, big_sq: float) -> None:
        tc, block = trainer.config.training, trainer.config.model.block_size
        accum, world = int(tc.grad_accum), trainer.world_size
        # the hooks saw gradients of loss / accum: |g_i|^2 = accum^2 * what they summed
        small_sq = micro_sum * accum**2 / (accum * world)
        b_small = float(tc.batch_size * block)  # tokens of one micro-batch (the loss is a mean over tokens)
        b_big = b_small * accum * world
        self.noise.update(small_sq, big_sq, b_small, b_big)
        b_simple = self.noise.b_simple
        self._pending.update({
            "grad/noise_scale": b_simple,  # B_simple, in tokens
            "grad/critical_batch": b_simple / block,  # the critical batch it implies, in sequences
            "grad/noise_G2": self.noise.g2,
            "grad/noise_trace": self.noise.trace,
        })  # fmt: skip

    # --- after the update ---------------------------------------------------------------

    @torch.no_grad()
    def on_optimizer_step(self, trainer: TrainerView, model: nn.Module) -> None:
        """Update-to-weight ratios ``|W_after - W_before| / |W_before|`` and parameter norms per group (logging steps)."""
        before, self._before = self._before, None
        if before is None or self._groups is None:
            return
        groups = self._groups
        after = [p.detach() for p in groups.params]
        w_before = groups.group_norms(groups.norms(before))
        for b, a in zip(before, after, strict=True):
            b.sub_(a)  # the snapshot becomes the update (its sign does not matter for the norm)
        ratio = groups.group_norms(groups.norms(before)) / w_before.clamp_min(1e-12)
        w_after = groups.group_norms(groups.norms(after))
        for i, name in enumerate(groups.groups):
            self._pending[f"grad/update_ratio/{name}"] = ratio[i]
            self._pending[f"grad/param_norm/{name}"] = w_after[i]

    def on_step_end(self, step: int) -> dict[str, float] | None:
        """The step's metrics (one host transfer for the tensors among them)."""
        pending, self._pending = self._pending, {}
        if self._log_step(step) and self.clip_window[1]:
            pending["grad/clipped"] = self.clip_window[0] / self.clip_window[1]
            self.clip_window = [0, 0]
        if not pending:
            return None
        tensors = {k: v for k, v in pending.items() if isinstance(v, Tensor)}
        out = {k: float(v) for k, v in pending.items() if not isinstance(v, Tensor)}
        if tensors:
            values = torch.stack([v.detach().float().cpu().reshape(()) for v in tensors.values()]).tolist()
            out.update(zip(tensors, values, strict=True))
        return out

    # --- state ------------------------------------------------------------------------

    def on_save_checkpoint(self) -> dict[str, Any]:
        """Clipping histories, noise-scale EMAs, skip counters, the PCGrad generator."""
        return {
            "autoclip": self.autoclip.state_dict(),
            "zscore": self.zscore.state_dict(),
            "noise": self.noise.state_dict(),
            "generator": self.generator.get_state(),
            "nonfinite_steps": self.nonfinite_steps,
            "consecutive_skips": self.consecutive_skips,
            "clip_window": list(self.clip_window),
        }

    def on_load_checkpoint(self, state: Any) -> None:
        """Restore what :meth:`on_save_checkpoint` returned."""
        if state is None:
            return
        try:
            self.autoclip.load_state_dict(state["autoclip"])
            self.zscore.load_state_dict(state["zscore"])
            self.noise.load_state_dict(state["noise"])
            self.generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).cpu())
            self._seeded = True
            self.nonfinite_steps = int(state["nonfinite_steps"])
            self.consecutive_skips = int(state["consecutive_skips"])
            self.clip_window = [int(v) for v in state["clip_window"]]
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"the gradient plugin's checkpoint state is malformed ({exc!r}); resume from a checkpoint written "
                "by apt-plugin-gradient 1.x, or remove its 'gradient' entry to start the histories afresh"
            ) from None
