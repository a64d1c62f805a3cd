"""The on-disk format of the training state: tensors in safetensors, the rest in JSON.

``trainer.state_dict()`` is a tree of dicts, lists and tuples whose leaves are tensors,
ints, floats, strings, bools and ``None``. :func:`encode_state` splits it into

* a flat ``{key: tensor}`` mapping, the key being the tensor's path in the tree
  (``"optimizer/state/0/exp_avg"``), written as ``tensors.safetensors``;
* a JSON tree (``state.json``) in which each tensor is replaced by a reference to its key.

JSON cannot say everything Python can, so a few values are tagged with an ``"__apt__"``
object: tuples (``random.getstate()`` must come back as a tuple), dicts whose keys are not
all strings (optimizer state is keyed by ``int``), non-finite floats, and numpy arrays.
The round trip is exact: same types, same keys, bitwise-equal tensors. Anything else
(an arbitrary object, a function, a set) is refused with the key path that holds it,
because such a value could only be stored with pickle, and loading never unpickles.

Tensors are streamed to the file straight from their memory (no intermediate copy of
the whole state) while their SHA-256 is computed, so the manifest costs one pass.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import BinaryIO

import numpy as np
import torch
from safetensors.torch import load as safetensors_load

from apt.errors import CheckpointError


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "STATE_FILE",
    "TENSORS_FILE",
    "EncodedState",
    "FileDigest",
    "decode_state",
    "encode_state",
    "read_state_files",
    "write_state_files",
]

FORMAT_NAME = "apt-checkpoint"
FORMAT_VERSION = 1
TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
TAG = "__apt__"

# torch dtype <-> safetensors dtype name (https://github.com/huggingface/safetensors, format spec)
_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"),
    ("uint16", "U16"),
    ("uint32", "U32"),
    ("uint64", "U64"),
):
    if hasattr(torch, _name):
        _DTYPES[getattr(torch, _name)] = _code

_CHUNK = 16 << 20  # write big tensors in 16 MiB pieces
_PARALLEL_HASH_MIN = 4 << 20  # hash in a second thread from this file size on


@dataclass(frozen=True)
class FileDigest:
    """Size in bytes and SHA-256 (hex) of one written file."""

    size: int
    sha256: str


@dataclass
class EncodedState:
    """A state tree split into JSON-compatible data and named CPU tensors."""

    tree: Any
    tensors: dict[str, torch.Tensor]

    @property
    def tensor_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


# --- encoding ---------------------------------------------------------------------------


def _path_str(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path) or "<root>"


class _Encoder:
    def __init__(self, copy_tensors: bool, buffers: dict[str, torch.Tensor] | None) -> None:
        self.copy_tensors = copy_tensors
        self.buffers = buffers
        self.tensors: dict[str, torch.Tensor] = {}
        # (storage pointer, offset, shape, stride, dtype) -> key: the same tensor twice
        # (tied weights) is stored once and comes back as one tensor.
        self._seen: dict[tuple[Any, ...], str] = {}

    def _tensor_key(self, path: tuple[Any, ...]) -> str:
        key = "/".join(str(p) for p in path) or "tensor"
        unique, n = key, 1
        while unique in self.tensors:  # e.g. dict keys 0 and "0" side by side
            unique, n = f"{key}#{n}", n + 1
        return unique

    def tensor(self, value: torch.Tensor, path: tuple[Any, ...], *, dedup: bool = True) -> dict[str, Any]:
        """Store ``value`` under a key derived from ``path`` and return the reference to it.

        With ``dedup`` a tensor seen before (same storage, offset, shape, stride, dtype,
        device) is stored once. That identity is a memory address, so it is only valid
        for tensors that stay alive for the whole encoding, i.e. those held by the state:
        a temporary (e.g. made from a numpy array) must pass ``dedup=False``, or the
        allocator may reuse its address for a later, unrelated tensor.
        """
        if value.dtype not in _DTYPES:
            raise CheckpointError(
                f"checkpoint state at {_path_str(path)!r} is a tensor of dtype {value.dtype}, which safetensors "
                f"cannot store (supported: {', '.join(str(d) for d in _DTYPES)}); convert it in on_save_checkpoint"
            )
        if value.is_sparse or value.layout != torch.strided:
            raise CheckpointError(
                f"checkpoint state at {_path_str(path)!r} is a {value.layout} tensor; only dense tensors can be "
                "saved (call .to_dense() in on_save_checkpoint)"
            )
        value = value.detach()
        ident = None
        if dedup and value.numel() > 0:
            ident = (
                value.untyped_storage().data_ptr(),
                value.storage_offset(),
                tuple(value.shape),
                tuple(value.stride()),
                value.dtype,
                value.device,
            )
            if ident in self._seen:
                return {TAG: "tensor", "key": self._seen[ident]}
        key = self._tensor_key(path)
        if self.copy_tensors:
            # a snapshot that later in-place updates (the next optimizer step) cannot change;
            # reusing the previous save's buffers avoids fresh allocations and their page faults
            cpu = self.buffers.get(key) if self.buffers is not None else None
            if cpu is None or cpu.shape != value.shape or cpu.dtype != value.dtype:
                cpu = torch.empty(value.shape, dtype=value.dtype, device="cpu")
                if self.buffers is not None:
                    self.buffers[key] = cpu
            _copy_into(cpu, value)
        else:
            cpu = value.to("cpu")
        self.tensors[key] = cpu
        if ident is not None:
            self._seen[ident] = key
        return {TAG: "tensor", "key": key}

    def encode(self, value: Any, path: tuple[Any, ...]) -> Any:
        if type(value).__module__ == "numpy":  # before float: numpy.float64 is a float subclass
            return self.numpy(value, path)
        # bool before int: bool is a subclass of int
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            if math.isfinite(value):
                return float(value)
            return {TAG: "float", "value": repr(float(value))}  # 'nan', 'inf', '-inf'
        if isinstance(value, torch.Tensor):
            return self.tensor(value, path)
        if type(value) is list:
            return [self.encode(v, (*path, i)) for i, v in enumerate(value)]
        if type(value) is tuple:
            return {TAG: "tuple", "items": [self.encode(v, (*path, i)) for i, v in enumerate(value)]}
        if type(value) is dict or (isinstance(value, dict) and type(value).__module__ == "collections"):
            if all(type(k) is str for k in value) and TAG not in value:
                return {k: self.encode(v, (*path, k)) for k, v in value.items()}
            items = []
            for k, v in value.items():
                if not (k is None or type(k) in (bool, int, float, str, tuple)):
                    raise CheckpointError(
                        f"checkpoint state at {_path_str(path)!r} has a dict key {k!r} of type {type(k).__name__}; "
                        "keys must be str, int, float, bool, None or tuples of those"
                    )
                items.append([self.encode(k, (*path, "<key>")), self.encode(v, (*path, k))])
            return {TAG: "dict", "items": items}
        raise CheckpointError(
            f"checkpoint state at {_path_str(path)!r} is a {type(value).__module__}.{type(value).__qualname__}, "
            "which cannot be stored without pickle; return tensors, numbers, strings, bools, None, lists, tuples "
            "or dicts (convert it in state_dict()/on_save_checkpoint)"
        )

    def numpy(self, value: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(value, np.ndarray):
            try:
                tensor = torch.from_numpy(np.ascontiguousarray(value))
            except TypeError:
                raise CheckpointError(
                    f"checkpoint state at {_path_str(path)!r} is a numpy array of dtype {value.dtype}, "
                    "which torch cannot hold"
                ) from None
            # ``tensor`` shares memory with the array (or with a contiguous copy of it that dies
            # with this call). With copy_tensors it is copied into the snapshot at once; else a
            # clone keeps what is written independent of the plugin's array. Either way it is
            # not an object of the state, so it stays out of the identity dedup (see tensor()).
            ref = self.tensor(tensor if self.copy_tensors else tensor.clone(), path, dedup=False)
            return {TAG: "ndarray", "key": ref["key"]}
        if isinstance(value, (np.bool_, np.integer, np.floating)):
            return {TAG: "npscalar", "dtype": str(value.dtype), "value": self.encode(value.item(), path)}
        raise CheckpointError(
            f"checkpoint state at {_path_str(path)!r} is a numpy {type(value).__name__}, which is not supported"
        )


def _copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)``; CPU to CPU as one plain memcpy of the bytes.

    torch's parallel copy can stall for whole scheduler ticks on a busy machine (measured:
    10x slower than a single-threaded copy with 2 threads on 2 busy cores).
    """
    if src.device.type != "cpu" or src.numel() == 0:
        dst.copy_(src)
        return
    src = src.detach().contiguous()
    np.copyto(dst.reshape(-1).view(torch.uint8).numpy(), src.reshape(-1).view(torch.uint8).numpy())


