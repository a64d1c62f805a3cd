"""The plugin contract: every event a plugin can handle, with its arguments.

APT dispatches every event through pluggy (project name ``"apt"``). A handler (a
:class:`~apt.plugins.Plugin` method of the event's name, or a function given to
:meth:`~apt.plugins.HookManager.register`) is called by keyword with any subset of the
event's arguments it names, or all of them with ``**kwargs``; an argument the caller did
not supply arrives as ``None``. Arguments shared by several hooks mean the same in each.

Order of the training lifecycle (one optimizer step with ``grad_accum`` micro-batches)::

    on_model_built
    on_train_begin
      on_epoch_begin
        on_step_begin
          [per micro-batch]  on_compute_loss -> on_backward_begin -> backward -> on_backward_end
                             (backward: a plugin answering on_backward, else loss.backward())
          on_after_backward -> core clipping -> on_before_optimizer_step
          -> optimizer.step() -> on_optimizer_step   (skipped if a plugin vetoed the step)
        on_step_end
        [every training.val_interval steps]  on_validation_begin -> on_validation_end
      on_epoch_end          (after the epoch-end validation)
    on_train_end
    on_exception            (whenever the run fails; then the error propagates)
    on_save_checkpoint / on_load_checkpoint   (whenever a checkpoint is written / read)

Counters: ``epoch`` is the 0-based index of the current epoch; ``step`` is the 0-based
index of the optimizer step being taken (in ``on_step_end`` it is the step just
finished, so ``trainer.global_step == step + 1`` there).

Results: hooks documented as returning something have their non-``None`` results
collected by the trainer; the others' results are ignored.
"""

from __future__ import annotations

from typing import Any
from typing import Final

import pluggy

from apt.core.config import did_you_mean
from apt.errors import HookError
from apt.plugins.view import TrainerView


__all__ = [
    "ALIASES",
    "CRITICAL_EVENTS",
    "HOOK_MARK",
    "HOOK_NAMES",
    "PROJECT",
    "HookEvents",
    "Hookspecs",
    "hookimpl",
    "hookspec",
    "resolve_event",
]

PROJECT: Final = "apt"
hookspec: Final = pluggy.HookspecMarker(PROJECT)
hookimpl: Final = pluggy.HookimplMarker(PROJECT)


