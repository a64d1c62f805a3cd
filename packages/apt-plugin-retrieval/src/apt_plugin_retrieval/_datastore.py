"""The datastore on disk: float16 keys, int32 values, a FAISS index and a manifest.

Layout of ``<run_dir>/retrieval/``::

    manifest.json     format, counts, key width, tokenizer, the weights' SHA-256, index spec,
                      and the SHA-256 of every file below
    keys.f16.npy      (N, d) float16, memory-mapped: the key of every training position
    vals.i32.npy      (N,)   int32: the token that followed it
    index.faiss       the trained IVF-PQ index (a flat index is rebuilt from the keys instead)

A build writes into a sibling temporary folder and swaps it in when complete, so a failed
build leaves the previous datastore as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch import nn

from apt.errors import UsageError
from apt_plugin_retrieval._config import RetrievalConfig
from apt_plugin_retrieval._knn import autocast
from apt_plugin_retrieval._knn import capture_keys


__all__ = [
    "INDEX_FILE",
    "KEYS_FILE",
    "MANIFEST_FILE",
    "VALS_FILE",
    "Datastore",
    "IndexSpec",
    "RetrievalError",
    "available_memory_bytes",
    "build_datastore",
    "make_index",
    "plan_index",
]

log = logging.getLogger("apt.retrieval")

MANIFEST_FILE = "manifest.json"
KEYS_FILE = "keys.f16.npy"
VALS_FILE = "vals.i32.npy"
INDEX_FILE = "index.faiss"
FORMAT = "apt-retrieval-datastore/1"
_CHUNK = 65536  # keys per add / hash chunk: bounds the float32 copies made while building


class RetrievalError(UsageError):
    """A datastore cannot be used: missing, corrupt, stale, or too large; ``.path`` names the file."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RetrievalError(
            f"the retrieval plugin needs faiss ({exc}); install it with: pip install faiss-cpu"
        ) from None
    return faiss


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index to build: ``flat`` (exact L2) or ``ivfpq`` (IVF cells + product codes)."""

    kind: str
    nlist: int = 0
    pq_m: int = 0
    pq_bits: int = 8
    nprobe: int = 1
    train_keys: int = 0

    def memory_bytes(self, n: int, dim: int) -> int:
        """Estimated resident size of the index for ``n`` keys of width ``dim`` (faiss wiki's formulas).

        Flat: 4·d bytes per key. IVF-PQ: m·bits/8 code bytes + an 8-byte id per key, the
        coarse centroids (4·d·nlist), the PQ codebooks, and the float32 training sample.
        """
        if self.kind == "flat":
            return 4 * dim * n
        codes = n * (math.ceil(self.pq_m * self.pq_bits / 8) + 8)
        centroids = 4 * dim * self.nlist + 4 * dim * (1 << self.pq_bits)
        return codes + centroids + 4 * dim * self.train_keys

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "nlist": self.nlist, "pq_m": self.pq_m, "pq_bits": self.pq_bits,
            "nprobe": self.nprobe, "train_keys": self.train_keys,
        }  # fmt: skip


def plan_index(n: int, dim: int, cfg: RetrievalConfig) -> IndexSpec:
    """The index ``cfg`` asks for, with ``n`` keys of width ``dim``; defaults filled in.

    ``nlist`` defaults to a power of two near ``4·sqrt(n)`` (faiss: 4√N…16√N) and at most
    ``n / 39`` (faiss warns below 39 training points per centroid); ``pq_m`` to ``dim / 8``.
    """
    kind = cfg.index if cfg.index != "auto" else ("flat" if n <= cfg.flat_max_keys else "ivfpq")
    if kind == "flat":
        return IndexSpec("flat")
    train = min(n, cfg.train_keys)
    nlist = cfg.nlist or max(1, 2 ** round(math.log2(max(4 * math.sqrt(n), 1))))
    nlist = max(1, min(nlist, train // 39)) if cfg.nlist is None else nlist
    pq_m = cfg.pq_m or max(1, dim // 8)
    if dim % pq_m:
        raise RetrievalError(f"retrieval.pq_m = {pq_m} must divide the key width {dim}; choose a divisor of {dim}")
    if train < nlist:
        raise RetrievalError(
            f"retrieval.nlist = {nlist} needs at least as many training keys, but only {train} are used; "
            "lower retrieval.nlist or raise retrieval.train_keys"
        )
    return IndexSpec("ivfpq", nlist=nlist, pq_m=pq_m, pq_bits=cfg.pq_bits, nprobe=cfg.nprobe, train_keys=train)


def available_memory_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` (Linux), else ``None`` (no check)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(spec: IndexSpec, n: int, dim: int, limit_mb: int | None, path: Path) -> None:
    """Refuse, before anything is built, an index that would not fit in memory."""
    need = spec.memory_bytes(n, dim)
    limit = limit_mb * 2**20 if limit_mb is not None else available_memory_bytes()
    if limit is not None and need > limit:
        raise RetrievalError(
            f"{path}: a {spec.kind} index of {n} keys x {dim} needs about {need / 2**20:.0f} MiB, more than the "
            f"{limit / 2**20:.0f} MiB {'allowed by retrieval.memory_limit_mb' if limit_mb else 'available'}; "
            "use retrieval.index: ivfpq (or a smaller retrieval.pq_m / train_keys)",
            path=path,
        )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class Datastore:
    """An opened datastore: memory-mapped keys and values and a searchable FAISS index.

    Use :meth:`open` (checks the manifest and every file) or :func:`build_datastore`.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], keys: np.ndarray, vals: np.ndarray, index: Any):
        self.folder = folder
        self.manifest = manifest
        self.keys = keys  # (N, d) float16, memory-mapped
        self.vals = vals  # (N,) int32
        self.index = index

    @property
    def size(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def weights_sha256(self) -> str:
        return str(self.manifest["weights_sha256"])

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_FILE

    @property
    def spec(self) -> IndexSpec:
        return IndexSpec(**self.manifest["index"])

    @classmethod
    def open(
        cls, folder: str | Path, *, dim: int | None = None, tokenizer: dict[str, Any] | None = None,
        memory_limit_mb: int | None = None,
    ) -> Datastore:  # fmt: skip
        """Open ``folder``, verifying the manifest, the files' hashes, and (if given) the key width and tokenizer.

        :raises RetrievalError: a missing or corrupt file, or a datastore made for another
            model width or tokenizer; the message names the file.
        """
        folder = Path(folder)
        mpath = folder / MANIFEST_FILE
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
            count, mdim = int(manifest["count"]), int(manifest["dim"])
            files, spec = dict(manifest["files"]), IndexSpec(**manifest["index"])
            if manifest["format"] != FORMAT:
                raise ValueError(f"format {manifest['format']!r}, expected {FORMAT!r}")
        except FileNotFoundError:
            raise RetrievalError(
                f"{mpath}: no datastore manifest; build one (apt train with the retrieval plugin)", path=mpath
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RetrievalError(
                f"{mpath}: not a datastore manifest ({exc}); delete {folder} to rebuild it", path=mpath
            ) from None
        if dim is not None and mdim != dim:
            raise RetrievalError(
                f"{mpath}: the datastore holds keys of width {mdim}, this model's are {dim} (another model width); "
                f"delete {folder} to rebuild it for this model",
                path=mpath,
            )
        if tokenizer is not None and manifest.get("tokenizer") != tokenizer:
            raise RetrievalError(
                f"{mpath}: the datastore was built with tokenizer {manifest.get('tokenizer')}, this run uses "
                f"{tokenizer}; delete {folder} to rebuild it",
                path=mpath,
            )
        for name, digest in files.items():
            path = folder / name
            if not path.is_file():
                raise RetrievalError(f"{path}: missing datastore file; delete {folder} to rebuild it", path=path)
            if sha256_file(path) != digest:
                raise RetrievalError(
                    f"{path}: corrupt datastore file (its SHA-256 differs from {mpath.name}); delete {folder} to rebuild it",
                    path=path,
                )
        try:
            keys = np.load(folder / KEYS_FILE, mmap_mode="r")
            vals = np.load(folder / VALS_FILE, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise RetrievalError(
                f"{folder / KEYS_FILE}: unreadable ({exc}); delete {folder} to rebuild it", path=folder
            ) from None
        if keys.shape != (count, mdim) or vals.shape != (count,):
            raise RetrievalError(
                f"{folder / KEYS_FILE}: shape {keys.shape} / {vals.shape} does not match the manifest's "
                f"({count}, {mdim}); delete {folder} to rebuild it",
                path=folder / KEYS_FILE,
            )
        check_memory(spec, count, mdim, memory_limit_mb, folder / (INDEX_FILE if spec.kind == "ivfpq" else KEYS_FILE))
        if spec.kind == "flat":
            index = make_index(keys, spec)
        else:
            faiss = _faiss()
            ipath = folder / INDEX_FILE
            try:
                index = faiss.read_index(str(ipath))
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                raise RetrievalError(
                    f"{ipath}: not a FAISS index ({first}); delete {folder} to rebuild it", path=ipath
                ) from None
            if index.ntotal != count or index.d != mdim:
                raise RetrievalError(
                    f"{ipath}: holds {index.ntotal} vectors of width {index.d}, the manifest says {count} x {mdim}; "
                    f"delete {folder} to rebuild it",
                    path=ipath,
                )
            index.nprobe = spec.nprobe
        return cls(folder, manifest, keys, vals, index)

    def search(self, queries: Tensor, k: int, recompute: bool = True) -> tuple[Tensor, Tensor]:
        """The ``k`` nearest stored keys of each query.

        :param queries: ``(N, d)`` keys (any float dtype; searched in float32).
        :param recompute: for an approximate index, fetch ``4k`` candidates, recompute their
            exact squared distances from the stored float16 keys (the paper's default) and keep
            the ``k`` nearest, instead of returning the quantised distances.
        :returns: ``(dist, vals)``, each ``(N, k)``: squared L2 distances (float32, ``inf``
            for a missing neighbour) and the neighbours' next tokens (int64, ``-1`` if missing).
        """
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())  # (N, d)
        k = min(k, self.size)
        rerank = recompute and self.spec.kind != "flat"
        # approximate search: over-fetch 4k candidates, then keep the k nearest by exact distance
        fetch = min(4 * k, self.size) if rerank else k
        dist, ids = self.index.search(q, fetch)  # (N, fetch) each
        missing = ids < 0
        safe = np.where(missing, 0, ids)
        if rerank:
            near = np.asarray(self.keys[safe.reshape(-1)], dtype=np.float32).reshape(*safe.shape, -1)  # (N, fetch, d)
            dist = np.where(missing, np.inf, ((near - q[:, None, :]) ** 2).sum(-1))  # (N, fetch)
            order = np.argsort(dist, axis=1, kind="stable")[:, :k]  # (N, k)
            dist, safe, missing = (np.take_along_axis(a, order, axis=1) for a in (dist, safe, missing))
        vals = np.where(missing, -1, np.asarray(self.vals)[safe].astype(np.int64))
        dist = np.where(missing, np.inf, dist).astype(np.float32)
        return torch.from_numpy(dist), torch.from_numpy(vals)


def _windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, length, first)`` of each window: it covers ``tokens[start : start + length + 1]``
    and yields keys for its positions ``first .. length - 1``; together they cover every
    position ``0 .. n_tokens - 2`` once, each with as much left context as the window allows."""
    out = []
    pos = 0  # the first position not yet covered
    while pos < n_tokens - 1:
        start = max(0, pos + stride - block_size)
        length = min(block_size, n_tokens - 1 - start)
        out.append((start, length, pos - start))
        pos = start + length
    return out


def build_datastore(
    folder: str | Path,
    model: nn.Module,
    tokens: Tensor,
    cfg: RetrievalConfig,
    *,
    block_size: int,
    tokenizer: dict[str, Any],
    weights_sha256: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    extra: dict[str, Any] | None = None,
    progress: Callable[[int], Any] | None = None,
) -> Datastore:
    """One no-grad pass over ``tokens`` recording (key, next token) at every position; then the index.

    Memory stays bounded: keys go straight into a float16 memory map, batch by batch, and
    the index is filled ``65536`` keys at a time (IVF-PQ trains on a seeded sample). The
    result depends only on the weights, the tokens and ``cfg`` (same bytes on a rebuild).

    :param tokens: ``(N,)`` the training token ids; the validation split must not be given.
    :param progress: called with the number of windows done after each batch (a progress bar).
    :raises RetrievalError: the planned index would not fit in memory (checked before the pass).
    """
    folder = Path(folder)
    stride = cfg.stride or block_size
    if stride > block_size:
        raise RetrievalError(f"retrieval.stride = {stride} must be <= model.block_size = {block_size}")
    windows = _windows(len(tokens), block_size, stride)
    n = sum(length - first for _, length, first in windows)
    dim = _key_width(model, tokens, cfg.key, device, dtype)
    spec = plan_index(n, dim, cfg)
    check_memory(spec, n, dim, cfg.memory_limit_mb, folder / (INDEX_FILE if spec.kind == "ivfpq" else KEYS_FILE))
    faiss = _faiss()  # before the pass: a missing faiss should not cost a forward over the corpus
    t0 = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.build-", dir=folder.parent))
    try:
        keys = np.lib.format.open_memmap(tmp / KEYS_FILE, mode="w+", dtype=np.float16, shape=(n, dim))
        vals = np.lib.format.open_memmap(tmp / VALS_FILE, mode="w+", dtype=np.int32, shape=(n,))
        was_training = model.training
        model.eval()
        row = 0
        # full-length windows in batches; a shorter last window in a batch of its own
        groups: dict[int, list[tuple[int, int, int]]] = {}
        for w in windows:
            groups.setdefault(w[1], []).append(w)
        done = 0
        with torch.no_grad(), capture_keys(model, cfg.key) as seen:
            for length in sorted(groups, reverse=True):
                group = groups[length]
                for i in range(0, len(group), cfg.batch_size):
                    batch = group[i : i + cfg.batch_size]
                    starts = torch.tensor([s for s, _, _ in batch])
                    idx = tokens[starts[:, None] + torch.arange(length + 1)]  # (B, L + 1)
                    x = idx[:, :-1].to(device)  # (B, L)
                    seen.clear()
                    with autocast(device, dtype):
                        model(x)
                    h = seen[-1].float().cpu()  # (B, L, d)
                    for b, (_, _, first) in enumerate(batch):
                        m = length - first
                        keys[row : row + m] = h[b, first:].numpy().astype(np.float16)
                        vals[row : row + m] = idx[b, first + 1 :].numpy().astype(np.int32)
                        row += m
                    done += len(batch)
                    if progress is not None:
                        progress(len(batch))
        model.train(was_training)
        assert row == n, (row, n)
        keys.flush()
        vals.flush()
        files = [KEYS_FILE, VALS_FILE]
        if spec.kind == "ivfpq":
            index = make_index(keys, spec, cfg.seed)
            faiss.write_index(index, str(tmp / INDEX_FILE))
            files.append(INDEX_FILE)
        del keys, vals
        manifest = {
            "format": FORMAT,
            "count": n,
            "dim": dim,
            "key": cfg.key,
            "tokenizer": tokenizer,
            "weights_sha256": weights_sha256,
            "block_size": block_size,
            "stride": stride,
            "train_tokens": int(len(tokens)),
            "train_tokens_sha256": hashlib.sha256(tokens.to(torch.int64).numpy().tobytes()).hexdigest(),
            "index": spec.as_dict(),
            "build_s": round(time.perf_counter() - t0, 3),
            "files": {name: sha256_file(tmp / name) for name in files},
            **(extra or {}),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "retrieval: datastore of %d keys x %d (%s) built in %.1f s at %s",
        n,
        dim,
        spec.kind,
        manifest["build_s"],
        folder,
    )
    return Datastore.open(folder, memory_limit_mb=cfg.memory_limit_mb)


def _key_width(model: nn.Module, tokens: Tensor, key: str, device: torch.device | str, dtype: torch.dtype) -> int:
    """The width of the key (one tiny forward: a plugin may have changed the FFN's input)."""
    with torch.no_grad(), capture_keys(model, key) as seen, autocast(device, dtype):
        was_training = model.training
        model.eval()
        model(tokens[:1][None].to(device))
        model.train(was_training)
    return int(seen[-1].shape[-1])


def make_index(keys: np.ndarray, spec: IndexSpec, seed: int = 0) -> Any:
    """A FAISS index over ``keys`` ``(N, d)`` (any float dtype; added 65536 at a time as float32).

    ``flat``: exact L2 (``IndexFlatL2``). ``ivfpq``: ``IndexIVFPQ`` whose coarse and product
    quantisers are trained (k-means seeded with ``seed``) on a seeded sample of
    ``spec.train_keys`` keys; ``nprobe`` from ``spec``.
    """
    faiss = _faiss()
    n, dim = keys.shape
    if spec.kind == "flat":
        index = faiss.IndexFlatL2(dim)
    else:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(spec.train_keys, n), replace=False))
        train = np.ascontiguousarray(keys[sample], dtype=np.float32)  # (train_keys, d)
        index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, spec.nlist, spec.pq_m, spec.pq_bits)
        index.cp.seed = seed  # the coarse k-means
        index.pq.cp.seed = seed  # the product quantiser's k-means
        index.train(train)
        index.nprobe = spec.nprobe
    for i in range(0, n, _CHUNK):
        index.add(np.ascontiguousarray(keys[i : i + _CHUNK], dtype=np.float32))
    return index


def _swap_in(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by the complete ``tmp`` (the old one goes only once the new one is in place)."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
