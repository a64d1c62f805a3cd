"""The datastore: no validation leakage, IVF-PQ recall, reproducible builds, and one-line refusals of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from apt.core import APTConfig
from apt.data import TextDataset
from apt.data import prepare
from apt.errors import PluginHookError
from apt.errors import UsageError
from apt.train import load_weights
from apt_plugin_retrieval import INDEX_FILE
from apt_plugin_retrieval import KEYS_FILE
from apt_plugin_retrieval import MANIFEST_FILE
from apt_plugin_retrieval import Datastore
from apt_plugin_retrieval import IndexSpec
from apt_plugin_retrieval import RetrievalConfig
from apt_plugin_retrieval import RetrievalError
from apt_plugin_retrieval import build_datastore
from apt_plugin_retrieval import make_index
from apt_plugin_retrieval import score_batches
from apt_plugin_retrieval import weights_sha256
from retrieval_helpers import make_trainer
from retrieval_helpers import retrieval_config


#: IVF-PQ recall@16 against exact search must be at least this (measured 0.996 re-ranked, 0.744 from raw codes)
RECALL_FLOOR = 0.9


def _reloaded(run_dir: Path) -> tuple[APTConfig, TextDataset, torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    config = APTConfig.from_yaml(run_dir / "config.yaml")
    trainer = make_trainer(config, None)
    trainer.setup()
    assert trainer.model is not None
    load_weights(trainer.model, run_dir / "model.safetensors")
    return config, trainer.data, trainer.model, trainer.val_batches


def _nearest_val_distances(store: Datastore, model: torch.nn.Module, val_batches: list) -> torch.Tensor:
    """Each validation position's distance to its nearest stored key, skipping each window's first
    8 positions (a 1-3 byte context can recur verbatim in the training text: equal keys, no leak)."""
    scored = score_batches(model, val_batches, store, k=1, key="last_ffn_input")
    T = val_batches[0][0].size(1)
    return torch.cat([d[:, 0].reshape(-1, T)[:, 8:].reshape(-1) for d in scored.dist])


def test_the_validation_split_never_enters_the_datastore(tmp_path: Path, trained_run: Path) -> None:
    """Exactly the training positions are stored, and no validation context has a stored twin.

    The control builds a leaky store that also holds the validation windows: there every
    validation query finds itself (distance ~0), so the same check fails on leakage.
    """
    config, data, model, val_batches = _reloaded(trained_run)
    store = Datastore.open(trained_run / "retrieval")
    assert store.size == len(data.train) - 1
    assert np.array_equal(np.asarray(store.vals), data.train[1:].numpy())  # stride = block_size: in order
    real = _nearest_val_distances(store, model, val_batches)

    # the validation windows' inputs, each at a multiple of block_size (where datastore windows start)
    windows = torch.cat([x.reshape(-1) for x, _ in val_batches])
    cfg = RetrievalConfig(progress=False)
    pad = (-len(data.train)) % config.model.block_size
    leaky_tokens = torch.cat([data.train, data.train[:pad], windows, windows[:1]])  # + 1: the last window whole
    leaky = build_datastore(
        tmp_path / "leaky", model, leaky_tokens, cfg, block_size=config.model.block_size,
        tokenizer={"repr": "x", "vocab_size": 256}, weights_sha256=weights_sha256(model),
    )  # fmt: skip
    leaked = _nearest_val_distances(leaky, model, val_batches)
    # a stored twin of a query is at float16 rounding distance (~1e-6); other contexts are farther
    exact = 5e-6
    assert float((leaked < exact).float().mean()) == 1.0  # the control: leakage shows as exact matches
    assert float((real < exact).float().mean()) < 0.01  # the real store has (almost) none


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(32, dim)) * 3
    return (centers[rng.integers(0, 32, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def test_ivfpq_recall_at_k_against_exact_search(capsys: pytest.CaptureFixture[str]) -> None:
    """IVF-PQ (re-ranked by exact distances, as the datastore searches) finds the exact top-16 (recall >= floor)."""
    keys = _clustered(4000, 16, seed=0)
    queries = torch.from_numpy(_clustered(100, 16, seed=1))
    manifest = {"count": len(keys), "dim": 16, "weights_sha256": "x"}
    vals = np.arange(len(keys), dtype=np.int32)  # value = id, to compare neighbour sets
    flat = Datastore(Path("f"), {**manifest, "index": IndexSpec("flat").as_dict()}, keys.astype(np.float16), vals,
                     make_index(keys, IndexSpec("flat")))  # fmt: skip
    spec = IndexSpec("ivfpq", nlist=16, pq_m=8, pq_bits=6, nprobe=8, train_keys=4000)
    ivf = Datastore(Path("i"), {**manifest, "index": spec.as_dict()}, keys.astype(np.float16), vals,
                    make_index(keys, spec, seed=0))  # fmt: skip
    k = 16
    _, exact = flat.search(queries, k)
    _, approx = ivf.search(queries, k)
    recall = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(exact, approx, strict=True)]))
    _, raw = ivf.search(queries, k, recompute=False)
    raw_recall = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(exact, raw, strict=True)]))
    with capsys.disabled():
        print(f"\nIVF-PQ recall@{k}: {recall:.3f} re-ranked, {raw_recall:.3f} raw codes (floor {RECALL_FLOOR})")
    assert recall >= RECALL_FLOOR
    assert recall >= raw_recall


def test_two_builds_are_identical(tmp_path: Path, trained_run: Path) -> None:
    """An IVF-PQ build is reproducible: the same weights and tokens give the same bytes (keys, values, index)."""
    config, data, model, _ = _reloaded(trained_run)
    cfg = RetrievalConfig(progress=False, index="ivfpq", nlist=16, pq_m=4, pq_bits=6, train_keys=4000)
    manifests = []
    for name in ("a", "b"):
        store = build_datastore(
            tmp_path / name, model, data.train[:6000], cfg, block_size=config.model.block_size,
            tokenizer={"repr": "x", "vocab_size": 256}, weights_sha256=weights_sha256(model),
        )  # fmt: skip
        manifests.append(store.manifest["files"])
    assert manifests[0] == manifests[1] and INDEX_FILE in manifests[0]


@pytest.fixture
def store_copy(tmp_path: Path, trained_run: Path) -> Path:
    folder = tmp_path / "retrieval"
    shutil.copytree(trained_run / "retrieval", folder)
    return folder


def _error(folder: Path, **kwargs: object) -> str:
    with pytest.raises(RetrievalError) as info:
        Datastore.open(folder, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_or_corrupt_files_are_named(store_copy: Path) -> None:
    """A missing manifest, a corrupt or missing keys file: one line naming the file and the fix."""
    (store_copy / KEYS_FILE).write_bytes((store_copy / KEYS_FILE).read_bytes()[:-8] + b"\0" * 8)
    assert str(store_copy / KEYS_FILE) in _error(store_copy) and "corrupt" in _error(store_copy)
    (store_copy / KEYS_FILE).unlink()
    assert str(store_copy / KEYS_FILE) in _error(store_copy) and "missing" in _error(store_copy)
    (store_copy / MANIFEST_FILE).write_text("{not json", encoding="utf-8")
    assert str(store_copy / MANIFEST_FILE) in _error(store_copy)
    (store_copy / MANIFEST_FILE).unlink()
    assert str(store_copy / MANIFEST_FILE) in _error(store_copy)


def test_a_corrupt_index_file_is_named(tmp_path: Path, trained_run: Path) -> None:
    """An index.faiss that FAISS cannot read (even with a matching hash) is one line naming it."""
    config, data, model, _ = _reloaded(trained_run)
    cfg = RetrievalConfig(progress=False, index="ivfpq", nlist=8, pq_m=4, pq_bits=4, train_keys=2000)
    store = build_datastore(
        tmp_path / "ivf", model, data.train[:3000], cfg, block_size=config.model.block_size,
        tokenizer={"repr": "x", "vocab_size": 256}, weights_sha256=weights_sha256(model),
    )  # fmt: skip
    folder = store.folder
    index = folder / INDEX_FILE
    index.write_bytes(b"garbage" * 10)
    assert str(index) in _error(folder) and "corrupt" in _error(folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    import hashlib

    manifest["files"][INDEX_FILE] = hashlib.sha256(index.read_bytes()).hexdigest()
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    assert str(index) in _error(folder) and "not a FAISS index" in _error(folder)


def test_another_model_width_or_tokenizer_is_refused(store_copy: Path) -> None:
    """Keys of another width, or another tokenizer: one line naming the manifest."""
    manifest = store_copy / MANIFEST_FILE
    width = _error(store_copy, dim=64)
    assert str(manifest) in width and "width 32" in width and "64" in width
    tok = _error(store_copy, tokenizer={"repr": "BPETokenizer(vocab_size=4096)", "vocab_size": 4096})
    assert str(manifest) in tok and "tokenizer" in tok


def test_an_index_too_large_for_memory_is_refused_before_building(tmp_path: Path, trained_run: Path) -> None:
    """The estimate comes first: nothing is computed or written, the previous datastore stays."""
    config, data, model, _ = _reloaded(trained_run)
    folder = tmp_path / "retrieval"
    shutil.copytree(trained_run / "retrieval", folder)
    before = (folder / MANIFEST_FILE).read_bytes()
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(RetrievalError) as info:
        build_datastore(
            folder, model, data.train, RetrievalConfig(progress=False, memory_limit_mb=1),
            block_size=config.model.block_size, tokenizer={"repr": "x", "vocab_size": 256}, weights_sha256="w",
        )  # fmt: skip
    handle.remove()
    assert str(folder / KEYS_FILE) in str(info.value) and "MiB" in str(info.value)
    assert len(calls) <= 1  # at most the one-token probe of the key width
    assert (folder / MANIFEST_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retrieval"]


def test_training_refuses_an_index_too_large_before_the_first_step(tmp_path: Path, corpus_path: Path) -> None:
    """retrieval.memory_limit_mb below the estimate stops the run at on_train_begin with the file named."""
    trainer = make_trainer(retrieval_config(corpus_path, memory_limit_mb=1), tmp_path / "run")
    with pytest.raises(PluginHookError) as info:
        trainer.fit()
    assert isinstance(info.value.__cause__, RetrievalError)
    assert str(tmp_path / "run" / "retrieval") in str(info.value.__cause__)
    assert trainer.global_step == 0


def test_validation_of_other_weights_skips_retrieval_and_says_why(
    tmp_path: Path, trained_run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside training (apt eval --weights ...), a datastore of other weights is never used nor overwritten."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = (run_dir / "retrieval" / MANIFEST_FILE).read_bytes()
    config = APTConfig.from_yaml(run_dir / "config.yaml")
    trainer = make_trainer(config, run_dir)
    trainer.setup()  # untrained weights: not the ones the datastore was built with
    with caplog.at_level("WARNING", logger="apt.retrieval"):
        metrics = trainer.validate()
    assert "val_bpb" in metrics and not any(k.startswith("retrieval/") for k in metrics)
    assert str(run_dir / "retrieval" / MANIFEST_FILE) in caplog.text and "other weights" in caplog.text
    assert (run_dir / "retrieval" / MANIFEST_FILE).read_bytes() == before


def test_a_resume_with_a_datastore_rebuilt_by_other_weights_is_refused(tmp_path: Path, corpus_path: Path) -> None:
    """The checkpoint references the datastore by hash; once other weights rebuilt it, loading the state fails."""
    run_dir = tmp_path / "run"
    config = retrieval_config(corpus_path)
    trainer = make_trainer(config, run_dir)
    trainer.fit()
    state = trainer.state_dict()
    ref = state["plugins"]["retrieval"]["state"]["datastore"]
    assert ref["folder"] == str(run_dir / "retrieval")
    make_trainer(config, run_dir).load_state_dict(state)  # same datastore: accepted

    other = make_trainer(config, None)
    other.setup()
    assert other.model is not None
    build_datastore(
        run_dir / "retrieval", other.model, other.data.train, RetrievalConfig(progress=False),
        block_size=config.model.block_size, tokenizer={"repr": "x", "vocab_size": 256},
        weights_sha256=weights_sha256(other.model),
    )  # fmt: skip
    with pytest.raises(PluginHookError) as info:
        make_trainer(config, run_dir).load_state_dict(state)
    cause = info.value.__cause__
    assert isinstance(cause, RetrievalError) and "other weights" in str(cause)
    assert str(run_dir / "retrieval" / MANIFEST_FILE) in str(cause) and "\n" not in str(cause)


def test_prepared_data_is_refused_before_the_first_step_with_the_fix(tmp_path: Path, corpus_path: Path) -> None:
    """The datastore indexes text data; a prepared (sharded) data.path is refused at on_train_begin, naming it."""
    docs, text = tmp_path / "docs", corpus_path.read_text(encoding="utf-8")
    docs.mkdir()
    for i in range(8):  # eight documents, so that the split has some of each
        (docs / f"{i}.txt").write_text(text[i * 3000 : (i + 1) * 3000], encoding="utf-8")
    prepared = tmp_path / "prepared"
    prepare([str(docs)], prepared, val_fraction=0.3)
    config = retrieval_config(corpus_path).with_overrides([f"data.path={prepared}"])
    trainer = make_trainer(config, tmp_path / "run")
    with pytest.raises(PluginHookError) as info:
        trainer.fit()
    cause = info.value.__cause__
    assert isinstance(cause, UsageError) and str(prepared) in str(cause) and "text file" in str(cause)
    assert trainer.global_step == 0