class Hookspecs:
    """The hook specifications. Each method documents one event and its arguments."""

    @hookspec
    def on_model_built(self, trainer: TrainerView, model: Any, config: Any) -> Any:
        """The model was built from its providers; plugins may change it before training.

        Modify ``model`` in place (replace submodules, add parameters) or return a new module
        to replace it (at most one plugin may). The optimizer is created after this hook.

        :param model: the freshly built :class:`~apt.model.GPT`.
        :returns: ``None``, or a replacement ``torch.nn.Module``.
        """

    @hookspec
    def on_train_begin(self, trainer: TrainerView, model: Any, config: Any, epoch: int, step: int) -> None:
        """Training is about to start (or resume: ``epoch``/``step`` are then not 0).

        :param epoch: the epoch training starts in.
        :param step: the global step training starts at.
        """

    @hookspec
    def on_train_end(self, trainer: TrainerView, model: Any, epoch: int, step: int, metrics: dict[str, float]) -> None:
        """Training finished normally (all epochs done, or a stop was requested).

        :param epoch: the last epoch that ran.
        :param step: the number of optimizer steps taken.
        :param metrics: the final metrics (``val_loss``, ``val_bpb`` ...).
        """

    @hookspec
    def on_epoch_begin(self, trainer: TrainerView, model: Any, epoch: int, step: int, schedule: Any) -> None:
        """An epoch starts. Scheduled plugins have been enabled for it already.

        :param step: the global step at the start of the epoch.
        :param schedule: the run's :class:`~apt.core.Schedule`.
        """

    @hookspec
    def on_epoch_end(self, trainer: TrainerView, model: Any, epoch: int, step: int, metrics: dict[str, float]) -> Any:
        """An epoch ended, after its end-of-epoch validation.

        :param metrics: the epoch's metrics (``train_loss``, ``val_loss``, ``val_bpb`` ...).
        :returns: optionally a ``dict[str, float]`` of extra metrics to log.
        """

    @hookspec
    def on_step_begin(self, trainer: TrainerView, model: Any, batch: Any, epoch: int, step: int) -> None:
        """An optimizer step starts.

        :param batch: ``(x, y)`` for the whole step, shape ``(grad_accum * B, T)`` each.
        """

    @hookspec
    def on_compute_loss(
        self,
        trainer: TrainerView,
        model: Any,
        batch: Any,
        outputs: Any,
        loss: Any,
        epoch: int,
        step: int,
        micro_step: int,
    ) -> Any:
        """Add named loss terms; called once per micro-batch, after the forward pass.

        :param batch: ``(x, y)`` of this micro-batch, each ``(B, T)`` int64.
        :param outputs: a :class:`~apt.model.ModelOutput` with ``logits (B, T, V)`` and
            ``hidden (B, T, C)`` (final hidden states after the last norm).
        :param loss: the language-model loss of the micro-batch (scalar tensor).
        :returns: ``None`` or ``dict[str, Tensor]`` of scalar terms (weighted by the plugin),
            added to the loss and logged as ``loss/<name>``; two plugins may not share a name.
        """

    @hookspec
    def on_backward_begin(
        self, trainer: TrainerView, model: Any, loss: Any, epoch: int, step: int, micro_step: int
    ) -> None:
        """About to call ``backward`` on one micro-batch's total loss (already scaled by 1/grad_accum)."""

    @hookspec(firstresult=True)
    def on_backward(
        self, trainer: TrainerView, model: Any, loss: Any, terms: Any, epoch: int, step: int, micro_step: int
    ) -> Any:
        """Take over the backward pass of one micro-batch; the first handler answering ``True`` owns it.

        Without an answer the trainer calls ``loss.backward()``. A handler answering ``True``
        must release the graph and have the micro-batch's gradients in ``.grad`` by the end
        of ``on_after_backward`` (one gradient per loss term for PCGrad-style surgery). Under
        DDP the all-reduce runs in ``loss.backward()`` of the last micro-batch: a handler
        taking that one over must reduce the gradients itself, or answer ``None`` there.

        :param loss: the micro-batch's total loss, already scaled by ``1/grad_accum``.
        :param terms: ``dict[str, Tensor]``: the named parts of ``loss``, each scaled by
            ``1/grad_accum`` so that they sum to ``loss``: ``"lm"`` (the language-model
            loss) and every ``on_compute_loss`` term under its name.
        :returns: ``True`` when the handler did the backward, else ``None``.
        """

    @hookspec
    def on_backward_end(self, trainer: TrainerView, model: Any, epoch: int, step: int, micro_step: int) -> None:
        """``backward`` of one micro-batch finished; gradients are accumulated in ``.grad``."""

    @hookspec
    def on_after_backward(self, trainer: TrainerView, model: Any, optimizer: Any, epoch: int, step: int) -> None:
        """The last micro-batch's backward finished: gradients are final, not yet clipped.

        Once per optimizer step, after all ``grad_accum`` backwards (and DDP's all-reduce),
        **before** the core's clipping (``training.grad_clip``) and ``grad_norm``. Handlers
        may change ``.grad`` in place or veto the step with ``trainer.skip_optimizer_step(reason)``;
        a plugin handling this event is critical by default.
        """

    @hookspec
    def on_before_optimizer_step(
        self, trainer: TrainerView, model: Any, optimizer: Any, epoch: int, step: int, grad_norm: float
    ) -> None:
        """Gradients are final (clipped) and the optimizer is about to step.

        A handler may still veto this step with ``trainer.skip_optimizer_step(reason)``.

        :param grad_norm: the total gradient norm before the core's clipping (after
            ``on_after_backward`` handlers changed the gradients).
        """

    @hookspec
    def on_optimizer_step(
        self, trainer: TrainerView, model: Any, optimizer: Any, epoch: int, step: int, lr: float
    ) -> None:
        """The optimizer applied an update (EMA updates belong here). Not fired for a vetoed step.

        :param lr: the learning rate used for this update.
        """

    @hookspec
    def on_step_end(
        self,
        trainer: TrainerView,
        model: Any,
        batch: Any,
        epoch: int,
        step: int,
        loss: float,
        metrics: dict[str, float],
    ) -> Any:
        """An optimizer step finished.

        :param loss: the step's total loss (mean over micro-batches).
        :param metrics: what the trainer logs for this step (``loss``, ``lr``, ``loss/<term>`` ...).
        :returns: optionally a ``dict[str, float]`` of metrics to log with this step; on a step
            that is not logged (``training.log_interval``) the next record holds their mean.
        """

    @hookspec
    def on_validation_begin(self, trainer: TrainerView, model: Any, epoch: int, step: int) -> None:
        """Validation starts; the model is in eval mode."""

    @hookspec
    def on_validation_end(
        self, trainer: TrainerView, model: Any, epoch: int, step: int, metrics: dict[str, float]
    ) -> Any:
        """Validation finished.

        :param metrics: ``val_loss`` and ``val_bpb`` of the live model.
        :returns: optionally a ``dict[str, float]`` of extra validation metrics.
        """

    @hookspec
    def on_save_checkpoint(self, trainer: TrainerView, checkpoint: dict[str, Any]) -> Any:
        """A checkpoint is being assembled; return this plugin's state.

        :param checkpoint: the trainer's state so far (read-only for plugins).
        :returns: ``None`` or this plugin's state (tensors and JSON-compatible values), stored
            under the plugin's name with its ``state_version``.
        """

    @hookspec
    def on_load_checkpoint(self, trainer: TrainerView, checkpoint: dict[str, Any], state: Any) -> None:
        """A checkpoint was read; restore this plugin's state.

        :param checkpoint: the whole checkpoint.
        :param state: what this plugin returned from ``on_save_checkpoint`` (after
            :meth:`~apt.plugins.Plugin.migrate_state` if its ``state_version`` changed),
            or ``None`` if the checkpoint holds nothing for it.
        """

    @hookspec(firstresult=True)
    def on_resume(self, trainer: TrainerView, resume: str) -> Any:
        """Load the training state to resume from; the first non-``None`` answer wins.

        Called before ``on_train_begin`` when ``training.resume`` is set (``apt train
        --resume latest|PATH``); the trainer applies the answer with ``load_state_dict``.

        :param resume: ``"latest"`` or a path, as the user gave it.
        :returns: the state dict produced by ``trainer.state_dict()``, or ``None``.
        """

    @hookspec
    def on_exception(self, trainer: TrainerView, model: Any, exception: BaseException, epoch: int, step: int) -> None:
        """The run is failing with ``exception``; last chance to save (then it propagates)."""