def encode_state(
    state: Any, *, copy_tensors: bool = False, buffers: dict[str, torch.Tensor] | None = None
) -> EncodedState:
    """Split ``state`` into a JSON-compatible tree and a flat dict of CPU tensors.

    :param copy_tensors: copy every tensor, so that later in-place updates (the next
        optimizer step) cannot change what an asynchronous save writes.
    :param buffers: with ``copy_tensors``, CPU tensors by key to copy into (filled on first
        use and reused); the caller must not reuse them while a save of them is running.
    :raises CheckpointError: naming the key path of a value that JSON cannot represent.
    """
    encoder = _Encoder(copy_tensors, buffers)
    tree = encoder.encode(state, ())
    return EncodedState(tree=tree, tensors=encoder.tensors)


# --- decoding ---------------------------------------------------------------------------


def decode_state(tree: Any, tensors: dict[str, torch.Tensor], *, source: Any = None) -> Any:
    """Rebuild the state tree from :func:`encode_state`'s output (exact inverse)."""

    def bad(message: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {source}: {message}", path=source)

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        tag = value.get(TAG)
        if tag is None:
            return {k: decode(v) for k, v in value.items()}
        if tag == "tensor" or tag == "ndarray":
            key = value.get("key")
            if key not in tensors:
                raise bad(f"state refers to tensor {key!r}, which is not in {TENSORS_FILE}")
            return tensors[key] if tag == "tensor" else tensors[key].numpy()
        if tag == "tuple":
            return tuple(decode(v) for v in value["items"])
        if tag == "dict":
            return {_hashable(decode(k)): decode(v) for k, v in value["items"]}
        if tag == "float":
            text = value.get("value")
            if text not in ("nan", "inf", "-inf"):
                raise bad(f"invalid tagged float {text!r}")
            return float(text)
        if tag == "npscalar":
            # the value is encoded like any other (a non-finite float is itself tagged)
            return np.dtype(str(value["dtype"])).type(decode(value["value"]))
        raise bad(f"unknown tag {tag!r} in {STATE_FILE}; was it written by a newer apt-plugin-checkpoint?")

    def _hashable(key: Any) -> Any:
        if isinstance(key, (list, dict)):
            raise bad(f"a dict key in {STATE_FILE} decodes to an unhashable {type(key).__name__}")
        return key

    try:
        return decode(tree)
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"{STATE_FILE} is malformed ({type(exc).__name__}: {exc})") from None


