"""Preemption: SIGTERM and SIGUSR1 end a run at the next step boundary, resumably.

Cluster schedulers end a job with SIGTERM (SLURM, Kubernetes), or with a signal chosen by
``#SBATCH --signal=USR1@90`` ahead of the time limit, then kill it. While the Trainer runs,
:class:`PreemptionSignals` turns those signals into a request: the step in progress (and
its validation) completes, then the trainer raises :class:`~apt.errors.Preempted`. The
``on_exception`` hooks see it; the checkpoint plugin saves the state, which is exact at a
step boundary, and marks it ``latest``. The ``apt`` command exits with ``128 + signum``
(143 for SIGTERM), the status a shell gives a process ended by that signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


__all__ = ["PREEMPTION_SIGNALS", "PreemptionSignals"]

log = logging.getLogger("apt.train")

#: The signals that preempt a run: what schedulers send before they kill.
PREEMPTION_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


class PreemptionSignals:
    """Remembers the first preemption signal received while :meth:`installed` is active."""

    def __init__(self) -> None:
        #: the number of the first signal received, or None
        self.received: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            log.warning(
                "received %s: finishing this step, then saving a checkpoint and stopping", signal.Signals(signum).name
            )
            self.received = signum

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle the preemption signals inside the block (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[signal.Signals, Any] = {}
        for sig in PREEMPTION_SIGNALS:
            previous[sig] = signal.signal(sig, self._handle)
        try:
            yield
        finally:
            for restored, handler in previous.items():
                signal.signal(restored, handler)