#: The original project's spellings, accepted everywhere an event name is.
ALIASES: Final[dict[str, str]] = {
    "on_epoch_start": "on_epoch_begin",
    "on_step_start": "on_step_begin",
    "on_train_start": "on_train_begin",
    "on_validation_start": "on_validation_begin",
}

HOOK_NAMES: Final[tuple[str, ...]] = tuple(n for n in vars(Hookspecs) if n.startswith("on_"))

#: Events whose handlers change the loss, the gradients or the model: a plugin that handles
#: one is critical unless it says otherwise (the run would silently change without it).
CRITICAL_EVENTS: Final = frozenset({"on_compute_loss", "on_model_built", "on_backward", "on_after_backward"})

#: The attribute where ``@hook`` records ``(event, priority, condition)`` on a plugin method.
HOOK_MARK: Final = "__apt_hooks__"


def resolve_event(event: str) -> str:
    """The canonical name of ``event`` (aliases resolved); unknown names raise HookError."""
    event = ALIASES.get(event, event)
    if event not in HOOK_NAMES:
        raise HookError(
            f"unknown hook event {event!r}{did_you_mean(event, [*HOOK_NAMES, *ALIASES])}; "
            "events are listed by apt.plugins.HookEvents"
        )
    return event


class HookEvents:
    """Standard event names, as constants (``HookEvents.ON_STEP_END == "on_step_end"``)."""

    ON_MODEL_BUILT: Final = "on_model_built"
    ON_TRAIN_BEGIN: Final = "on_train_begin"
    ON_TRAIN_END: Final = "on_train_end"
    ON_EPOCH_BEGIN: Final = "on_epoch_begin"
    ON_EPOCH_END: Final = "on_epoch_end"
    ON_STEP_BEGIN: Final = "on_step_begin"
    ON_COMPUTE_LOSS: Final = "on_compute_loss"
    ON_BACKWARD_BEGIN: Final = "on_backward_begin"
    ON_BACKWARD: Final = "on_backward"
    ON_BACKWARD_END: Final = "on_backward_end"
    ON_AFTER_BACKWARD: Final = "on_after_backward"
    ON_BEFORE_OPTIMIZER_STEP: Final = "on_before_optimizer_step"
    ON_OPTIMIZER_STEP: Final = "on_optimizer_step"
    ON_STEP_END: Final = "on_step_end"
    ON_VALIDATION_BEGIN: Final = "on_validation_begin"
    ON_VALIDATION_END: Final = "on_validation_end"
    ON_SAVE_CHECKPOINT: Final = "on_save_checkpoint"
    ON_LOAD_CHECKPOINT: Final = "on_load_checkpoint"
    ON_RESUME: Final = "on_resume"
    ON_EXCEPTION: Final = "on_exception"
    # the original's spellings
    ON_EPOCH_START: Final = "on_epoch_start"
    ON_STEP_START: Final = "on_step_start"

    @classmethod
    def all(cls) -> tuple[str, ...]:
        """Every canonical event name, in lifecycle order."""
        return HOOK_NAMES