# --- files ------------------------------------------------------------------------------


def _tensor_bytes(tensor: torch.Tensor) -> Iterator[memoryview]:
    """The tensor's raw little-endian bytes in C order, in chunks, without copying when contiguous."""
    flat = tensor.contiguous().reshape(-1)
    if flat.numel() == 0:
        return
    raw = flat.view(torch.uint8).numpy().data  # a memoryview of the bytes, no copy
    for start in range(0, len(raw), _CHUNK):
        yield raw[start : start + _CHUNK]


def _write_chunk(f: BinaryIO, chunk: bytes | memoryview) -> None:
    f.write(chunk)


def _write_hashed(path: Path, chunks: list[bytes | memoryview]) -> FileDigest:
    """Write ``chunks`` to ``path`` (fsynced) and return the size and SHA-256 of what was written.

    For big files the hash runs in a second thread over the same memory while this one
    writes: both release the GIL, so hashing costs little extra wall time.
    """
    size = sum(len(c) for c in chunks)
    sha = hashlib.sha256()

    def hash_all() -> None:
        for chunk in chunks:
            sha.update(chunk)

    hasher = threading.Thread(target=hash_all, name="apt-checkpoint-sha256") if size >= _PARALLEL_HASH_MIN else None
    if hasher is not None:
        hasher.start()
    else:
        hash_all()
    try:
        with open(path, "wb") as f:
            for chunk in chunks:
                _write_chunk(f, chunk)
            f.flush()
            os.fsync(f.fileno())
    finally:
        if hasher is not None:
            hasher.join()
    return FileDigest(size, sha.hexdigest())


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> FileDigest:
    # Layout (safetensors spec): u64 little-endian header length N, N bytes of JSON header
    # (padded with spaces to a multiple of 8), then the tensors' bytes back to back.
    header: dict[str, Any] = {"__metadata__": {"format": FORMAT_NAME}}
    offset = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        header[key] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    chunks: list[bytes | memoryview] = [struct.pack("<Q", len(head)), head]
    for t in tensors.values():
        chunks.extend(_tensor_bytes(t))
    return _write_hashed(path, chunks)


