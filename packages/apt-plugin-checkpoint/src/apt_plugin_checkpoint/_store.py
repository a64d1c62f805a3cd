"""The checkpoint folder: committed checkpoints, the ``latest`` pointer, loading with fallback.

Layout of ``<run>/checkpoints/``::

    step00000100/            one checkpoint (a folder)
        tensors.safetensors    every tensor of the state, keyed by its path
        state.json             everything else, as JSON
        manifest.json          sizes + SHA-256 of the two files; written last = commit marker
    step00000200/
    latest                   text file naming the newest durable checkpoint
    .tmp-step00000300-...    a save in progress (or the remains of a killed one)

A save assembles its folder under a ``.tmp-`` name, fsyncs it, renames it into place and
only then moves ``latest``. Loading ``latest`` verifies the checkpoint; if that fails it
says so loudly and falls back to the most recently written checkpoint that verifies.

"Newest" means written last (the manifest's ``created_unix``), not highest step: after a
resume from an older checkpoint into the same folder, the abandoned run's later steps are
older than what the resumed run writes (see :attr:`CheckpointInfo.order`).
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Final

from apt.errors import CheckpointError
from apt_plugin_checkpoint._atomic import TMP_PREFIX
from apt_plugin_checkpoint._atomic import TRASH_PREFIX
from apt_plugin_checkpoint._atomic import atomic_write_bytes
from apt_plugin_checkpoint._atomic import make_temp_dir
from apt_plugin_checkpoint._atomic import publish_dir
from apt_plugin_checkpoint._atomic import remove_leftovers
from apt_plugin_checkpoint._atomic import remove_tree
from apt_plugin_checkpoint._format import EncodedState
from apt_plugin_checkpoint._format import read_state_files
from apt_plugin_checkpoint._format import write_state_files
from apt_plugin_checkpoint._manifest import MANIFEST_FILE
from apt_plugin_checkpoint._manifest import Manifest
from apt_plugin_checkpoint._manifest import read_manifest
from apt_plugin_checkpoint._manifest import verify
from apt_plugin_checkpoint._manifest import write_manifest
from apt_plugin_checkpoint._retention import CheckpointInfo
from apt_plugin_checkpoint._retention import RetentionPolicy
from apt_plugin_checkpoint._retention import select_for_deletion


__all__ = [
    "EMERGENCY",
    "LATEST_FILE",
    "MANIFEST_MONITOR",
    "PREEMPTED",
    "CheckpointFallbackWarning",
    "CheckpointStore",
    "LoadedCheckpoint",
]

LATEST_FILE = "latest"
#: ``reason`` of a checkpoint written from ``on_exception``
EMERGENCY = "exception"
#: ``reason`` of a checkpoint written when SIGTERM/SIGUSR1 stopped the run at a step boundary
#: (exact, so ``latest`` names it, unlike an emergency checkpoint)
PREEMPTED = "preempted"
logger = logging.getLogger("apt.checkpoint")
_MAX_LATEST_BYTES = 512  # a checkpoint name and a newline


class _ManifestMonitor(enum.Enum):
    TOKEN = "each manifest's own monitor"


#: Default ``monitor`` of :meth:`CheckpointStore.infos` and :meth:`CheckpointStore.prune`:
#: rank each checkpoint by the metric its own manifest names as ``monitor`` (the behaviour
#: before the parameter existed). Pass the monitor you rank by instead (None: rank none).
MANIFEST_MONITOR: Final = _ManifestMonitor.TOKEN


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint was unusable and an older one was loaded instead."""


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint: its state, its manifest, and the newer ones that were skipped."""

    state: Any
    manifest: Manifest
    path: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)


class CheckpointStore:
    """One checkpoint folder. Writing is for a single process (rank 0); reading for any."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --- listing ------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the committed checkpoint folders (those with a manifest), unordered."""
        if not self.root.is_dir():
            return []
        return [
            e.name
            for e in self.root.iterdir()
            if not e.name.startswith((TMP_PREFIX, TRASH_PREFIX)) and (e / MANIFEST_FILE).is_file()
        ]

    def manifests(self) -> list[tuple[Manifest | None, str]]:
        """Every committed checkpoint, oldest first, with its manifest (None if unreadable).

        Ordered like :attr:`CheckpointInfo.order`: by time of writing (``created_unix``), then
        step, then name; unreadable manifests first.
        """
        result: list[tuple[Manifest | None, str]] = []
        for name in self.names():
            try:
                result.append((read_manifest(self.root / name), name))
            except CheckpointError:
                result.append((None, name))
        result.sort(key=lambda mn: (0, mn[0].created_unix, mn[0].step, mn[1]) if mn[0] else (-1, 0.0, 0, mn[1]))
        return result

    def infos(self, monitor: str | None | _ManifestMonitor = MANIFEST_MONITOR) -> list[CheckpointInfo]:
        """Retention's view of the readable checkpoints, oldest first.

        ``metric`` is each checkpoint's recorded value of ``monitor`` (None: no checkpoint is
        ranked); by default, of the metric its own manifest names as ``monitor``.
        """
        return [
            CheckpointInfo(
                name=name,
                step=m.step,
                created_unix=m.created_unix,
                metric=m.metric if isinstance(monitor, _ManifestMonitor) else m.value(monitor),
            )
            for m, name in self.manifests()
            if m is not None
        ]

    def latest_name(self) -> str | None:
        """What the ``latest`` pointer names, or None when there is no usable pointer.

        The pointer is read only if it is a regular file of at most a few hundred bytes: a
        FIFO would block the run forever, a device or a huge file would be read whole.
        """
        path = self.root / LATEST_FILE
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_LATEST_BYTES:
            what = "not a regular file" if not stat.S_ISREG(info.st_mode) else f"{info.st_size} bytes"
            logger.error(
                "ignoring %s: it is %s, not a checkpoint name; using the newest checkpoint instead", path, what
            )
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                text = f.read(_MAX_LATEST_BYTES).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if text and "/" not in text and not text.startswith(".") else None

    # --- writing ------------------------------------------------------------------------

    def prepare(self) -> list[str]:
        """Create the folder and remove what killed saves left behind; returns the removed names."""
        self.root.mkdir(parents=True, exist_ok=True)
        return remove_leftovers(self.root)

    def unique_name(self, name: str) -> str:
        """``name``, or ``name-1``, ``name-2`` ... if a checkpoint of that name exists already."""
        candidate, n = name, 1
        while (self.root / candidate).exists() or candidate == LATEST_FILE:
            candidate, n = f"{name}-{n}", n + 1
        return candidate

    def save(
        self,
        encoded: EncodedState,
        *,
        name: str,
        step: int,
        epoch: int,
        reason: str = "step",
        metrics: Mapping[str, float] | None = None,
        monitor: str | None = None,
        mode: str = "min",
        fingerprint: Any = None,
        make_latest: bool = True,
    ) -> Manifest:
        """Write a checkpoint durably and (unless ``make_latest`` is false) move ``latest`` to it.

        Either the whole checkpoint becomes visible under its name and ``latest`` names it,
        or (on any error, or if the process dies) nothing changes but a ``.tmp-`` leftover.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        name = self.unique_name(name)
        tmp = make_temp_dir(self.root, name)
        try:
            files = write_state_files(tmp, encoded)
            manifest = Manifest(
                name=name,
                step=step,
                epoch=epoch,
                files=files,
                reason=reason,
                metrics={k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
                monitor=monitor,
                mode=mode,
                fingerprint=fingerprint,
            )
            write_manifest(tmp, manifest)
            publish_dir(tmp, self.root / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if make_latest:
            self.set_latest(name)
        return manifest

    def set_latest(self, name: str) -> None:
        """Point ``latest`` at ``name`` atomically and durably."""
        atomic_write_bytes(self.root / LATEST_FILE, f"{name}\n".encode())

    def delete(self, name: str) -> None:
        """Remove one checkpoint (never the ``latest`` target)."""
        if name == self.latest_name():
            raise CheckpointError(
                f"refusing to delete {self.root / name}: `latest` points to it", path=self.root / name
            )
        remove_tree(self.root / name)

    def prune(
        self,
        policy: RetentionPolicy,
        protect: tuple[str, ...] = (),
        *,
        monitor: str | None | _ManifestMonitor = MANIFEST_MONITOR,
    ) -> list[str]:
        """Delete what ``policy`` does not keep; the ``latest`` target is always kept.

        ``keep_best`` ranks by ``monitor`` as :meth:`infos` does (None: it keeps nothing), in
        ``policy.mode``. The plugin passes ``checkpoint.monitor``, so checkpoints written under
        another monitor are ranked by their value of the configured one.
        """
        latest = self.latest_name()
        keep = (*protect, latest) if latest else protect
        deleted = []
        for info in select_for_deletion(self.infos(monitor), policy, keep):
            remove_tree(self.root / info.name)
            deleted.append(info.name)
        return deleted

    # --- reading ------------------------------------------------------------------------

    def load(self, name: str) -> LoadedCheckpoint:
        """Verify and load one checkpoint of this folder by name (no fallback)."""
        return load_checkpoint(self.root / name)

    def load_latest(self) -> LoadedCheckpoint:
        """Load the newest checkpoint that verifies.

        Tries the ``latest`` target first, then the other checkpoints newest (last written)
        first, never an emergency checkpoint. Every
        checkpoint skipped on the way is logged as an error and reported in a
        :class:`CheckpointFallbackWarning`.

        :raises CheckpointError: if there is no checkpoint, or none verifies.
        """
        latest = self.latest_name()
        manifests = self.manifests()
        # emergency checkpoints (taken while a run failed, maybe mid-step) are never picked
        # automatically; they can be resumed by path
        order = [name for m, name in reversed(manifests) if m is None or m.reason != EMERGENCY]
        if latest is not None:
            order = [latest, *(n for n in order if n != latest)]
        if not order:
            emergency = [name for m, name in manifests if m is not None and m.reason == EMERGENCY]
            if emergency:
                raise CheckpointError(
                    f"{self.root} holds only emergency checkpoints ({', '.join(emergency)}), written while a run "
                    "failed and possibly mid-step; `latest` never picks them. Resume one explicitly with "
                    f"--resume {self.root / emergency[-1]}",
                    path=self.root,
                )
            raise CheckpointError(
                f"no checkpoint in {self.root}: nothing to resume from. Start without --resume, or point "
                "--resume at a checkpoint folder (with `--resume latest` the run must write into the same run "
                "folder, e.g. a fixed run.name)",
                path=self.root,
            )
        skipped: list[tuple[str, str]] = []
        for name in order:
            try:
                loaded = load_checkpoint(self.root / name)
            except CheckpointError as exc:
                logger.error("checkpoint %s is unusable, trying the one written before it: %s", self.root / name, exc)
                skipped.append((name, str(exc)))
                continue
            if skipped:
                listing = "; ".join(f"{n}: {why}" for n, why in skipped)
                message = (
                    f"the newest checkpoint(s) in {self.root} could not be used ({listing}); resuming instead from "
                    f"{name!r} (step {loaded.manifest.step}), the most recently written checkpoint that verifies"
                )
                steps = {n: m.step for m, n in manifests if m is not None}
                first = steps.get(skipped[0][0])
                if first is not None and loaded.manifest.step > first:
                    message += (
                        f". Note: its step is later than that of {skipped[0][0]!r} (step {first}); it may belong "
                        "to a run that was abandoned by resuming from an earlier checkpoint"
                    )
                logger.error(message)
                warnings.warn(message, CheckpointFallbackWarning, stacklevel=2)
            loaded.skipped = skipped
            return loaded
        listing = "; ".join(f"{n}: {why}" for n, why in skipped)
        raise CheckpointError(f"no usable checkpoint in {self.root}: {listing}", path=self.root)


def _describe_file(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return "a file"
    if head[:1] == b"\x80":
        return "a pickle file"
    if head[:2] == b"PK":
        return "a zip archive (torch.save output, which holds pickles)"
    return "a file"


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Verify the checkpoint folder ``path`` against its manifest and load its state.

    Accepts the folder, its ``manifest.json``, or a checkpoints root (then: its latest).
    Refuses anything else, in particular pickle files (``.pt``, ``.pth``, ``.ckpt``):
    loading never unpickles.
    """
    path = Path(path)
    if path.is_file():
        if path.name == MANIFEST_FILE:
            path = path.parent
        else:
            raise CheckpointError(
                f"{path} is {_describe_file(path)}, not an APT checkpoint folder; APT loads only folders with "
                f"{MANIFEST_FILE}, state.json and tensors.safetensors and never unpickles files. Pass the "
                "checkpoint folder (e.g. runs/NAME/checkpoints/step00000100) or `latest`",
                path=path,
            )
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist", path=path)
    if not (path / MANIFEST_FILE).exists() and (path / LATEST_FILE).is_file():
        return CheckpointStore(path).load_latest()
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint {path} is not readable", path=path)
    manifest, contents = verify(path)
    state = read_state_files(contents, source=path)
    return LoadedCheckpoint(state=state, manifest=manifest, path=path)
