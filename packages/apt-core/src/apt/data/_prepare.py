"""``apt data prepare``: tokenize sources once into memory-mappable token shards plus a manifest.

The main process reads pieces of text (:mod:`apt.data._sources`), groups them into tasks
of about :data:`TASK_BYTES`, and hands them to worker processes, holding at most two
tasks per worker in flight (bounded memory; ``Pool.imap`` would read its whole input).
Results come back in order, so the output does not depend on the number of workers. A
piece goes to validation when a hash of ``(seed, its name)`` falls under
``val_fraction``: deterministic, and independent of workers and shard sizes.

Output (see :func:`prepare`): ``train-000000.bin``, ``val-000000.bin`` ... (raw
little-endian uint16 or uint32 tokens, no header), ``tokenizer.json`` and
``manifest.json``, written into a temporary folder beside ``out`` that is renamed into
place only when complete. An interrupted run leaves no ``out`` (and removes the
temporary folder when it can).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from typing import Final

import numpy as np

from apt.data._sources import Piece
from apt.data._sources import SourceFile
from apt.data._sources import expand_sources
from apt.data._sources import read_pieces
from apt.data._sources import source_bytes
from apt.data._tokenizer import BPETokenizer
from apt.data._tokenizer import ByteTokenizer
from apt.data._tokenizer import fingerprint
from apt.data._tokenizer import iter_texts_within
from apt.data._tokenizer import load_tokenizer
from apt.errors import DataError
from apt.errors import UsageError


__all__ = ["MANIFEST", "prepare", "token_dtype"]

MANIFEST: Final = "manifest.json"
FORMAT: Final = "apt-tokens"
FORMAT_VERSION: Final = 1
TASK_BYTES: Final = 1 << 20  # text per worker task
BPE_SAMPLE_BYTES: Final = 256 * 1024 * 1024  # BPE training memory grows with its input (tokenizers#1170)
SPLITS: Final = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """uint16 when every id (special tokens included) fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def is_val(unit: str, seed: int, val_fraction: float) -> bool:
    """Whether a piece goes to validation: a stable hash of the seed and its name, against the fraction."""
    h = int.from_bytes(hashlib.sha1(f"{seed}:{unit}".encode("utf-8", errors="surrogateescape")).digest(), "big")
    return h < val_fraction * (1 << 160)


# --- worker side ------------------------------------------------------------------------

_worker_tokenizer: Any = None
_worker_dtype: Any = None


def _init_worker(tokenizer_json: str, dtype: str, in_process: bool = False) -> None:
    global _worker_tokenizer, _worker_dtype
    if not in_process:  # worker processes are the parallelism (and rayon after fork deadlocks: transformers#5486)
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = _tokenizer_from_json(tokenizer_json)
    _worker_dtype = np.dtype(dtype)


def _tokenizer_from_json(text: str) -> ByteTokenizer | BPETokenizer:
    byte = ByteTokenizer.from_json_data(json.loads(text))
    if byte is not None:
        return byte
    from tokenizers import Tokenizer as HFTokenizer

    return BPETokenizer(HFTokenizer.from_str(text))


Task = list[tuple[int, str, bool]]  # (split index, text, ends a document)


def _encode_task(task: Task) -> tuple[list[np.ndarray], list[int]]:
    """Token arrays per split (an end-of-text after each document end) and documents per split."""
    tok, dtype = _worker_tokenizer, _worker_dtype
    texts = [text for _, text, _ in task]
    if isinstance(tok, ByteTokenizer):  # the bytes are the ids
        ids: list[Any] = [np.frombuffer(t.encode("utf-8", errors="surrogateescape"), np.uint8) for t in texts]
    else:
        ids = tok.encode_batch(texts)
    parts: list[list[np.ndarray]] = [[], []]
    docs = [0, 0]
    eos = np.array([tok.eos_id], dtype=dtype)
    for (split, _, last), piece_ids in zip(task, ids, strict=True):
        parts[split].append(np.asarray(piece_ids).astype(dtype, copy=False))
        if last:
            parts[split].append(eos)
            docs[split] += 1
    return [np.concatenate(p) if p else np.zeros(0, dtype=dtype) for p in parts], docs


# --- main side --------------------------------------------------------------------------


