"""The checkpoint folder: retention and best-k, the latest pointer, verification and fallback."""

from __future__ import annotations

import errno
import json
import warnings
from pathlib import Path

import pytest
import torch
from apt.errors import CheckpointError
from apt_plugin_checkpoint import CheckpointFallbackWarning
from apt_plugin_checkpoint import CheckpointInfo
from apt_plugin_checkpoint import CheckpointStore
from apt_plugin_checkpoint import RetentionPolicy
from apt_plugin_checkpoint import encode_state
from apt_plugin_checkpoint import select_for_deletion


def _state(step: int) -> dict[str, object]:
    g = torch.Generator().manual_seed(step)
    return {"w": torch.randn(8, 8, generator=g), "counters": {"global_step": step}}


def _save(store: CheckpointStore, step: int, val_loss: float | None = None) -> str:
    metrics = {} if val_loss is None else {"val_loss": val_loss}
    return store.save(
        encode_state(_state(step)), name=f"step{step:04d}", step=step, epoch=0, metrics=metrics, monitor="val_loss"
    ).name


# --- retention (pure) -----------------------------------------------------------------------


def test_keep_last_and_best_k_never_delete_a_best_one() -> None:
    losses = {1: 3.0, 2: 1.0, 3: 2.5, 4: 0.9, 5: 2.0, 6: 2.2, 7: 1.8}
    infos = [CheckpointInfo(f"s{s}", s, created_unix=s, metric=v) for s, v in losses.items()]
    gone = select_for_deletion(infos, RetentionPolicy(keep_last=2, keep_best=2, mode="min"))
    # kept: newest two (s6, s7) and best two (s4=0.9, s2=1.0)
    assert [c.name for c in gone] == ["s1", "s3", "s5"]
    gone_max = select_for_deletion(infos, RetentionPolicy(keep_last=1, keep_best=1, mode="max"))
    assert {c.name for c in infos} - {c.name for c in gone_max} == {"s7", "s1"}  # newest, and max=3.0


def test_retention_protects_names_ignores_missing_metrics_and_can_keep_all() -> None:
    infos = [CheckpointInfo(f"s{s}", s, metric=None if s == 1 else float(s)) for s in range(1, 6)]
    gone = select_for_deletion(infos, RetentionPolicy(keep_last=1, keep_best=1, mode="min"), protect=["s1"])
    assert [c.name for c in gone] == ["s3", "s4"]  # s1 protected, s2 best (lowest finite), s5 newest
    assert select_for_deletion(infos, RetentionPolicy(keep_last=None)) == []
    assert len(select_for_deletion(infos, RetentionPolicy(keep_last=0, keep_best=0))) == 5


def test_best_ties_prefer_the_newer_checkpoint() -> None:
    infos = [CheckpointInfo("a", 1, metric=1.0), CheckpointInfo("b", 2, metric=1.0), CheckpointInfo("c", 3, metric=5)]
    gone = select_for_deletion(infos, RetentionPolicy(keep_last=0, keep_best=1))
    assert [c.name for c in gone] == ["a", "c"]


def test_newest_means_written_last_not_highest_step() -> None:
    # s15 was written last (a run resumed from an older checkpoint), after s30 of the abandoned run
    infos = [CheckpointInfo(f"s{s}", s, created_unix=t) for t, s in enumerate([10, 20, 30, 15], start=1)]
    gone = select_for_deletion(infos, RetentionPolicy(keep_last=2, keep_best=0))
    assert [c.name for c in gone] == ["s10", "s20"]  # oldest written first; kept: s15 and s30
    # without a time of writing (older manifests, created_unix 0) the step decides
    untimed = [CheckpointInfo(f"s{s}", s) for s in (30, 10, 20)]
    assert [c.name for c in select_for_deletion(untimed, RetentionPolicy(keep_last=1, keep_best=0))] == ["s10", "s20"]


# --- the folder -----------------------------------------------------------------------------


def test_prune_follows_manifests_and_keeps_latest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for step, loss in [(10, 2.0), (20, 0.5), (30, 1.5), (40, 1.9), (50, 1.7)]:
        name = _save(store, step, loss)
        store.prune(RetentionPolicy(keep_last=2, keep_best=1), protect=(name,))
    assert sorted(store.names()) == ["step0020", "step0040", "step0050"]
    assert store.latest_name() == "step0050"
    # a fresh store object (a restarted run) sees the same bookkeeping from the manifests
    infos = CheckpointStore(tmp_path).infos()
    assert [(i.name, i.metric) for i in infos] == [("step0020", 0.5), ("step0040", 1.9), ("step0050", 1.7)]


