"""The Trainer: epochs x steps of one straight-line training step, with plugin hooks at labelled points.

Reading order: :meth:`Trainer.fit` (the run), :meth:`Trainer._run_epoch` (one epoch),
:meth:`Trainer.train_step` (one optimizer step, hooks numbered as they fire),
:meth:`Trainer.validate`. Everything else is set-up and bookkeeping.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import torch
from torch import Tensor
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from apt.core.readonly import read_only
from apt.data import BatchSource
from apt.data import load_dataset
from apt.data import padded_vocab_size
from apt.data import save_tokenizer
from apt.data import val_tokens_per_byte
from apt.data import validation_windows
from apt.errors import ConfigError
from apt.errors import PluginConflictError
from apt.errors import PluginError
from apt.errors import Preempted
from apt.errors import UsageError
from apt.interop import init_weights
from apt.interop import resolve_init_from
from apt.model import GPT
from apt.model import ModelOutput
from apt.train._console import ConsoleLines
from apt.train._console import stdout_is_terminal
from apt.train._disk import check_free_space
from apt.train._disk import naming_the_file
from apt.train._distributed import DistInfo
from apt.train._distributed import all_reduce_sum
from apt.train._distributed import broadcast_object
from apt.train._distributed import check_fingerprints
from apt.train._distributed import init_distributed
from apt.train._distributed import resolve_device
from apt.train._distributed import shutdown_distributed
from apt.train._early_stopping import EarlyStopping
from apt.train._loggers import MetricsLoggers
from apt.train._loggers import open_loggers
from apt.train._metrics import bits_per_byte
from apt.train._metrics import write_json
from apt.train._optim import param_groups
from apt.train._optim import sync_param_groups
from apt.train._parallel import ddp_find_unused
from apt.train._parallel import fsdp_shard
from apt.train._parallel import full_model_state
from apt.train._parallel import full_optimizer_state
from apt.train._parallel import grad_norm_value
from apt.train._parallel import load_model_state
from apt.train._parallel import load_optimizer_state
from apt.train._parallel import refuse_scheduled_model_plugins
from apt.train._results import StepMeans
from apt.train._results import as_metrics
from apt.train._results import checked_loss_terms
from apt.train._rng import rng_state
from apt.train._rng import seed_everything
from apt.train._rng import set_rng_state
from apt.train._signals import PreemptionSignals
from apt.train._slow_hooks import SlowHookWatch
from apt.train._weights import load_weights
from apt.train._weights import save_weights


if TYPE_CHECKING:
    from apt.core import APTConfig
    from apt.core import ProviderRegistry
    from apt.core import Schedule
    from apt.plugins import HookManager
    from apt.plugins import PluginManager


__all__ = ["Trainer"]

log = logging.getLogger("apt.train")

# Event names, spelled once (HookEvents holds the same strings).
_MODEL_BUILT = "on_model_built"
_TRAIN_BEGIN, _TRAIN_END = "on_train_begin", "on_train_end"
_EPOCH_BEGIN, _EPOCH_END = "on_epoch_begin", "on_epoch_end"
_STEP_BEGIN, _STEP_END = "on_step_begin", "on_step_end"
_COMPUTE_LOSS = "on_compute_loss"
_BACKWARD_BEGIN, _BACKWARD_END = "on_backward_begin", "on_backward_end"
_BACKWARD, _AFTER_BACKWARD = "on_backward", "on_after_backward"
_BEFORE_OPT, _OPT_STEP = "on_before_optimizer_step", "on_optimizer_step"
_VAL_BEGIN, _VAL_END = "on_validation_begin", "on_validation_end"
_RESUME, _EXCEPTION = "on_resume", "on_exception"


class Trainer:
    """Trains a :class:`~apt.model.GPT` on text, firing every lifecycle hook of :mod:`apt.plugins.hookspecs`.

    >>> pm = PluginManager(); pm.load_from_config(config)
    >>> summary = Trainer(config, pm, run_dir=Path("runs/demo")).fit()

    :param config: the resolved configuration.
    :param plugin_manager: plugins to run (loaded; set up here if not yet). ``None``
        makes a fresh manager and loads the plugins ``config`` selects.
    :param run_dir: the run folder (rank 0 writes ``config.yaml``, ``metrics.jsonl``,
        ``summary.json``, ``model.safetensors`` there); ``None`` writes no files.

    Under ``torchrun`` the process group is joined here (gloo on CPU, NCCL on CUDA).
    """

    def __init__(
        self, config: APTConfig, plugin_manager: PluginManager | None = None, run_dir: str | Path | None = None
    ) -> None:
        # model.init_from fixes the model's shape before anything is built or written
        config = resolve_init_from(config)
        if plugin_manager is None:
            from apt.plugins import PluginManager

            plugin_manager = PluginManager()
            plugin_manager.load_from_config(config)
        self.plugin_manager = plugin_manager
        tc = config.training

        # --- where this process runs
        self.device = resolve_device(tc.device, local_rank=_env_local_rank())
        self.dist: DistInfo = init_distributed(self.device)
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.is_global_zero = self.dist.is_global_zero
        if not self.is_global_zero:
            logging.getLogger("apt").setLevel(logging.WARNING)  # one process reports progress; all report problems
        #: how the model runs: ``"single"`` (one process), ``"ddp"`` (replicated) or ``"fsdp"`` (sharded, FSDP2)
        self.parallelism: str = tc.distributed if self.dist.enabled else "single"
        if tc.distributed == "fsdp" and not self.dist.enabled:
            log.info("training.distributed=fsdp shards across torchrun processes; this is one process, unsharded")
        use_bf16 = tc.precision == "bf16" or (tc.precision == "auto" and self.device.type == "cuda")
        #: the autocast dtype of forward passes (parameters stay fp32)
        self.dtype = torch.bfloat16 if use_bf16 else torch.float32
        # every rank uses rank 0's folder (a time-stamped default name could differ by a second)
        agreed = broadcast_object(str(run_dir) if run_dir is not None else None, self.dist)
        self.run_dir: Path | None = Path(agreed) if agreed is not None else None

        # --- data (the generator is seeded identically on every rank; each keeps its slice)
        # (a prepared folder's memory-mapped shards, or text tokenized here)
        self.data = load_dataset(config, plugin_manager.registry)
        #: the run's tokenizer (saved as ``tokenizer.json`` in the run folder, used by ``apt generate``)
        self.tokenizer = self.data.tokenizer
        if config.model.vocab_size is None:  # follows the tokenizer, padded for fast matmuls
            config.model.vocab_size = padded_vocab_size(self.tokenizer.vocab_size)
        if config.model.vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(
                f"model.vocab_size is {config.model.vocab_size}, but the tokenizer ({self.tokenizer}) makes "
                f"token ids up to {self.tokenizer.vocab_size - 1}; set model.vocab_size to at least "
                f"{self.tokenizer.vocab_size} (or leave it unset to follow the tokenizer)",
                key="model.vocab_size",
            )
        #: the validated run config, complete from here on; read-only (plugins see it as ``trainer.config``)
        self.config: APTConfig = read_only(config)
        self.batches = BatchSource(
            self.data.train, config.model.block_size, tc.batch_size, tc.grad_accum,
            seed=tc.seed, rank=self.rank, world_size=self.world_size, fingerprint=self.data.fingerprint,
        )  # fmt: skip
        self._val_tokens_per_byte = 1.0  # set with the validation windows (exactly 1 for the byte tokenizer)

        # --- built by setup()
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler: Any = None
        self._ddp: DistributedDataParallel | None = None
        self._sharded = False  # fully_shard applied (training.distributed=fsdp under torchrun)
        self._core_params: frozenset[str] = frozenset()  # the parameter names of the model before plugins
        self._forward: Any = None  # what the training step calls: the model, its DDP wrapper, or compiled
        self._val_batches: list[tuple[Tensor, Tensor]] = []
        self._metrics = MetricsLoggers()  # jsonl and the other loggers, opened when training starts

        # --- counters and run state
        self.epoch = 0
        self.global_step = 0
        self.step_in_epoch = 0
        self.last_metrics: dict[str, float] = {}
        self._stop_requests: list[tuple[str | None, str]] = []
        self._skip_requests: list[str] = []  # vetoes of the coming optimizer step
        #: optimizer steps vetoed by plugins (skipped: no update, no LR-schedule step), over the whole run
        self.skipped_steps = 0
        self.stop_reason: str | None = None
        self._early_stopping = EarlyStopping(config.training.early_stopping)
        self._slow_hooks = SlowHookWatch(config.training.slow_hook_share)
        self._loop_t0 = 0.0  # when the first step of this process started (slow-hook shares)
        self._loop_step0 = 0
        self._training_started = False  # a failure before it leaves the run folder as it was found
        self._step_means = StepMeans()  # plugins' on_step_end metrics since the last logged record
        self._signals = PreemptionSignals()
        self._interactive = stdout_is_terminal()  # a progress bar on a terminal, plain lines elsewhere
        self._console = ConsoleLines(config.training.total_steps, 0, enabled=False)
        self._preempted_by: int | None = None  # the signal every process agreed to stop for
        self._epoch_losses: list[float] = []
        self._train_loss = math.nan
        self._is_setup = False

    # --- the kernel's objects, for plugins --------------------------------------------

    @property
    def registry(self) -> ProviderRegistry:
        return self.plugin_manager.registry

    @property
    def hooks(self) -> HookManager:
        return self.plugin_manager.hook_manager

    @property
    def schedule(self) -> Schedule:
        return self.plugin_manager.schedule

    @property
    def val_batches(self) -> list[tuple[Tensor, Tensor]]:
        """This process's fixed validation batches (what :meth:`validate` uses)."""
        return self._val_batches

    @property
    def is_distributed(self) -> bool:
        """Whether a process group is running (collectives needed)."""
        return self.dist.enabled

    def check_fingerprint(self, saved: dict[str, Any] | None, strict: bool = False) -> list[str]:
        """How the loaded plugin set differs from ``saved`` (a state's ``fingerprint``); raises when strict."""
        return self.plugin_manager.check_fingerprint(saved, strict=strict)

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step over all processes."""
        tc = self.config.training
        return self.world_size * tc.grad_accum * tc.batch_size * self.config.model.block_size

    # --- set-up -----------------------------------------------------------------------

    def setup(self) -> None:
        """Build the model, optimizer and schedule and check the ranks agree; ``fit`` calls it. Idempotent."""
        if self._is_setup:
            return
        tc, pm = self.config.training, self.plugin_manager
        if self.parallelism == "fsdp":
            refuse_scheduled_model_plugins(self.plugin_manager)
        self._make_run_dir()
        pm.setup_all()
        # before anything that communicates (DDP's constructor compares the models): ranks with
        # different plugins would otherwise fail there with a raw error, or hang
        check_fingerprints(pm.fingerprint(), self.dist)
        seed_everything(tc.seed)
        self.schedule.bind(total_epochs=tc.max_epochs, steps_per_epoch=tc.steps_per_epoch)
        # plugins scheduled for later start disabled; the ones due now get on_enable
        pm.apply_schedule(self, epoch=0, step=0)

        # the model: the same seed on every rank gives the same initial weights
        torch.manual_seed(tc.seed)
        model: nn.Module = GPT(self.config.model, self.registry)
        # before on_model_built, which may change this very object in place
        self._core_params = frozenset(name for name, _ in model.named_parameters())
        self.model = model.to(self.device)
        replacements = self.hooks.trigger(_MODEL_BUILT, trainer=self, model=self.model, config=self.config)
        replacements = [r for r in replacements if r is not None]
        if len(replacements) > 1:
            raise PluginConflictError(
                f"{len(replacements)} plugins returned a replacement model from on_model_built; at most one may "
                f"(handlers: {', '.join(h.name for h in self.hooks.ordered(_MODEL_BUILT))}); disable all but one"
            )
        if replacements:
            if not isinstance(replacements[0], nn.Module):
                raise PluginError(
                    f"on_model_built returned {type(replacements[0]).__name__}, not a torch.nn.Module; "
                    "modify the model in place or return a module"
                )
            self.model = replacements[0]
        assert self.model is not None
        if self.config.model.init_from is not None:
            # after plugins built their layers (the MoE experts a Mixtral checkpoint fills)
            load_weights(self.model, init_weights(self.model, self.config, self.registry))
        self.model.to(self.device)  # plugins may have added modules on the CPU
        # dropout and sampling noise differ per rank from here on
        torch.manual_seed(tc.seed + self.rank)

        self._wrap_model()  # before the optimizer: FSDP2 replaces the parameters by sharded ones
        self.optimizer = self.registry.build(
            "optimizer", tc.optimizer, param_groups=param_groups(self.model, tc.weight_decay), config=tc
        )
        self.lr_scheduler = self.registry.build(
            "lr_scheduler", tc.lr_scheduler, optimizer=self.optimizer, config=tc, total_steps=tc.total_steps
        )
        self._val_batches = validation_windows(
            self.data.val, self.config.model.block_size, tc.batch_size, tc.val_batches, self.rank, self.world_size
        )
        self._val_tokens_per_byte = val_tokens_per_byte(
            self.tokenizer, self.data.val, self.config.model.block_size, tc.batch_size, tc.val_batches, self.world_size
        )
        self._is_setup = True
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info(
            "model: %.2fM parameters on %s%s; plugins: %s", n_params / 1e6, self.device,
            f" x {self.world_size} processes" if self.dist.enabled else "",
            ", ".join(f"{p.get_name()} {p.get_version()}" for p in pm.loaded()) or "none",
        )  # fmt: skip

    def _make_run_dir(self) -> None:
        """Create the run folder (rank 0), so plugins can write there from ``on_model_built`` on."""
        if self.run_dir is None or not self.is_global_zero:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot write the run folder {str(self.run_dir)!r}: {exc.strerror or exc}; "
                "choose another folder with --run-dir (or run.dir / run.name)"
            ) from None

    def _refuse_a_finished_run(self) -> None:
        """A resume of a run that wrote its summary has nothing to train: say so and how to extend it."""
        if self.run_dir is None or not (self.run_dir / "summary.json").is_file():
            return  # killed after its last step but before its summary: the resume finishes it
        tc = self.config.training
        raise UsageError(
            f"the run in {str(self.run_dir)!r} is finished (step {self.global_step}, epoch {self.epoch + 1} of "
            f"training.max_epochs={tc.max_epochs}); nothing to train. To train it further, resume with "
            f"--set training.max_epochs={tc.max_epochs + 1} (or more)"
        )

    def _open_run_dir(self) -> None:
        """Write ``config.yaml`` and open ``metrics.jsonl`` in the run folder (rank 0)."""
        if self.run_dir is None or not self.is_global_zero:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.config.to_run_yaml(self.run_dir / "config.yaml")
            save_tokenizer(self.tokenizer, self.run_dir / "tokenizer.json")
            self._metrics = open_loggers(self.registry, self.config, self.run_dir, self.global_step)
        except OSError as exc:
            raise UsageError(
                f"cannot write the run folder {str(self.run_dir)!r}: {exc.strerror or exc}; "
                "choose another folder with --run-dir (or run.dir / run.name)"
            ) from None

    def _wrap_model(self) -> None:
        """(Re)build what the training step calls: the model, DDP around it, or the model sharded in place (FSDP2)."""
        assert self.model is not None
        forward: nn.Module = self.model
        if self.parallelism == "fsdp":
            if not self._sharded:
                fsdp_shard(self.model)
                self._sharded = True
        elif self.parallelism == "ddp":
            self._ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=ddp_find_unused(
                    self.config.training.ddp_find_unused, self._core_params, self.model
                ),
            )
            forward = self._ddp
        if self.config.training.compile:
            forward = torch.compile(forward)  # type: ignore[assignment]
        self._forward = forward

    def sync_optimizer(self) -> None:
        """Make the optimizer match the model's parameters after a plugin changed the model.

        New parameters join the optimizer group they belong to (``decay`` for ``dim >= 2``,
        else ``no_decay``); parameters no longer in the model leave with their state; the
        state of unchanged parameters (Adam moments) is kept, and so is the LR schedule.
        Under DDP the model is wrapped again, so that new parameters are all-reduced.
        """
        if self.optimizer is None or self.model is None:
            return
        self.model.to(self.device)
        if self._sharded and self._parameters_changed():
            raise UsageError(
                "a plugin changed the model's parameters after the model was sharded with "
                "training.distributed=fsdp, which FSDP2 cannot take; change the model in on_model_built "
                f"(plugins: {', '.join(self.plugin_manager.list_loaded()) or 'none'}) or use training.distributed=ddp"
            )
        added, removed = sync_param_groups(self.optimizer, self.model)
        if added or removed:
            log.info("optimizer synced with the model: %d parameter tensors added, %d removed", added, removed)
        if self._ddp is not None or self.config.training.compile:
            self._wrap_model()

    def _parameters_changed(self) -> bool:
        assert self.optimizer is not None and self.model is not None
        in_optimizer = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        return in_optimizer != {id(p) for p in self.model.parameters()}

    # --- the run ----------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train for ``training.max_epochs`` x ``training.steps_per_epoch`` steps (or until a stop request).

        :returns: the summary (also written to ``summary.json``).
        """
        t0 = time.perf_counter()
        tc = self.config.training
        found = self._run_dir_entries()
        try:
            self.setup()
            finished = False
            if tc.resume:
                self._resume(tc.resume)
                if self.step_in_epoch >= tc.steps_per_epoch:
                    if self.epoch + 1 < tc.max_epochs:
                        # the checkpoint was taken at the end of an epoch: go on with the next one
                        # (_run_epoch applies that epoch's schedule, as an uninterrupted run does)
                        self.epoch += 1
                        self.step_in_epoch = 0
                    else:  # at the end of the last epoch: only the end of the run is left
                        finished = True
                        self._refuse_a_finished_run()
            self._check_disk_space()  # before anything is written
            self._fire(_TRAIN_BEGIN, model=self.model, config=self.config, epoch=self.epoch, step=self.global_step)
            # only now: a refused resume or a plugin refusing to start leaves the run folder as it was
            self._open_run_dir()
            self._console = ConsoleLines(
                tc.total_steps, self.global_step, enabled=self.is_global_zero and not self._interactive
            )
            self._training_started = True
            self._loop_t0, self._loop_step0 = time.perf_counter(), self.global_step
            self._slow_hooks.start(self.plugin_manager.statistics())
            if finished:
                self._train_loss = self._epoch_mean_loss()
            else:
                with self._progress_bar() as bar, self._signals.installed():
                    while True:
                        self._run_epoch(bar)
                        if self.stop_reason is not None or self.epoch + 1 >= tc.max_epochs:
                            break
                        self._raise_if_preempted()  # the state of an epoch's end: exact
                        self.epoch += 1
                        self.step_in_epoch = 0
            self._fire(_TRAIN_END, model=self.model, epoch=self.epoch, step=self.global_step, metrics=self.last_metrics)
            return self._finish(time.perf_counter() - t0)
        except BaseException as exc:
            self._on_exception(exc)
            if not self._training_started:
                self._restore_run_dir(found)
            raise
        finally:
            self._metrics.close()
            shutdown_distributed(self.dist)

    def _run_dir_entries(self) -> set[str] | None:
        """What the run folder holds before the run starts (None: it does not exist, or not rank 0's)."""
        if self.run_dir is None or not self.is_global_zero or not self.run_dir.is_dir():
            return None
        return {p.name for p in self.run_dir.iterdir()}

    def _restore_run_dir(self, found: set[str] | None) -> None:
        """A run refused before its first step: remove what this start created in the run folder."""
        if self.run_dir is None or not self.is_global_zero or not self.run_dir.is_dir():
            return
        for entry in self.run_dir.iterdir():
            if found is None or entry.name not in found:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        if found is None:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()

    def _check_disk_space(self) -> None:
        """Refuse to start when the final weights cannot fit in the run folder (rank 0)."""
        if self.run_dir is None or not self.is_global_zero:
            return
        assert self.model is not None
        check_free_space(self.run_dir, sum(p.numel() * p.element_size() for p in self.model.parameters()))

    def _run_epoch(self, bar: Any) -> None:
        """One epoch: ``steps_per_epoch`` steps, validation every ``val_interval`` steps and at the end."""
        tc = self.config.training
        epoch = self.epoch
        if self.plugin_manager.apply_schedule(self, epoch=epoch, step=self.global_step):
            self.sync_optimizer()
        self._fire(_EPOCH_BEGIN, model=self.model, epoch=epoch, step=self.global_step, schedule=self.schedule)
        if self.step_in_epoch == 0:
            self._epoch_losses = []
        pending: dict[str, Any] | None = None  # the last step's record, written once complete
        busy_s, busy_steps = 0.0, 0  # time in training steps since the last record (validation excluded)
        while self.step_in_epoch < tc.steps_per_epoch and self.stop_reason is None:
            if pending is not None:
                self._metrics.write(pending)
                pending = None
            self._raise_if_preempted()  # between steps, after the last one's validation: exact
            if self.plugin_manager.apply_schedule(self, epoch=epoch, step=self.global_step):
                self.sync_optimizer()
            t_start = time.perf_counter()
            x, y = self.batches.next_step()
            metrics = self.train_step(x, y)
            busy_s, busy_steps = busy_s + time.perf_counter() - t_start, busy_steps + 1
            bar.update(1)
            tokens_per_s = self.tokens_per_step * busy_steps / max(busy_s, 1e-9)
            metrics["tokens_per_s"] = tokens_per_s
            bar.set_postfix(
                loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", tok_s=f"{tokens_per_s:.0f}", refresh=False
            )
            if self.global_step % tc.log_interval == 0:
                self._console.step(self.global_step, epoch, metrics)
            self._check_stop()
            last = self.step_in_epoch == tc.steps_per_epoch or self.stop_reason is not None
            validated = not last and self.global_step % tc.val_interval == 0
            if validated:
                metrics.update(self.validate())
                self._console.validation(self.global_step, epoch, metrics)
                self._watch_early_stopping(metrics)
                self._check_stop()
            if validated or self.global_step % tc.log_interval == 0 or last:
                metrics.update(self._step_means.pop_means())  # plugins' step metrics over the unlogged steps
                pending = {"step": self.global_step, "epoch": epoch, **metrics}
                self._slow_hooks.check(
                    self.plugin_manager.statistics(),
                    time.perf_counter() - self._loop_t0,
                    self.global_step - self._loop_step0,
                )
                busy_s, busy_steps = 0.0, 0
            self.last_metrics.update(metrics)

        # end of the epoch: validate, then on_epoch_end
        val = self.validate()
        self._console.validation(self.global_step, epoch, val)
        self._train_loss = self._epoch_mean_loss()
        epoch_metrics: dict[str, Any] = {"train_loss": self._train_loss, **val}
        self.last_metrics.update(epoch_metrics)  # before on_epoch_end: a state saved there is complete
        for plugin, extra in self._collect(
            _EPOCH_END, model=self.model, epoch=epoch, step=self.global_step, metrics=dict(epoch_metrics)
        ):
            epoch_metrics.update(as_metrics(extra, plugin, _EPOCH_END))
        self._watch_early_stopping(epoch_metrics)
        self._check_stop()
        self.last_metrics.update(epoch_metrics)
        record = pending if pending is not None else {"step": self.global_step, "epoch": epoch}
        self._metrics.write({**record, **epoch_metrics})
        log.info(
            "epoch %d done at step %d: train_loss %.4f, val_loss %.4f, val_bpb %.4f (unigram baseline %.4f)",
            epoch, self.global_step, self._train_loss, val["val_loss"], val["val_bpb"], self.data.baseline_bpb,
        )  # fmt: skip

    def _epoch_mean_loss(self) -> float:
        return sum(self._epoch_losses) / len(self._epoch_losses) if self._epoch_losses else math.nan

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """One optimizer step on ``(x, y)``, each ``(grad_accum * B, T)``; returns the step's metrics.

        The hooks fire in the numbered order below; see :mod:`apt.plugins.hookspecs`.
        """
        assert self.model is not None and self.optimizer is not None, "call setup() first"
        tc, hooks, model = self.config.training, self.hooks, self.model
        epoch, step, accum = self.epoch, self.global_step, tc.grad_accum

        # 1. the step begins
        if hooks.has_handlers(_STEP_BEGIN):
            self._fire(_STEP_BEGIN, model=model, batch=(x, y), epoch=epoch, step=step)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        want_terms = hooks.has_handlers(_COMPUTE_LOSS)
        plugin_backward = hooks.has_handlers(_BACKWARD)
        loss_sum = torch.zeros((), device=self.device)  # sum over micro-batches of the total loss
        term_sums: dict[str, Tensor] = {}
        for micro_step, (xb, yb) in enumerate(self.batches.micro_batches(x, y)):
            # DDP all-reduces (FSDP2 reduce-scatters) gradients on the last micro-batch's backward only
            no_sync = self._ddp is not None and micro_step < accum - 1
            if self._sharded and accum > 1:
                model.set_requires_gradient_sync(micro_step == accum - 1)  # type: ignore[operator]
            with self._ddp.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[union-attr]
                # 2. forward
                with self._autocast():
                    out: ModelOutput = self._forward(xb, yb, return_hidden=want_terms)
                assert out.loss is not None
                loss = out.loss
                terms: dict[str, Tensor] = {}
                # 3. plugins add named loss terms
                if want_terms:
                    terms = self._loss_terms((xb, yb), out, epoch, step, micro_step)
                    for name, term in terms.items():
                        loss = loss + term
                        t = term.detach().float()
                        term_sums[name] = term_sums[name] + t if name in term_sums else t
                # 4. backward, scaled so that accumulated gradients are the mean over micro-batches
                scaled = loss / accum
                if hooks.has_handlers(_BACKWARD_BEGIN):
                    self._fire(_BACKWARD_BEGIN, model=model, loss=scaled, epoch=epoch, step=step, micro_step=micro_step)
                # a plugin may take over the backward (one gradient per named term from this one forward)
                if not (plugin_backward and self._plugin_backward(scaled, out.loss, terms, epoch, step, micro_step)):
                    scaled.backward()
                if hooks.has_handlers(_BACKWARD_END):
                    self._fire(_BACKWARD_END, model=model, epoch=epoch, step=step, micro_step=micro_step)
            loss_sum += loss.detach().float()

        # 5. gradients are final (accumulated, all-reduced): plugins see them before the core clips
        if hooks.has_handlers(_AFTER_BACKWARD):
            self._fire(_AFTER_BACKWARD, model=model, optimizer=self.optimizer, epoch=epoch, step=step)
        if tc.grad_clip is not None:
            grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
        else:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grad_norm = grad_norm_value(torch.nn.utils.get_total_norm(grads))
        if hooks.has_handlers(_BEFORE_OPT):
            self._fire(_BEFORE_OPT, model=model, optimizer=self.optimizer, epoch=epoch, step=step, grad_norm=grad_norm)

        # 6. update, unless a plugin vetoed it (then weights, optimizer state and LR schedule stay as they were)
        lr = float(self.optimizer.param_groups[0]["lr"])
        skipped = self._step_vetoed()
        if not skipped:
            self.optimizer.step()
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not skipped and hooks.has_handlers(_OPT_STEP):
            self._fire(_OPT_STEP, model=model, optimizer=self.optimizer, epoch=epoch, step=step, lr=lr)
        self.global_step += 1
        self.step_in_epoch += 1

        # 7. the step's metrics: means over micro-batches (and over processes)
        names = sorted(term_sums)
        packed = torch.stack([loss_sum, *(term_sums[n] for n in names)]) / accum  # (1 + n_terms,)
        if self.dist.enabled:
            packed = all_reduce_sum(packed, self.dist) / self.world_size
        values = packed.tolist()
        metrics: dict[str, float] = {"loss": values[0], "lr": lr, "grad_norm": grad_norm}
        metrics.update({f"loss/{n}": v for n, v in zip(names, values[1:], strict=True)})
        if self.skipped_steps:  # once a step was vetoed: the running count, and whether this one was
            metrics.update(skipped_steps=float(self.skipped_steps), step_skipped=float(skipped))
        # with the counters above: a state_dict() taken from on_step_end holds this step entirely
        self._epoch_losses.append(values[0])

        # 8. the step ends; plugins may add metrics (averaged over the steps a record covers)
        if hooks.has_handlers(_STEP_END):
            for plugin, extra in self._collect(
                _STEP_END,
                model=model,
                batch=(x, y),
                epoch=epoch,
                step=step,
                loss=metrics["loss"],
                metrics=dict(metrics),
            ):
                extra_metrics = as_metrics(extra, plugin, _STEP_END)
                self._step_means.add(extra_metrics)
                metrics.update(extra_metrics)
        return metrics

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss and bits per byte on the fixed validation windows (averaged over processes)."""
        assert self.model is not None, "call setup() first"
        model = self.model
        model.eval()
        self._fire(_VAL_BEGIN, model=model, epoch=self.epoch, step=self.global_step)
        total = torch.zeros(2, device=self.device)  # (sum of batch losses, number of batches)
        for xb, yb in self._val_batches:
            with self._autocast():
                out = model(xb.to(self.device), yb.to(self.device))
            total[0] += out.loss.float()
            total[1] += 1
        all_reduce_sum(total, self.dist)
        val_loss = float(total[0] / total[1])
        # loss summed over target tokens / the bytes they cover: comparable across tokenizers
        metrics = {"val_loss": val_loss, "val_bpb": bits_per_byte(val_loss) * self._val_tokens_per_byte}
        for plugin, extra in self._collect(
            _VAL_END, model=model, epoch=self.epoch, step=self.global_step, metrics=dict(metrics)
        ):
            metrics.update(as_metrics(extra, plugin, _VAL_END))
        model.train()
        log.debug("step %d: val_loss %.4f, val_bpb %.4f", self.global_step, metrics["val_loss"], metrics["val_bpb"])
        return metrics

    # --- plugin requests --------------------------------------------------------------

    def request_stop(self, reason: str, source: str | None = None) -> None:
        """Ask the run to stop after the current step (requests from several plugins combine by OR).

        :param reason: why, logged and stored as ``stop_reason`` in the summary.
        :param source: who asks (a plugin name).
        """
        self._stop_requests.append((source, reason))

    def skip_optimizer_step(self, reason: str) -> None:
        """Veto the coming optimizer step (from ``on_step_begin`` up to ``on_before_optimizer_step``).

        The step's gradients are dropped: ``optimizer.step()``, the LR-schedule step and
        ``on_optimizer_step`` do not happen, so weights, optimizer state (Adam moments and
        step counts) and the LR schedule stay as they were. The step still counts as taken
        (``global_step`` advances and its batch is consumed), so a resume continues exactly.
        The veto is counted in ``skipped_steps`` (the metrics ``skipped_steps`` and
        ``step_skipped``, and the summary). Under torchrun a veto on any rank skips the step
        on every rank.

        :param reason: why, logged (a plugin should name itself and the culprit).
        """
        self._skip_requests.append(reason)

    def _step_vetoed(self) -> bool:
        """Consume the vetoes of this step; ``True`` when it is skipped (on every rank if any rank vetoed)."""
        vetoed = bool(self._skip_requests)
        if self.dist.enabled:
            flag = torch.tensor([float(vetoed)], device=self.device)
            vetoed = bool(all_reduce_sum(flag, self.dist).item() > 0)
        if vetoed:
            self.skipped_steps += 1
            log.warning(
                "step %d skipped: %s", self.global_step, "; ".join(self._skip_requests) or "vetoed on another process"
            )
        self._skip_requests.clear()
        return vetoed

    def _plugin_backward(
        self, loss: Tensor, lm: Tensor, terms: dict[str, Tensor], epoch: int, step: int, micro_step: int
    ) -> bool:
        """``on_backward``: whether a plugin did this micro-batch's backward (``loss`` is already scaled)."""
        if "lm" in terms:
            raise PluginError(
                "a plugin returned a loss term named 'lm' from on_compute_loss, the name on_backward gives the "
                "language-model loss; rename the term (prefix it with the plugin's name)"
            )
        accum = self.config.training.grad_accum
        scaled = {name: term / accum for name, term in {"lm": lm, **terms}.items()}
        answers = self._fire(
            _BACKWARD, model=self.model, loss=loss, terms=scaled, epoch=epoch, step=step, micro_step=micro_step
        )
        return bool(answers and answers[0] is True)

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum ``t`` over the processes, in place (returned; the identity with one process)."""
        return all_reduce_sum(t, self.dist)

    def all_reduce_mean(self, t: Tensor) -> Tensor:
        """Mean of ``t`` over the processes, in place (returned; the identity with one process)."""
        if not self.dist.enabled:
            return t
        return all_reduce_sum(t, self.dist).div_(self.world_size)

    def _check_stop(self) -> None:
        """Turn stop requests into ``stop_reason``, and preemption signals into a stop at the next
        step boundary; under torchrun any rank's request (or signal) stops all."""
        asked = bool(self._stop_requests)
        signalled = self._signals.received is not None
        if self.dist.enabled:
            flags = torch.tensor([float(asked), float(signalled)], device=self.device)
            flags = all_reduce_sum(flags, self.dist)
            asked, signalled = bool(flags[0].item() > 0), bool(flags[1].item() > 0)
        if signalled and self._preempted_by is None:
            self._preempted_by = self._signals.received or signal.SIGTERM
        if not asked or self.stop_reason is not None:
            return
        reasons = [f"{reason} (from {source})" if source else reason for source, reason in self._stop_requests]
        self.stop_reason = "; ".join(reasons) or "requested on another process"
        log.info("stopping at step %d: %s", self.global_step, self.stop_reason)

    def _watch_early_stopping(self, metrics: Mapping[str, float]) -> None:
        reason = self._early_stopping.update(metrics)
        if reason is not None:
            self.request_stop(reason, source="early_stopping")

    def _raise_if_preempted(self) -> None:
        """Raise :class:`~apt.errors.Preempted` at a step boundary once a preemption signal came."""
        if self._preempted_by is None and self._signals.received is not None and not self.dist.enabled:
            self._preempted_by = self._signals.received  # arrived during validation or an epoch's end
        if self._preempted_by is not None:
            log.warning("preempted at step %d: stopping (on_exception may save the state)", self.global_step)
            raise Preempted(self._preempted_by, self.global_step)

    def _loss_terms(
        self, batch: tuple[Tensor, Tensor], outputs: ModelOutput, epoch: int, step: int, micro_step: int
    ) -> dict[str, Tensor]:
        """``on_compute_loss``: every plugin's named terms, checked (two plugins may not use one name)."""
        results = self.hooks.trigger_by_plugin(
            _COMPUTE_LOSS, trainer=self, model=self.model, batch=batch, outputs=outputs, loss=outputs.loss,
            epoch=epoch, step=step, micro_step=micro_step,
        )  # fmt: skip
        return checked_loss_terms(results)

    # --- state ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs; plugin states come through ``on_save_checkpoint``.

        Keys: ``model``, ``optimizer``, ``lr_scheduler``, ``rng``, ``data``
        (sampler), ``counters`` (``epoch``, ``global_step``, ``step_in_epoch``),
        ``skipped_steps`` (vetoed optimizer steps so far),
        ``epoch_losses`` (the current epoch's step losses so far), ``early_stopping`` (best
        value, validations without improvement), ``step_means`` (plugins' step metrics not
        yet logged), ``config``,
        ``plugin_manager`` (enabled flags, schedule), ``fingerprint`` and ``plugins``.
        Values are tensors and JSON-compatible data only. Under FSDP2 the model and optimizer
        entries are the full state gathered onto rank 0 (``{}`` on the other ranks), the
        optimizer's keyed by parameter name; every rank must call this together.
        """
        self.setup()
        assert self.model is not None and self.optimizer is not None
        pm = self.plugin_manager
        sharded = self._sharded  # gather the full state onto rank 0 (a collective: every rank is here)
        state: dict[str, Any] = {
            "model": full_model_state(self.model) if sharded else self.model.state_dict(),
            "optimizer": full_optimizer_state(self.model, self.optimizer) if sharded else self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "rng": rng_state(),
            "data": self.batches.state_dict(),
            "counters": {"epoch": self.epoch, "global_step": self.global_step, "step_in_epoch": self.step_in_epoch},
            "skipped_steps": self.skipped_steps,
            "epoch_losses": list(self._epoch_losses),
            "last_metrics": dict(self.last_metrics),
            "early_stopping": self._early_stopping.state_dict(),
            "step_means": self._step_means.state_dict(),
            "config": self.config.to_dict(),
            "plugin_manager": pm.state_dict(),
            "fingerprint": pm.fingerprint(),
        }
        state["plugins"] = pm.collect_states(self, state)
        return state

    def load_state_dict(self, state: Mapping[str, Any], strict_fingerprint: bool = False) -> None:
        """Restore a :meth:`state_dict` (fires ``on_load_checkpoint``).

        Order: check the plugin fingerprint (warn, or raise when strict); restore the
        counters and the plugins' enabled flags as they were when the state was taken
        (plugins enabled here may change the model, e.g. MoE upcycling; a scheduled toggle
        due at the restored step fires before that step, as in the run that saved it); give
        plugins their state; sync the optimizer with the model; then load weights,
        optimizer, LR schedule, RNGs and sampler.
        """
        self.setup()
        assert self.model is not None and self.optimizer is not None
        pm = self.plugin_manager
        pm.check_fingerprint(state.get("fingerprint"), strict=strict_fingerprint)
        counters = state["counters"]
        self.epoch, self.global_step = int(counters["epoch"]), int(counters["global_step"])
        self.step_in_epoch = int(counters["step_in_epoch"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self._epoch_losses = [float(v) for v in state.get("epoch_losses", [])]
        self.last_metrics = {str(k): v for k, v in dict(state.get("last_metrics") or {}).items()}
        self._early_stopping.load_state_dict(dict(state.get("early_stopping") or {}))
        self._step_means.load_state_dict(dict(state.get("step_means") or {}))
        # the plugins as they were when the state was taken; a toggle due at the restored
        # counters has not happened yet in that run, and fires before the next step as it would have
        pm.load_state_dict(dict(state.get("plugin_manager") or {}), trainer=self)
        pm.restore_states(self, dict(state), dict(state.get("plugins") or {}))
        self.sync_optimizer()  # whatever the plugins changed above, the optimizer now matches the model
        missing, unexpected, mismatched = load_model_state(self.model, state["model"], self._sharded)
        if missing or unexpected or mismatched:
            what = (
                f"{len(mismatched)} tensor(s) differ in shape ({'; '.join(mismatched[:3])})"
                if mismatched
                else f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
            raise UsageError(
                f"the checkpoint's model does not match this model: {what}; "
                "resume with the same model config and plugins that wrote it"
            )
        load_optimizer_state(self.model, self.optimizer, state["optimizer"], self._sharded)
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        set_rng_state(state["rng"])
        self.batches.load_state_dict(state["data"])

    def _resume(self, resume: str) -> None:
        answers = self.hooks.trigger(_RESUME, trainer=self, resume=resume)
        if not answers:
            raise UsageError(
                f"training.resume is {resume!r} but no plugin can load checkpoints; "
                "install apt-plugin-checkpoint (pip install apt-plugin-checkpoint) and enable it"
            )
        self.load_state_dict(answers[0])
        log.info("resumed at epoch %d, step %d", self.epoch, self.global_step)

    # --- bookkeeping ------------------------------------------------------------------

    def _fire(self, event: str, **kwargs: Any) -> list[Any]:
        return self.hooks.trigger(event, trainer=self, **kwargs)

    def _collect(self, event: str, **kwargs: Any) -> list[tuple[str | None, Any]]:
        """``(plugin, result)`` pairs of a metrics-returning event (empty when nobody listens)."""
        if not self.hooks.has_handlers(event):
            return []
        return [(p, r) for p, r in self.hooks.trigger_by_plugin(event, trainer=self, **kwargs) if r is not None]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @contextlib.contextmanager
    def _progress_bar(self) -> Iterator[Any]:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        total = self.config.training.total_steps
        # rank 0 only, and only on a terminal (elsewhere ConsoleLines prints plain lines)
        bar = tqdm(
            total=total,
            initial=self.global_step,
            unit="step",
            dynamic_ncols=True,
            disable=not (self.is_global_zero and self._interactive),
        )
        try:
            with logging_redirect_tqdm():
                yield bar
        finally:
            bar.close()

    def _on_exception(self, exc: BaseException) -> None:
        try:
            self._fire(_EXCEPTION, model=self.model, exception=exc, epoch=self.epoch, step=self.global_step)
        except Exception as hook_exc:  # the original error matters more
            log.error("an on_exception handler failed too: %s", hook_exc)

    def _finish(self, wall_s: float) -> dict[str, Any]:
        assert self.model is not None
        summary: dict[str, Any] = {
            "steps": self.global_step,
            "epochs": self.epoch + 1,
            "train_loss": self._train_loss,
            "val_loss": self.last_metrics.get("val_loss"),
            "val_bpb": self.last_metrics.get("val_bpb"),
            "baseline_bpb": self.data.baseline_bpb,
            "wall_s": wall_s,
            "tokens": self.global_step * self.tokens_per_step,
            "stop_reason": self.stop_reason,
            "skipped_steps": self.skipped_steps,
            "params": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "world_size": self.world_size,
            "plugins": [
                {"name": p.get_name(), "version": p.get_version(), "enabled": p.is_enabled(), "failure": p.failure}
                for p in self.plugin_manager.loaded()
            ],
            "hooks": self.plugin_manager.statistics(),
            "slow_hooks": self._slow_hooks.summary(),
            "run_dir": str(self.run_dir) if self.run_dir is not None else None,
        }
        weights = full_model_state(self.model) if self._sharded and self.run_dir is not None else None
        if self.run_dir is not None and self.is_global_zero:
            with naming_the_file(self.run_dir / "model.safetensors"):
                save_weights(self.model, self.run_dir / "model.safetensors", state=weights)
            with naming_the_file(self.run_dir / "summary.json"):
                write_json(self.run_dir / "summary.json", summary)
        return summary


def _env_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
