"""The ``checkpoint`` plugin: when to save, what to keep, and how a run resumes.

It saves the whole ``trainer.state_dict()`` (model, optimizer, scheduler, RNG,
data position, counters, config, every plugin's state, the plugin fingerprint) through
:class:`~apt_plugin_checkpoint.CheckpointStore`: crash-safe, hash-verified, pickle-free.

Where a save happens matters for an exact resume: the state must be taken at the last
moment before the next step, after the validation that may follow a step (validation
must not be skipped by a resumed run, and it may draw random numbers). So a save that
is due at a step followed by validation waits for ``on_validation_end``, and one due at
the last step of an epoch waits for ``on_epoch_end``.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from apt.errors import AptError
from apt.errors import CheckpointError
from apt.errors import Preempted
from apt.plugins import Plugin
from apt.plugins import TrainerView
from apt_plugin_checkpoint._config import CheckpointConfig
from apt_plugin_checkpoint._format import EncodedState
from apt_plugin_checkpoint._format import encode_state
from apt_plugin_checkpoint._manifest import read_manifest
from apt_plugin_checkpoint._retention import RetentionPolicy
from apt_plugin_checkpoint._retention import best_checkpoints
from apt_plugin_checkpoint._store import EMERGENCY
from apt_plugin_checkpoint._store import PREEMPTED
from apt_plugin_checkpoint._store import CheckpointStore
from apt_plugin_checkpoint._store import LoadedCheckpoint
from apt_plugin_checkpoint._store import load_checkpoint


__all__ = ["CheckpointPlugin", "estimate_checkpoint_bytes"]

logger = logging.getLogger("apt.checkpoint")

_MARGIN_BYTES = 16 << 20  # JSON, headers, file-system slack


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (a function so tests can replace it)."""
    return shutil.disk_usage(path).free


def _tensor_bytes(tensors: Any) -> int:
    seen: set[tuple[int, Any]] = set()
    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel() > 0:
            if hasattr(t, "to_local"):  # a DTensor (FSDP2): its numel is the full size the checkpoint holds
                ident: tuple[int, Any] = (id(t), "dtensor")
            else:
                ident = (t.untyped_storage().data_ptr(), t.storage_offset())
            if ident not in seen:
                seen.add(ident)
                total += t.numel() * t.element_size()
    return total


def estimate_checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """How many bytes one checkpoint of this model and optimizer will take (an upper-ish estimate).

    Model tensors are counted once even when tied. An optimizer that has no state yet
    (before its first step) is assumed to keep two tensors per trainable parameter when it
    has ``betas`` (Adam family), one when it has ``momentum``, none otherwise.
    """
    total = _tensor_bytes(model.state_dict(keep_vars=False).values())
    if optimizer is not None:
        state_tensors = [v for s in optimizer.state.values() for v in s.values()]
        if state_tensors:
            total += _tensor_bytes(state_tensors)
        else:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
            group = optimizer.param_groups[0] if optimizer.param_groups else {}
            slots = 2 if "betas" in group else (1 if group.get("momentum") else 0)
            total += slots * _tensor_bytes(params)
    return total + _MARGIN_BYTES


class _Fields(dict[str, Any]):
    """Template fields; a metric not measured at the saved step formats as NaN instead of failing."""

    def __missing__(self, key: str) -> Any:
        return math.nan


