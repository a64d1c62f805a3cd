"""What a run prints while it trains: a progress bar on a terminal, plain lines in a log file.

On a terminal (stdout is a TTY) a tqdm bar shows the step, loss, learning rate and
throughput. Anywhere else (``apt train > log 2>&1``, CI, a cluster job) a bar would be
one line rewritten in place, or nothing; :class:`ConsoleLines` prints instead one plain,
flushed line per ``training.log_interval`` steps and one per validation::

    step 20/400 epoch 0 | loss 2.9134 | lr 3.00e-03 | 15230 tok/s | ETA 1m42s
    step 100/400 epoch 0 | val_loss 1.8421 | val_bpb 2.6576
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TextIO


__all__ = ["ConsoleLines", "format_duration", "stdout_is_terminal"]


def stdout_is_terminal() -> bool:
    """Whether stdout is an interactive terminal (then the progress bar; else plain lines)."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def format_duration(seconds: float) -> str:
    """``"1h02m"``, ``"3m05s"`` or ``"42s"``."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class ConsoleLines:
    """Plain progress lines on ``stream`` (stdout); a no-op when ``enabled`` is false.

    :param total_steps: the run's optimizer steps (``max_epochs * steps_per_epoch``).
    :param start_step: the step training (re)starts at, for the ETA of a resumed run.
    """

    def __init__(self, total_steps: int, start_step: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.total_steps = total_steps
        self.enabled = enabled
        self.stream = stream
        self._t0 = time.perf_counter()
        self._step0 = start_step

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def eta_s(self, step: int) -> float | None:
        """Seconds left at this step's pace since the start (validation included), or None before a step."""
        done = step - self._step0
        if done <= 0:
            return None
        return (time.perf_counter() - self._t0) / done * max(0, self.total_steps - step)

    def step(self, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
        """One line for a logged step: loss, learning rate, throughput and the time left."""
        if not self.enabled:
            return
        parts = [f"step {step}/{self.total_steps} epoch {epoch}"]
        if "loss" in metrics:
            parts.append(f"loss {metrics['loss']:.4f}")
        if "lr" in metrics:
            parts.append(f"lr {metrics['lr']:.2e}")
        if "tokens_per_s" in metrics:
            parts.append(f"{metrics['tokens_per_s']:.0f} tok/s")
        eta = self.eta_s(step)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        self._print(" | ".join(parts))

    def validation(self, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
        """One line for a validation: every ``val_*`` metric (plugins' included)."""
        if not self.enabled:
            return
        vals = [f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val_") or "/val_" in k]
        self._print(" | ".join([f"step {step}/{self.total_steps} epoch {epoch}", *vals]))
