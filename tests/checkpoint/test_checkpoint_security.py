"""Crafted checkpoints are refused with a clear error, and nothing in them ever runs."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from apt.errors import CheckpointError
from apt_plugin_checkpoint import CheckpointStore
from apt_plugin_checkpoint import encode_state
from apt_plugin_checkpoint import load_checkpoint


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _good_checkpoint(tmp_path: Path) -> Path:
    store = CheckpointStore(tmp_path / "ckpts")
    store.save(encode_state({"w": torch.ones(3), "step": 1}), name="good", step=1, epoch=0)
    return tmp_path / "ckpts" / "good"


def _rewrite_manifest(folder: Path, **changes: object) -> None:
    """Recompute the manifest like an attacker who controls the folder would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        if (folder / name).is_file():
            data = (folder / name).read_bytes()
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("target", ["tensors.safetensors", "state.json"])
def test_pickle_payload_with_a_valid_manifest_is_refused_and_never_runs(tmp_path: Path, target: str) -> None:
    folder = _good_checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    (folder / target).write_bytes(pickle.dumps(_Payload(marker)))
    _rewrite_manifest(folder)
    with pytest.raises(CheckpointError, match="(not a valid safetensors|not valid JSON).*corrupt"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError):
        CheckpointStore(folder.parent).load_latest()
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_pickle_or_torch_save_file_given_as_checkpoint_is_refused(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save({"w": torch.ones(2)}, path)
        what = "zip archive"
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))
        what = "pickle"
    with pytest.raises(CheckpointError, match=f"{what}.*never unpickles"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../../outside.json", "/etc/passwd", "sub/state.json", "rng_state.pth"])
def test_manifest_naming_another_file_or_a_path_outside_is_refused(tmp_path: Path, name: str) -> None:
    folder = _good_checkpoint(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = {"size": 1, "sha256": "0" * 64}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=f"lists the file {name!r}.*refusing"):
        load_checkpoint(folder)


def test_symlinked_data_file_is_refused(tmp_path: Path) -> None:
    folder = _good_checkpoint(tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    (folder / "tensors.safetensors").rename(outside)
    (folder / "tensors.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="is a symlink"):
        load_checkpoint(folder)


def test_tensor_reference_to_a_missing_key_and_bad_json_constants_are_refused(tmp_path: Path) -> None:
    folder = _good_checkpoint(tmp_path)
    document = json.loads((folder / "state.json").read_text())
    document["tree"]["w"]["key"] = "../other"
    (folder / "state.json").write_text(json.dumps(document))
    _rewrite_manifest(folder)
    with pytest.raises(CheckpointError, match="refers to tensor '../other'"):
        load_checkpoint(folder)
    (folder / "state.json").write_text('{"format": "apt-checkpoint", "format_version": 1, "tree": NaN}')
    _rewrite_manifest(folder)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(folder)


def test_oversized_or_malformed_manifest_is_refused(tmp_path: Path) -> None:
    folder = _good_checkpoint(tmp_path)
    (folder / "manifest.json").write_text('{"format": "apt-checkpoint", "format_version": 1, "files": []}')
    with pytest.raises(CheckpointError, match="'files' must be a mapping"):
        load_checkpoint(folder)
    (folder / "manifest.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(CheckpointError, match="more than a manifest"):
        load_checkpoint(folder)