def test_same_name_gets_a_suffix_and_never_overwrites(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert _save(store, 5) == "step0005"
    assert _save(store, 5) == "step0005-1"
    assert store.latest_name() == "step0005-1"
    assert torch.equal(store.load("step0005").state["w"], _state(5)["w"])


def test_corrupt_latest_is_reported_and_previous_good_one_used(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for step in (1, 2, 3):
        _save(store, step)
    target = tmp_path / "step0003" / "tensors.safetensors"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit in a weight: same size, different hash
    target.write_bytes(bytes(data))
    with pytest.warns(CheckpointFallbackWarning, match="step0003.*SHA-256.*step0002"):
        loaded = store.load_latest()
    assert loaded.manifest.step == 2
    assert torch.equal(loaded.state["w"], _state(2)["w"])
    assert loaded.skipped and loaded.skipped[0][0] == "step0003"
    # an explicit path is not silently replaced by another checkpoint
    with pytest.raises(CheckpointError, match="SHA-256"):
        store.load("step0003")


def test_truncated_and_missing_files_fall_back_and_all_bad_raises(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _save(store, 1)
    _save(store, 2)
    (tmp_path / "step0002" / "state.json").write_bytes(b"{")
    (tmp_path / "step0001" / "tensors.safetensors").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointFallbackWarning)
        with pytest.raises(CheckpointError, match=r"no usable checkpoint.*step0002.*bytes.*step0001.*missing"):
            store.load_latest()


def test_empty_folder_says_how_to_resume(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nothing to resume from.*run.name"):
        CheckpointStore(tmp_path / "none").load_latest()


def test_leftovers_of_a_killed_save_are_not_checkpoints_and_get_removed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _save(store, 1)
    half = tmp_path / ".tmp-step0002-999-abcd"
    half.mkdir()
    (half / "tensors.safetensors").write_bytes(b"partial")
    no_manifest = tmp_path / "step0003"
    no_manifest.mkdir()
    assert store.names() == ["step0001"]
    assert store.prepare() == [half.name]
    assert not half.exists()
    assert store.load_latest().manifest.step == 1


def test_failed_save_disk_full_leaves_latest_and_no_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import apt_plugin_checkpoint._store as store_mod

    store = CheckpointStore(tmp_path)
    _save(store, 1)

    def disk_full(folder: Path, encoded: object) -> object:
        (folder / "tensors.safetensors").write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "write_state_files", disk_full)
    with pytest.raises(OSError, match="No space"):
        _save(store, 2)
    assert store.latest_name() == "step0001"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step0001"]
    assert store.load_latest().manifest.step == 1


def test_manifest_records_sizes_hashes_and_metrics(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _save(store, 7, 1.25)
    manifest = json.loads((tmp_path / "step0007" / "manifest.json").read_text())
    assert manifest["step"] == 7 and manifest["metrics"] == {"val_loss": 1.25}
    for name in ("state.json", "tensors.safetensors"):
        entry = manifest["files"][name]
        assert entry["size"] == (tmp_path / "step0007" / name).stat().st_size
        assert len(entry["sha256"]) == 64


def _set_created(store: CheckpointStore, name: str, created_unix: float | None) -> None:
    """Rewrite a manifest's time of writing (None: drop it, as in manifests without the field)."""
    path = store.root / name / "manifest.json"
    manifest = json.loads(path.read_text())
    if created_unix is None:
        del manifest["created_unix"]
    else:
        manifest["created_unix"] = created_unix
    path.write_text(json.dumps(manifest))


def _flip_a_byte(folder: Path) -> None:
    target = folder / "tensors.safetensors"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF  # same size, different hash
    target.write_bytes(bytes(data))


def test_prune_and_fallback_follow_the_time_of_writing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    # steps 10, 20, 30 without a time of writing (manifests that lack the field), then a run
    # resumed from step 10 writes steps 15 and 25 (later, with one)
    for step in (10, 20, 30, 15, 25):
        _save(store, step)
    for name, created in [("step0010", None), ("step0020", None), ("step0030", None)]:
        _set_created(store, name, created)
    _set_created(store, "step0015", 100.0)
    _set_created(store, "step0025", 200.0)
    assert [name for _, name in store.manifests()] == ["step0010", "step0020", "step0030", "step0015", "step0025"]
    # latest (step 25) is corrupt: the checkpoint written before it is step 15, not step 30
    _flip_a_byte(tmp_path / "step0025")
    with pytest.warns(
        CheckpointFallbackWarning, match=r"step0025.*SHA-256.*resuming instead from 'step0015' \(step 15\)"
    ):
        assert store.load_latest().manifest.step == 15
    # step 15 corrupt too: the next one is of the abandoned run, with a later step, and the warning says so
    _flip_a_byte(tmp_path / "step0015")
    with pytest.warns(CheckpointFallbackWarning, match=r"from 'step0030' \(step 30\).*later than that of 'step0025'"):
        assert store.load_latest().manifest.step == 30
    # keep_last=3: the two written last and, of the untimed ones, the one with the highest step
    assert store.prune(RetentionPolicy(keep_last=3, keep_best=0)) == ["step0010", "step0020"]
    assert sorted(store.names()) == ["step0015", "step0025", "step0030"]
