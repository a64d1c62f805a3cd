"""Durable, all-or-nothing writes on a POSIX file system.

The recipe (see the checkpointing study, section 5.4): write into a uniquely named
temporary path *in the destination folder* (so the rename never crosses file systems),
``fsync`` every file, ``fsync`` the temporary folder, ``rename`` it to its final name
(atomic), then ``fsync`` the parent folder so that the rename itself survives a power
cut. A crash at any point leaves either the old state or the complete new one, plus at
worst a ``.tmp-*`` leftover that :func:`remove_leftovers` deletes.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


__all__ = [
    "TMP_PREFIX",
    "TRASH_PREFIX",
    "atomic_write_bytes",
    "fsync_dir",
    "make_temp_dir",
    "publish_dir",
    "remove_leftovers",
    "remove_tree",
]

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (created, renamed, deleted names) to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unique(prefix: str, name: str) -> str:
    return f"{prefix}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically and durably (temp file, fsync, rename, fsync folder)."""
    tmp = path.parent / _unique(TMP_PREFIX, path.name)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def make_temp_dir(parent: Path, name: str) -> Path:
    """A fresh, uniquely named hidden folder in ``parent`` in which ``name`` is assembled."""
    path = parent / _unique(TMP_PREFIX, name)
    path.mkdir()
    return path


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final`` durably.

    Every file inside must already be fsynced. ``final`` must not exist: an existing
    checkpoint is never overwritten in place (``os.rename`` of a folder onto a non-empty
    folder fails, which is what we want).
    """
    fsync_dir(tmp)
    os.rename(tmp, final)
    fsync_dir(final.parent)


def remove_tree(path: Path) -> None:
    """Delete a folder so that no half-deleted copy is ever mistaken for a checkpoint.

    The folder is first renamed to a hidden ``.trash-*`` name (atomic), then removed.
    """
    if not path.exists():
        return
    trash = path.parent / _unique(TRASH_PREFIX, path.name)
    os.rename(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(parent: Path) -> list[str]:
    """Delete temp and trash entries that crashed writers left in ``parent``; returns their names.

    Only call this where no other process is writing into ``parent`` (rank 0, at start).
    """
    removed: list[str] = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        if entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed
