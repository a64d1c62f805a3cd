"""The manifest: the commit marker of a checkpoint and its integrity record.

``manifest.json`` is the last file written into a checkpoint folder. It lists every data
file with its size and SHA-256, plus what retention and resume need to know (step,
epoch, the monitored metric). A folder without a valid manifest is not a checkpoint.

:func:`verify` is what makes loading safe and honest: it accepts only the known file
names, refuses paths that leave the folder and symlinks, checks sizes and hashes, and
returns the verified bytes, so that what was checked is exactly what gets parsed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from apt.errors import CheckpointError
from apt_plugin_checkpoint._format import FORMAT_NAME
from apt_plugin_checkpoint._format import FORMAT_VERSION
from apt_plugin_checkpoint._format import STATE_FILE
from apt_plugin_checkpoint._format import TENSORS_FILE
from apt_plugin_checkpoint._format import FileDigest
from apt_plugin_checkpoint._format import parse_json


__all__ = ["DATA_FILES", "MANIFEST_FILE", "Manifest", "read_manifest", "verify", "write_manifest"]

MANIFEST_FILE = "manifest.json"
#: The only files a checkpoint may consist of; nothing else is ever opened on load.
DATA_FILES = (STATE_FILE, TENSORS_FILE)
_MAX_MANIFEST_BYTES = 1 << 20


@dataclass
class Manifest:
    """What ``manifest.json`` records about one checkpoint."""

    name: str
    step: int
    epoch: int
    files: dict[str, FileDigest]
    reason: str = "step"
    created_unix: float = field(default_factory=time.time)
    metrics: dict[str, float] = field(default_factory=dict)
    monitor: str | None = None
    mode: str = "min"
    fingerprint: Any = None

    @property
    def metric(self) -> float | None:
        """The value of the metric this manifest names as ``monitor``, when known and finite."""
        return self.value(self.monitor)

    def value(self, metric: str | None) -> float | None:
        """The value of ``metric`` measured at the saved step, when recorded and finite (None: no metric)."""
        if metric is None:
            return None
        value = self.metrics.get(metric)
        return value if value is not None and math.isfinite(value) else None

    @property
    def size_bytes(self) -> int:
        return sum(d.size for d in self.files.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "step": self.step,
            "epoch": self.epoch,
            "reason": self.reason,
            "created_unix": self.created_unix,
            "metrics": {k: v for k, v in self.metrics.items() if math.isfinite(v)},
            "monitor": self.monitor,
            "mode": self.mode,
            "fingerprint": self.fingerprint,
            "files": {name: {"size": d.size, "sha256": d.sha256} for name, d in self.files.items()},
        }

    @classmethod
    def from_json(cls, data: Any, *, source: Any) -> Manifest:
        def bad(message: str) -> CheckpointError:
            return CheckpointError(f"{source}: {message}", path=source)

        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise bad("not an APT checkpoint manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise bad(
                f"format_version {data.get('format_version')!r} is not supported (this plugin reads "
                f"{FORMAT_VERSION}); upgrade apt-plugin-checkpoint"
            )
        files = data.get("files")
        if not isinstance(files, dict):
            raise bad("'files' must be a mapping of file name to size and sha256")
        digests = {}
        for name, entry in files.items():
            _check_file_name(name, source)
            if (
                not isinstance(entry, dict)
                or type(entry.get("size")) is not int
                or entry["size"] < 0
                or not isinstance(entry.get("sha256"), str)
                or len(entry["sha256"]) != 64
            ):
                raise bad(f"entry for {name!r} must have an integer 'size' and a 64-hex-digit 'sha256'")
            digests[name] = FileDigest(entry["size"], entry["sha256"].lower())
        missing = [n for n in DATA_FILES if n not in digests]
        if missing:
            raise bad(f"lists no {', '.join(missing)}")
        metrics = data.get("metrics") or {}
        try:
            return cls(
                name=str(data["name"]),
                step=int(data["step"]),
                epoch=int(data["epoch"]),
                files=digests,
                reason=str(data.get("reason", "step")),
                created_unix=float(data.get("created_unix", 0.0)),
                metrics={str(k): float(v) for k, v in metrics.items()},
                monitor=data.get("monitor"),
                mode=str(data.get("mode", "min")),
                fingerprint=data.get("fingerprint"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise bad(f"malformed ({type(exc).__name__}: {exc})") from None


def _check_file_name(name: Any, source: Any) -> None:
    # Only the known plain names: no '..', no absolute path, no sub-folder, no other file
    # (a crafted manifest must not make us read, let alone unpickle, anything else).
    if name not in DATA_FILES:
        raise CheckpointError(
            f"{source}: lists the file {name!r}; a checkpoint may only contain {', '.join(DATA_FILES)} "
            "(refusing a manifest that points elsewhere)",
            path=source,
        )


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` (fsynced) into the unpublished ``folder``: the checkpoint's commit marker."""

    raw = json.dumps(manifest.to_json(), indent=1, allow_nan=False).encode("utf-8")
    # a plain write is enough: the folder is still a hidden temp folder, published by rename
    with open(folder / MANIFEST_FILE, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())


def _read_regular_file(path: Path, folder: Path, limit: int | None = None, expected_size: int | None = None) -> bytes:
    """Read a plain file that lives directly in ``folder`` (no symlink, no device, no fifo)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete", path=path) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a regular file"
        raise CheckpointError(f"{path} is {kind}; refusing to read it as part of a checkpoint", path=path)
    if path.parent.resolve() != folder.resolve():
        raise CheckpointError(f"{path} is outside the checkpoint folder {folder}", path=path)
    if limit is not None and info.st_size > limit:
        raise CheckpointError(f"{path} is {info.st_size} bytes, more than a manifest can be", path=path)
    if expected_size is not None and info.st_size != expected_size:
        # compared before reading: a huge file must not be read into memory (MemoryError) to find out
        raise CheckpointError(
            f"{path} has {info.st_size} bytes but the manifest says {expected_size}; the checkpoint is "
            "truncated or was modified",
            path=path,
        )
    # O_NOFOLLOW: even if the file was swapped for a symlink after lstat, do not follow it.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_manifest(folder: Path) -> Manifest:
    """Read and validate ``folder/manifest.json`` (no hashing; see :func:`verify`)."""
    path = folder / MANIFEST_FILE
    raw = _read_regular_file(path, folder, limit=_MAX_MANIFEST_BYTES)
    return Manifest.from_json(parse_json(raw, source=path), source=path)


def verify(folder: Path) -> tuple[Manifest, dict[str, bytes]]:
    """Check every file of the checkpoint in ``folder`` against its manifest.

    :returns: the manifest and the verified contents of each data file.
    :raises CheckpointError: naming the file and what is wrong (missing, size, checksum).
    """
    manifest = read_manifest(folder)
    contents = {}
    for name, expected in manifest.files.items():
        path = folder / name
        data = _read_regular_file(path, folder, expected_size=expected.size)
        if len(data) != expected.size:  # grew or shrank between the size check and the read
            raise CheckpointError(
                f"{path} has {len(data)} bytes but the manifest says {expected.size}; the checkpoint is "
                "truncated or was modified",
                path=path,
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected.sha256:
            raise CheckpointError(
                f"{path} fails its SHA-256 check (expected {expected.sha256[:16]}..., got {digest[:16]}...); "
                "the checkpoint is corrupt or was modified",
                path=path,
            )
        contents[name] = data
    return manifest, contents
