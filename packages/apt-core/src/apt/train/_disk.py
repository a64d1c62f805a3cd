"""Disk faults at the run folder: a free-space check before anything is written, and writes that
name their file when the disk is full.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from apt.errors import UsageError


__all__ = ["check_free_space", "disk_free_bytes", "naming_the_file"]

_MARGIN_BYTES = 8 << 20  # config, metrics, summary and file-system slack


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_free_space(run_dir: Path, weights_bytes: int) -> None:
    """Refuse to start a run whose final weights (plus a margin) cannot fit in ``run_dir``."""
    needed = weights_bytes + _MARGIN_BYTES
    free = disk_free_bytes(run_dir)
    if free < needed:
        raise UsageError(
            f"not enough disk space for the run in {str(run_dir)!r}: about {needed / 2**20:.1f} MiB needed for its "
            f"weights, metrics and summary, {free / 2**20:.1f} MiB free; free some space or choose another folder "
            "with --run-dir (or run.dir)"
        )


@contextmanager
def naming_the_file(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into one line that names the file (and a full disk)."""
    try:
        yield
    except OSError as exc:
        why = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        raise UsageError(
            f"cannot write {str(path)!r}: {why}; free some space (or fix the folder's permissions) and "
            "continue the run with --resume latest"
        ) from None