class _ShardWriter:
    """Appends tokens of one split to ``<split>-NNNNNN.bin`` files of at most ``shard_tokens`` tokens each."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype[Any], shard_tokens: int) -> None:
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.docs = 0
        self._file: Any = None
        self._hash: Any = None
        self._n = 0

    def write(self, tokens: np.ndarray, docs: int) -> None:
        self.docs += docs
        while len(tokens):
            if self._file is None:
                self._open()
            room = self.shard_tokens - self._n
            head, tokens = tokens[:room], tokens[room:]
            data = head.astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
            self._file.write(data)  # a plain file: a w+ memmap would keep dirty pages resident
            self._hash.update(data)
            self._n += len(head)
            if self._n == self.shard_tokens:
                self._close()

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):06d}.bin"
        self._file = open(self.folder / name, "wb")  # noqa: SIM115 (closed in _close)
        self._hash = hashlib.sha256()
        self._n = 0
        self.shards.append({"file": name})

    def _close(self) -> None:
        self._file.close()
        self.shards[-1].update(tokens=self._n, sha256=self._hash.hexdigest())
        self._file = None

    def finish(self) -> dict[str, Any]:
        if self._file is not None:
            self._close()
        return {"tokens": sum(s["tokens"] for s in self.shards), "docs": self.docs, "shards": self.shards}

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()


def _make_tokenizer(
    spec: str, vocab_size: int | None, sources: list[SourceFile], field: str, seed: int, val_fraction: float
) -> ByteTokenizer | BPETokenizer:
    if spec == "byte":
        if vocab_size is not None:
            raise UsageError("--vocab-size is for --tokenizer bpe; the byte tokenizer has 257 ids (bytes and EOS)")
        return ByteTokenizer(eos=True)
    if spec == "bpe":

        def train_texts() -> Iterator[str]:
            for source in sources:
                for piece in read_pieces(source, field):
                    if not is_val(piece.unit, seed, val_fraction):  # learn merges from training text only
                        yield piece.text

        return BPETokenizer.train(iter_texts_within(train_texts(), BPE_SAMPLE_BYTES), vocab_size or 4096)
    if vocab_size is not None:
        raise UsageError("--vocab-size trains a new BPE (--tokenizer bpe); a tokenizer.json brings its own vocabulary")
    tok = load_tokenizer(spec)
    if tok.eos_id is None:
        raise UsageError(
            f"tokenizer {spec!r} has no '<|endoftext|>' special token to separate documents; "
            "add one (tokenizer.add_special_tokens) or use --tokenizer bpe"
        )
    return tok


def _tasks(sources: list[SourceFile], field: str, seed: int, val_fraction: float, bar: Any) -> Iterator[Task]:
    """Group pieces into tasks of about :data:`TASK_BYTES`, advancing ``bar`` by each source's size when done."""
    task: Task = []
    size = 0
    for source in sources:
        for piece in read_pieces(source, field):
            task.append((int(is_val(piece.unit, seed, val_fraction)), piece.text, piece.last))
            size += len(piece.text)
            if size >= TASK_BYTES:
                yield task
                task, size = [], 0
        bar.set_description(Path(source.label).name[:24], refresh=False)
    if task:
        yield task