class CheckpointPlugin(Plugin):
    """Crash-safe automatic checkpoints, best-k retention and exact resume.

    Saves every ``every_n_steps`` steps, every ``every_n_epochs`` epochs and/or every
    ``every_minutes`` minutes, at the end of training and (as an emergency) when the run
    fails; keeps the ``keep_last`` most recently written and the ``keep_best`` best by the
    configured ``monitor``; answers ``on_resume`` with the state of ``latest`` (falling back to
    the most recently written checkpoint that verifies when it fails verification) or of a
    given path. Only rank 0 writes; every rank loads.
    """

    name = "checkpoint"
    version = "1.0.0"
    description = "Crash-safe checkpoints (safetensors + JSON, SHA-256 manifest), best-k retention, exact resume."
    priority = -100  # after every other plugin on the same event, so their state is final
    critical = True  # a failing resume must stop the run; save errors follow on_save_error
    config_model = CheckpointConfig
    config: CheckpointConfig
    state_version = 1

    def __init__(self, config: CheckpointConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)  # validated once (by the plugin manager, or here from a mapping); read-only
        self.store: CheckpointStore | None = None
        # metric name -> (global step it was measured at, value): a checkpoint records only the
        # metrics measured for its own weights (see _metrics_at)
        self._metrics: dict[str, tuple[int, float]] = {}
        self._pending: str | None = None
        # the step whose state is on disk: set only once a save succeeded (a failed one leaves it)
        self._last_saved_step: int | None = None
        self._last_save_time = time.monotonic()  # when the last save was started: the every_minutes clock
        self._saves = 0
        self._best: list[dict[str, Any]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: tuple[Future[None], int] | None = None  # an async save and its step
        self._trainer: TrainerView | None = None
        self._snapshot: dict[str, torch.Tensor] = {}  # async_save's reusable CPU copy of the state
        self._running = False  # between on_train_begin and on_train_end: what an emergency save is for

    # --- where ----------------------------------------------------------------------------

    def checkpoint_dir(self, trainer: TrainerView) -> Path:
        """The checkpoint folder: ``config.dir``, under the run folder when relative."""
        path = Path(self.config.dir).expanduser()
        if path.is_absolute():
            return path
        return trainer.run_dir / path if trainer.run_dir is not None else path

    def _store(self, trainer: TrainerView) -> CheckpointStore:
        if self.store is None:
            self.store = CheckpointStore(self.checkpoint_dir(trainer))
        return self.store

    # --- hooks: run -------------------------------------------------------------------------

    def on_train_begin(self, trainer: TrainerView, model: Any, epoch: int, step: int) -> None:
        self._trainer = trainer
        store = self._store(trainer)
        self._last_save_time = time.monotonic()
        if self._last_saved_step is None and step:
            self._last_saved_step = step  # resumed: that state is on disk already
        if not trainer.is_global_zero:
            self._running = True
            return
        removed = store.prepare()
        if removed:
            logger.warning("removed %d incomplete save(s) left in %s: %s", len(removed), store.root, removed)
        needed = estimate_checkpoint_bytes(model, trainer.optimizer)
        free = disk_free_bytes(store.root)
        if free < needed:
            raise CheckpointError(
                f"not enough disk space for one checkpoint in {store.root}: about {needed / 2**20:.1f} MiB needed, "
                f"{free / 2**20:.1f} MiB free. Free some space, set checkpoint.dir to another disk, or disable "
                "the plugin (disable_plugins: [checkpoint])",
                path=store.root,
            )
        keep = (self.config.keep_last or 0) + self.config.keep_best + 1
        if free < needed * keep:
            logger.warning(
                "%s has %.1f MiB free; keeping %d checkpoints of about %.1f MiB may not fit",
                store.root,
                free / 2**20,
                keep,
                needed / 2**20,
            )
        self._running = True

    def on_train_end(
        self, trainer: TrainerView, epoch: int, step: int, metrics: dict[str, float] | None = None
    ) -> None:
        # ``metrics`` is the trainer's running union of every metric ever logged, so a value in it
        # may have been measured many steps ago. The final step's own metrics came through
        # on_step_end / on_validation_end / on_epoch_end at this same global step already.
        self._running = False
        if self.config.save_on_train_end or self._pending:
            self._save(trainer, "train_end")
        self._wait()

    def on_exception(self, trainer: TrainerView, exception: BaseException, epoch: int, step: int) -> None:
        if trainer is None:
            return
        try:
            if isinstance(exception, Preempted) and self._running:
                # stopped at a step boundary by SIGTERM/SIGUSR1: the state is exact, every rank is
                # here (the trainer agreed on the stop), so it is a regular checkpoint that
                # `latest` names and `--resume latest` continues bitwise
                self._running = False
                self._save(trainer, PREEMPTED)
            # not before training started (a failed resume, a bad config): nothing worth saving
            elif self.config.save_on_exception and self._running:
                if trainer.parallelism == "fsdp":
                    # the sharded state can only be gathered with every rank, and the others may not be here
                    logger.warning("no emergency checkpoint under FSDP2; the last regular checkpoint stands")
                else:
                    # Under DDP the other ranks may not be here, so no collective: rank 0's state only.
                    self._save(trainer, EMERGENCY, collective=False)
            self._wait()
        except Exception as exc:  # never hide the original failure
            logger.error("emergency checkpoint failed: %s", exc)

    def teardown(self) -> None:
        self._wait()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # --- hooks: schedule --------------------------------------------------------------------

    def on_step_end(self, trainer: TrainerView, epoch: int, step: int, metrics: dict[str, float] | None = None) -> None:
        global_step = trainer.global_step  # ``step`` counts from 0, before the update: global_step == step + 1
        self._update_metrics(metrics, global_step)
        self._poll_async(trainer)
        every = self.config.every_n_steps
        reason = "step" if every and global_step % every == 0 else None
        if reason is None and self.config.every_minutes is not None:
            if self._agree(trainer, time.monotonic() - self._last_save_time >= 60 * self.config.every_minutes):
                reason = "time"
        if reason is None:
            return
        if self._validation_follows(trainer, global_step):
            self._pending = reason  # save after the validation of this step (see module docstring)
        else:
            self._save(trainer, reason)

    def on_validation_end(
        self, trainer: TrainerView, epoch: int, step: int, metrics: dict[str, float] | None = None
    ) -> None:
        global_step = trainer.global_step
        self._update_metrics(metrics, global_step)
        if self._pending and not self._epoch_ends(trainer, global_step):
            self._save(trainer, self._pending)

    def on_epoch_end(
        self, trainer: TrainerView, epoch: int, step: int, metrics: dict[str, float] | None = None
    ) -> None:
        self._update_metrics(metrics, trainer.global_step)
        every = self.config.every_n_epochs
        if every and (epoch + 1) % every == 0:
            self._save(trainer, "epoch")
        elif self._pending:
            self._save(trainer, self._pending)

    # --- hooks: state -----------------------------------------------------------------------

    def on_save_checkpoint(self, trainer: TrainerView, checkpoint: dict[str, Any]) -> dict[str, Any]:
        return {"saves": self._saves, "last_saved_step": self._last_saved_step, "best": self._best}

    def on_load_checkpoint(self, trainer: TrainerView, checkpoint: dict[str, Any], state: Any) -> None:
        if isinstance(state, dict):
            self._saves = int(state.get("saves", 0))
            self._best = list(state.get("best", []))
            # _last_saved_step is set by on_resume from the manifest of what was loaded

    def on_resume(self, trainer: TrainerView, resume: str) -> dict[str, Any]:
        """Load the checkpoint to resume from: ``"latest"`` (with fallback) or a path."""
        self._trainer = trainer
        loaded = self._load(trainer, resume)
        state = self._state_for_rank(trainer, loaded)
        self._last_saved_step = loaded.manifest.step
        logger.info(
            "resuming from checkpoint %s (epoch %d, step %d)", loaded.path, loaded.manifest.epoch, loaded.manifest.step
        )
        self._check_fingerprint(trainer, state, loaded)
        return state

    # --- saving -----------------------------------------------------------------------------

    def _update_metrics(self, metrics: dict[str, float] | None, global_step: int) -> None:
        """Remember ``metrics`` as measured at ``global_step`` (after that many optimizer steps)."""
        for key, value in (metrics or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._metrics[key] = (global_step, float(value))

    def _metrics_at(self, global_step: int) -> dict[str, float]:
        """The metrics measured for the weights after ``global_step`` steps.

        A save at a step without validation must not carry the ``val_loss`` of an earlier
        step: keep_best would rank these weights by another checkpoint's value (and, ties
        going to the newer checkpoint, delete the one that was really measured). Without
        the monitored metric a checkpoint is not ranked by keep_best (see _retention).
        """
        return {key: value for key, (step, value) in self._metrics.items() if step == global_step}

    def _epoch_ends(self, trainer: TrainerView, global_step: int) -> bool:
        per_epoch = trainer.config.training.steps_per_epoch
        return per_epoch > 0 and global_step % per_epoch == 0

    def _validation_follows(self, trainer: TrainerView, global_step: int) -> bool:
        interval = trainer.config.training.val_interval
        validates = interval is not None and interval > 0 and global_step % interval == 0
        return validates or self._epoch_ends(trainer, global_step)

    def _agree(self, trainer: TrainerView, decision: bool) -> bool:
        """Rank 0's decision on every rank (a wall-clock decision may differ between ranks)."""
        if not trainer.is_distributed:
            return decision
        box = [decision]
        torch.distributed.broadcast_object_list(box, src=0)
        return bool(box[0])

    def _save(self, trainer: TrainerView, reason: str, collective: bool = True) -> None:
        """Take the trainer's state and write it (rank 0), then apply retention."""
        self._pending = None
        global_step = trainer.global_step
        # first let an asynchronous save in flight finish: it counts as saved only if it succeeded
        self._wait(trainer)
        saved = self._last_saved_step == global_step
        if collective:
            # rank 0 knows whether its write succeeded; every rank must take the state (a collective) or none
            saved = self._agree(trainer, saved)
        if saved:
            return  # this exact state is on disk already (e.g. the train-end save right after an epoch save)
        try:
            state = trainer.state_dict()
            per_rank = _gather_rank_states(trainer, state) if collective else None
            if not trainer.is_global_zero:
                self._last_saved_step = global_step
                return
            encoded = encode_state(
                {"trainer": state, "per_rank": per_rank},
                copy_tensors=self.config.async_save,
                buffers=self._snapshot,  # free: _wait() above let the previous save finish
            )
            job = self._make_job(trainer, encoded, reason, global_step, state)
        except Exception as exc:
            self._save_failed(trainer, exc)
            return
        # the every_minutes clock restarts with every attempt, so a failing disk is not retried at
        # every step; the state counts as saved (_last_saved_step) only once job() wrote it
        self._last_save_time = time.monotonic()
        if self.config.async_save:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apt-checkpoint")
            self._inflight = (self._executor.submit(job), global_step)
        else:
            try:
                job()
            except Exception as exc:
                self._save_failed(trainer, exc, global_step)

    def _make_job(self, trainer: TrainerView, encoded: EncodedState, reason: str, global_step: int, state: Any) -> Any:
        store = self._store(trainer)
        counters = state.get("counters", {}) if isinstance(state, dict) else {}
        epoch = int(counters.get("epoch", trainer.epoch))
        metrics = self._metrics_at(global_step)
        fields = _Fields(metrics)
        # step and epoch as ints, metrics as floats: the types CheckpointConfig checks the template with
        fields.update(step=global_step, epoch=epoch)
        name = self.config.filename.format_map(fields).replace("/", "_").replace("\\", "_")
        emergency = reason == EMERGENCY
        if emergency:
            name += "-exception"
        elif reason == PREEMPTED:
            name += "-preempted"
        fingerprint = encoded.tree["trainer"].get("fingerprint") if isinstance(encoded.tree["trainer"], dict) else None
        policy = RetentionPolicy(self.config.keep_last, self.config.keep_best, self.config.mode)
        monitor = self.config.monitor  # ranks every checkpoint, also those written under another monitor

        def job() -> None:
            started = time.perf_counter()
            manifest = store.save(
                encoded,
                name=name,
                step=global_step,
                epoch=epoch,
                reason=reason,
                metrics=metrics,
                monitor=self.config.monitor,
                mode=self.config.mode,
                fingerprint=fingerprint,
                make_latest=not emergency,
            )
            # durable now. Under async_save this runs in the writer thread; the training thread
            # reads it only after _wait() has joined this job.
            self._last_saved_step = global_step
            self._saves += 1
            if emergency:
                logger.warning(
                    "emergency checkpoint written to %s; it is not marked `latest` because the failure may have "
                    "struck in the middle of a step. Resume it explicitly with --resume %s if you trust it",
                    store.root / manifest.name,
                    store.root / manifest.name,
                )
            try:
                deleted = store.prune(policy, protect=(manifest.name,), monitor=monitor)
            except OSError as exc:  # the new checkpoint is safe; only the clean-up failed
                logger.warning("could not remove old checkpoints in %s: %s", store.root, exc)
                deleted = []
            infos = store.infos(monitor)
            self._best = [
                {"name": c.name, "step": c.step, "value": c.metric}
                for c in best_checkpoints(infos, self.config.keep_best, self.config.mode)
            ]
            logger.info(
                "saved checkpoint %s (%s, %.1f MiB, %.2fs)%s",
                store.root / manifest.name,
                reason,
                manifest.size_bytes / 2**20,
                time.perf_counter() - started,
                f"; removed {', '.join(deleted)}" if deleted else "",
            )

        return job

    def _save_failed(self, trainer: TrainerView | None, exc: BaseException, step: int | None = None) -> None:
        if step is None and trainer is not None:
            step = trainer.global_step
        message = (
            f"checkpoint save failed at step {step if step is not None else '?'}: {type(exc).__name__}: {exc}; "
            "`latest` still points to the previous checkpoint"
        )
        if self.config.on_save_error == "stop":
            logger.error("%s; stopping the run (checkpoint.on_save_error=stop)", message)
            if trainer is not None:
                trainer.request_stop(message, source=self.name)
        else:
            logger.error("%s; training continues (set checkpoint.on_save_error=stop to stop instead)", message)

    def _wait(self, trainer: TrainerView | None = None) -> None:
        """Wait for an asynchronous save in flight and report its failure, if any."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        future, step = inflight
        exc = future.exception()
        if exc is not None:
            self._save_failed(trainer or self._trainer, exc, step)

    def _poll_async(self, trainer: TrainerView) -> None:
        """Report a finished asynchronous save's failure without waiting for one still running."""
        if self._inflight is not None and self._inflight[0].done():
            self._wait(trainer)

    # --- loading ----------------------------------------------------------------------------

    def _load(self, trainer: TrainerView, resume: str) -> LoadedCheckpoint:
        if resume == "latest":
            store = self._store(trainer)
            if not store.names():
                other = self._newest_sibling_store(trainer)
                if other is not None:
                    # `apt train --resume latest` without a fixed run name starts a new, time-stamped
                    # run folder: continue the newest run next to it, and say so.
                    logger.warning(
                        "no checkpoint in %s; resuming the newest run's latest checkpoint in %s (new checkpoints "
                        "go to %s)",
                        store.root,
                        other.root,
                        store.root,
                    )
                    return other.load_latest()
            return store.load_latest()
        path = Path(resume).expanduser()
        if not path.exists() and not path.is_absolute():
            candidate = self.checkpoint_dir(trainer) / path  # `--resume step00000100`
            if candidate.exists():
                path = candidate
        return load_checkpoint(path)

    def _newest_sibling_store(self, trainer: TrainerView) -> CheckpointStore | None:
        """The checkpoint folder of the most recently saved run next to this one, if any.

        Only for the default layout (``<run.dir>/<time stamp>``, no ``run.name``): there a
        resumed run cannot know its predecessor's folder name.
        """
        run_dir, run_cfg = trainer.run_dir, trainer.config.run
        if run_dir is None or Path(self.config.dir).expanduser().is_absolute():
            return None
        if run_cfg.name is not None or Path(run_dir).parent.resolve() != Path(run_cfg.dir).resolve():
            return None
        best: tuple[float, CheckpointStore] | None = None
        parent = Path(run_dir).parent
        for sibling in parent.iterdir() if parent.is_dir() else ():
            if sibling == Path(run_dir) or not sibling.is_dir():
                continue
            store = CheckpointStore(sibling / self.config.dir)
            latest = store.latest_name()
            if latest is None:
                continue
            try:
                created = read_manifest(store.root / latest).created_unix
            except CheckpointError:
                created = 0.0  # a broken latest still counts; load_latest falls back inside that run
            if best is None or created > best[0]:
                best = (created, store)
        return best[1] if best is not None else None

    def _state_for_rank(self, trainer: TrainerView, loaded: LoadedCheckpoint) -> dict[str, Any]:
        document = loaded.state
        if not isinstance(document, dict) or not isinstance(document.get("trainer"), dict):
            raise CheckpointError(f"{loaded.path} holds no trainer state", path=loaded.path)
        state: dict[str, Any] = document["trainer"]
        _check_trainer_state(state, loaded.path)
        per_rank = document.get("per_rank")
        if not per_rank:
            return state
        rank, world = trainer.rank, trainer.world_size
        if len(per_rank) != world:
            logger.warning(
                "checkpoint %s was written by %d processes, this run has %d: ranks below %d get their own RNG and "
                "data position, the others rank 0's; the resumed run will not repeat the original exactly",
                loaded.path,
                len(per_rank),
                world,
                len(per_rank),
            )
        mine = per_rank[rank] if rank < len(per_rank) else per_rank[0]
        return {**state, "rng": mine["rng"], "data": mine["data"]}

    def _check_fingerprint(self, trainer: TrainerView, state: dict[str, Any], loaded: LoadedCheckpoint) -> None:
        """With ``strict_resume``, refuse a checkpoint written with another plugin set.

        Without it the trainer's ``load_state_dict`` logs the differences as a warning.
        """
        if not self.config.strict_resume:
            return
        fix = "resume with the plugins that wrote it, or set checkpoint.strict_resume=false to resume anyway"
        try:
            trainer.check_fingerprint(state.get("fingerprint"), strict=True)
        except AptError as exc:
            raise CheckpointError(f"checkpoint {loaded.path}: {exc}; {fix}", path=loaded.path) from None


# what Trainer.load_state_dict reads, and the type each must have
_TRAINER_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "optimizer": dict,
    "lr_scheduler": dict,
    "rng": dict,
    "data": dict,
    "counters": dict,
}
_COUNTERS = ("epoch", "global_step", "step_in_epoch")


def _check_trainer_state(state: dict[str, Any], path: Path) -> None:
    """Refuse, in one line naming the file and the key, a trainer state of the wrong structure.

    The manifest's hashes prove the files are what was written, not that what was written
    is a trainer state (another tool's, an older format, a hand-edited one that was re-hashed).
    """
    where = path / "state.json"
    for key, kind in _TRAINER_KEYS.items():
        if not isinstance(state.get(key), kind):
            got = "missing" if key not in state else f"a {type(state[key]).__name__}"
            raise CheckpointError(
                f"{where} is not a trainer state APT can resume: 'trainer.{key}' is {got}, not a mapping; "
                "resume from another checkpoint (--resume PATH) or start a new run",
                path=where,
            )
    counters = state["counters"]
    for key in _COUNTERS:
        value = counters.get(key)
        if type(value) is not int or value < 0:
            raise CheckpointError(
                f"{where} is not a trainer state APT can resume: 'trainer.counters.{key}' is {value!r}, not a "
                "count; resume from another checkpoint (--resume PATH) or start a new run",
                path=where,
            )


def _gather_rank_states(trainer: TrainerView, state: Any) -> list[dict[str, Any]] | None:
    """Every rank's RNG and data position, gathered on rank 0 (None on one process)."""
    if not trainer.is_distributed or not isinstance(state, dict):
        return None
    mine = {"rng": state.get("rng"), "data": state.get("data")}
    gathered: list[Any] | None = [None] * trainer.world_size if trainer.is_global_zero else None
    torch.distributed.gather_object(mine, gathered, dst=0)
    return gathered
