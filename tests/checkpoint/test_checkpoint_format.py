"""The state format: exact round trips, and refusal of what JSON + safetensors cannot hold."""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from apt.errors import CheckpointError
from apt_plugin_checkpoint import CheckpointStore
from apt_plugin_checkpoint import decode_state
from apt_plugin_checkpoint import encode_state


def _roundtrip(state: object, tmp_path: Path, copy_tensors: bool = False) -> object:
    """Save ``state`` and load it back; ``copy_tensors`` encodes as async_save does (into reused buffers)."""
    store = CheckpointStore(tmp_path / "ckpt")
    encoded = encode_state(state, copy_tensors=copy_tensors, buffers={} if copy_tensors else None)
    store.save(encoded, name="a", step=1, epoch=0)
    return store.load("a").state


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _assert_same(a: object, b: object, path: str = "") -> None:
    if isinstance(a, dict):  # OrderedDict (module.state_dict()) comes back as a dict, in the same order
        assert type(b) is dict, path
    else:
        assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(_bits(a), _bits(b)), path  # bitwise: NaN payloads and -0.0 included
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}.{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


def test_optimizer_rng_and_odd_values_round_trip_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    random.seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    for _ in range(2):
        model(torch.randn(3, 5)).pow(2).mean().backward()
        opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),  # int keys, tuple betas
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},  # nested tuples
        "counters": {"epoch": 1, "global_step": 7, "step_in_epoch": 3},
        "floats": [0.1, 1.0, -0.0, 1e-310, float("inf"), float("-inf"), float("nan")],
        "mixed_keys": {0: "int", "0": "str", None: 1, True: 2, (1, "a"): 3, 2.5: 4},
        "reserved": {"__apt__": "looks like a tag"},
        "big_int": 2**70,
        "dtypes": {
            "bf16": torch.randn(4, dtype=torch.bfloat16),
            "f16": torch.randn(2, 3).half(),
            "f64": torch.randn(2, dtype=torch.float64),
            "bool": torch.tensor([True, False]),
            "i8": torch.tensor([-3, 4], dtype=torch.int8),
            "scalar": torch.tensor(3.5),
            "empty": torch.empty(0, 7),
            "non_contiguous": torch.arange(12.0).reshape(3, 4).t(),
        },
        "numpy": np.arange(6, dtype=np.uint32).reshape(2, 3),
        "np_scalar": np.float64(0.25),
        "ordered": OrderedDict(b=1, a=2),
    }
    back = _roundtrip(state, tmp_path)
    _assert_same(state, back)
    # the restored python RNG state is accepted by random.setstate and continues identically
    random.setstate(state["rng"]["python"])
    a = [random.random() for _ in range(3)]
    random.setstate(back["rng"]["python"])  # type: ignore[index]
    assert [random.random() for _ in range(3)] == a
    # the restored optimizer state loads into a fresh optimizer
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])  # type: ignore[index]
    assert opt2.state_dict()["param_groups"][0]["betas"] == (0.9, 0.95)


@pytest.mark.parametrize("copy_tensors", [False, True], ids=["sync", "async"])
def test_tied_tensors_are_stored_once_and_come_back_tied(tmp_path: Path, copy_tensors: bool) -> None:
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    state = {"wte": emb.weight, "lm_head": head.weight, "view": emb.weight[2:4]}
    encoded = encode_state(state, copy_tensors=copy_tensors, buffers={} if copy_tensors else None)
    assert len(encoded.tensors) == 2  # the tied pair once, the overlapping view on its own
    back = _roundtrip({"wte": emb.weight, "lm_head": head.weight}, tmp_path, copy_tensors)
    assert back["wte"] is back["lm_head"]  # type: ignore[index]
    assert torch.equal(back["wte"], emb.weight.detach())  # type: ignore[index]


@pytest.mark.parametrize("copy_tensors", [False, True], ids=["sync", "async"])
def test_distinct_numpy_arrays_stay_distinct(tmp_path: Path, copy_tensors: bool) -> None:
    """Each array is encoded through a temporary tensor; under async_save (copy_tensors into
    reused buffers) that temporary is freed at once and the next one may get its address,
    which must not make two distinct arrays look like one tied tensor."""
    state = {"plugins": {"hist": {f"layer{i}": np.full(1000, float(i), dtype=np.float32) for i in range(6)}}}
    for attempt in range(5):  # whether an address is reused is up to the allocator: try a few times
        _assert_same(state, _roundtrip(state, tmp_path / str(attempt), copy_tensors))


def test_numpy_non_finite_scalars_round_trip(tmp_path: Path) -> None:
    values = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "normal": 0.375}
    state = {f"{t.__name__}/{name}": t(v) for t in (np.float32, np.float64) for name, v in values.items()}
    back = _roundtrip(state, tmp_path)
    assert isinstance(back, dict) and list(back) == list(state)
    for key, value in state.items():
        restored = back[key]
        assert type(restored) is type(value) and restored.dtype == value.dtype, key
        if np.isnan(value):
            assert np.isnan(restored), key
        else:
            assert restored == value, key


def test_copy_tensors_snapshots_the_values(tmp_path: Path) -> None:
    w = torch.zeros(3)
    encoded = encode_state({"w": w}, copy_tensors=True)
    w.add_(1.0)  # the next optimizer step, while an async save is running
    assert torch.equal(decode_state(encoded.tree, encoded.tensors)["w"], torch.zeros(3))


@pytest.mark.parametrize(
    ("state", "where"),
    [
        ({"plugins": {"x": {"state": {"fn": print}}}}, "plugins.x.state.fn"),
        ({"a": [1, {2, 3}]}, "a.1"),
        ({"opt": {"obj": object()}}, "opt.obj"),
        ({"t": torch.zeros(2, dtype=torch.complex64)}, "t"),
        ({"k": {frozenset(): 1}}, "k"),
    ],
)
def test_values_json_cannot_hold_are_refused_with_their_key_path(state: object, where: str) -> None:
    with pytest.raises(CheckpointError, match=repr(where)):
        encode_state(state)


def test_unknown_tag_is_refused() -> None:
    with pytest.raises(CheckpointError, match="unknown tag"):
        decode_state({"x": {"__apt__": "pickle", "data": "gASV"}}, {})