def _ordered_results(tasks: Iterable[Task], workers: int, init_args: tuple[str, str]) -> Iterator[Any]:
    """Encode tasks in worker processes, yielding results in task order with at most 2 x workers in flight."""
    if workers <= 1:
        _init_worker(*init_args, in_process=True)
        for task in tasks:
            yield _encode_task(task), task
        return
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    ctx = multiprocessing.get_context(method)
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the children must not inherit a used rayon pool
    try:
        with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
            pending: deque[tuple[Any, Task]] = deque()
            for task in tasks:
                pending.append((pool.apply_async(_encode_task, (task,)), task))
                if len(pending) >= 2 * workers:
                    result, done = pending.popleft()
                    yield result.get(), done
            while pending:
                result, done = pending.popleft()
                yield result.get(), done
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def prepare(
    sources: list[str],
    out: str | Path,
    *,
    tokenizer: str = "byte",
    vocab_size: int | None = None,
    field: str = "text",
    glob: str | None = None,
    workers: int = 1,
    val_fraction: float = 0.01,
    seed: int = 0,
    shard_tokens: int = 100_000_000,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Tokenize ``sources`` into ``out``; returns the manifest.

    :param tokenizer: ``byte``, ``bpe`` (trained here on the training pieces, ``vocab_size``
        ids, default 4096) or the path of a ``tokenizer.json`` with an ``<|endoftext|>`` token.
    :param field: the text field of JSONL records and the text column of Parquet/datasets sources.
    :param glob: which files of a source folder to take (default: .txt, .md, .jsonl, .parquet).
    :param workers: tokenizing processes (1: in this process). The output does not depend on it.
    :param val_fraction: the share of pieces (documents, or ~16 KiB pieces of text files) for validation.
    :param seed: seeds the split.
    :param shard_tokens: tokens per shard file.
    :param overwrite: replace an existing ``out`` (only once the new one is complete).
    :param progress: show a progress bar (``None``: when stderr is a terminal).
    :raises DataError: for unreadable input, naming the file and line and the fix.
    """
    from tqdm.auto import tqdm

    out = Path(out).expanduser()
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if workers < 1 or shard_tokens < 1:
        raise UsageError("--workers and the shard size must be at least 1")
    if not sources:
        raise UsageError("give at least one SOURCE (a text/JSONL/Parquet file or folder)")
    if out.exists() and not overwrite:
        raise UsageError(f"output folder {str(out)!r} exists; choose another --out or pass --overwrite")
    files = expand_sources(list(sources), glob)
    tok = _make_tokenizer(tokenizer, vocab_size, files, field, seed, val_fraction)
    assert tok.eos_id is not None
    dtype = token_dtype(tok.vocab_size)
    if max(tok.vocab_size - 1, tok.eos_id) >= np.iinfo(dtype).max + 1:  # pragma: no cover (token_dtype's rule)
        raise AssertionError("token ids do not fit the shard dtype")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    writers = [_ShardWriter(tmp, split, dtype, shard_tokens) for split in SPLITS]
    total = sum(source_bytes(s) for s in files)
    t0 = time.perf_counter()
    bar = tqdm(total=total, unit="B", unit_scale=True, disable=None if progress is None else not progress)
    try:
        tokens = docs = 0
        init_args = (tok.to_json(), dtype.str)
        for (arrays, split_docs), task in _ordered_results(
            _tasks(files, field, seed, val_fraction, bar), workers, init_args
        ):
            for writer, arr, n_docs in zip(writers, arrays, split_docs, strict=True):
                writer.write(arr, n_docs)
            tokens += sum(len(a) for a in arrays)
            docs += sum(split_docs)
            bar.update(sum(len(text.encode("utf-8", errors="surrogateescape")) for _, text, _ in task))
            bar.set_postfix(docs=docs, tokens=tokens, tok_s=f"{tokens / max(time.perf_counter() - t0, 1e-9):.3g}")
        splits = {split: w.finish() for split, w in zip(SPLITS, writers, strict=True)}
        for split, info in splits.items():
            if info["tokens"] == 0 and (split == "train" or val_fraction > 0):
                fix = "raise --val-fraction or give more documents" if split == "val" else "lower --val-fraction"
                raise DataError(
                    f"the {split} split is empty: the split assigns whole documents (or ~16 KiB pieces of text "
                    f"files) and none went to {split}; {fix}",
                    path=str(out),
                )
        (tmp / "tokenizer.json").write_text(tok.to_json(), encoding="utf-8")
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dtype": dtype.name,
            "tokenizer": {
                "name": tok.name, "file": "tokenizer.json", "sha256": fingerprint(tok),
                "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
            },
            "separator": "eos-after-document",
            "splits": splits,
            "sources": _describe_sources(files),
            "options": {
                "tokenizer": tokenizer if tokenizer in ("byte", "bpe") else "file", "vocab_size": vocab_size,
                "field": field, "glob": glob, "val_fraction": val_fraction, "seed": seed,
                "shard_tokens": shard_tokens,
            },
        }  # fmt: skip
        # the manifest last: a folder without one is never taken for prepared data
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _move_into_place(tmp, out)
    except BaseException:
        for w in writers:
            w.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return manifest


def _describe_sources(files: list[SourceFile]) -> list[dict[str, Any]]:
    by_arg: dict[str, dict[str, Any]] = {}
    for f in files:
        entry = by_arg.setdefault(f.arg, {"path": f.arg, "kinds": [], "files": 0, "bytes": 0})
        if f.kind not in entry["kinds"]:
            entry["kinds"].append(f.kind)
        entry["files"] += 1
        entry["bytes"] += source_bytes(f)
    return list(by_arg.values())


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)  # --overwrite: the old folder goes only once the new one is complete
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def pieces_of(source: str, field: str = "text") -> Iterator[Piece]:
    """Every piece of one source (files of a folder in order); a helper for tests and benchmarks."""
    for f in expand_sources([source]):
        yield from read_pieces(f, field)