def _write_json(path: Path, data: Any) -> FileDigest:
    raw = json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return _write_hashed(path, [raw])


def write_state_files(folder: Path, encoded: EncodedState) -> dict[str, FileDigest]:
    """Write ``tensors.safetensors`` and ``state.json`` into ``folder``, fsynced; returns their digests."""
    if sys_byteorder() != "little":  # pragma: no cover - every supported platform is little-endian
        raise CheckpointError("apt-plugin-checkpoint writes safetensors on little-endian machines only")
    document = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "tree": encoded.tree}
    return {
        TENSORS_FILE: _write_safetensors(folder / TENSORS_FILE, encoded.tensors),
        STATE_FILE: _write_json(folder / STATE_FILE, document),
    }


def sys_byteorder() -> str:
    import sys

    return sys.byteorder


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_json(raw: bytes, *, source: Any) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity literals, no duplicate keys."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constants, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{source} is not valid JSON ({type(exc).__name__}: {exc}); the checkpoint is corrupt or was not "
            "written by apt-plugin-checkpoint",
            path=source,
        ) from None


def read_state_files(contents: dict[str, bytes], *, source: Any) -> Any:
    """Rebuild the state from the verified bytes of ``state.json`` and ``tensors.safetensors``.

    Only JSON and safetensors are parsed: nothing here can import a module or call a
    function named by the file.
    """
    document = parse_json(contents[STATE_FILE], source=f"{source}/{STATE_FILE}")
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{source}/{STATE_FILE} is not an APT checkpoint state file", path=source)
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}/{STATE_FILE} has format_version {document.get('format_version')!r}; this "
            f"apt-plugin-checkpoint reads version {FORMAT_VERSION} (upgrade the plugin)",
            path=source,
        )
    try:
        tensors = safetensors_load(contents[TENSORS_FILE])
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise CheckpointError(
            f"{source}/{TENSORS_FILE} is not a valid safetensors file ({type(exc).__name__}: {exc}); the "
            "checkpoint is corrupt or was crafted",
            path=source,
        ) from None
    return decode_state(document.get("tree"), tensors, source=source)
