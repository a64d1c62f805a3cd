"""Reading ``apt data prepare`` sources as a stream of text pieces, in bounded memory.

A source is a text file (``.txt``, ``.md``; one document), a JSONL file (one document
per line, the text in ``--field``), a Parquet file (one document per row), a folder of
such files, or a folder written by Hugging Face ``datasets``' ``save_to_disk``. Text
files are read in pieces of about :data:`PIECE_BYTES`, cut only at a newline followed by
a non-space character: byte-level BPE never merges across such a point, so the pieces
encode exactly as the whole file would. A piece is also the unit of the train/validation
split, so that a single long file can be split.
"""

from __future__ import annotations

import codecs
import fnmatch
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Final

from apt.errors import DataError


__all__ = ["PIECE_BYTES", "Piece", "SourceFile", "expand_sources", "read_pieces"]

#: Target size of one text piece (the split unit of text files).
PIECE_BYTES: Final = 16 * 1024
_BLOCK_BYTES: Final = 1 << 20  # read text files 1 MiB at a time
TEXT_SUFFIXES: Final = (".txt", ".md")
_KIND_BY_SUFFIX: Final = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class Piece:
    """A piece of one document: ``unit`` names it for the split, ``last`` ends the document."""

    unit: str
    text: str
    last: bool


@dataclass(frozen=True)
class SourceFile:
    """One input: ``path``, its ``kind`` (text, jsonl, parquet, hf-disk), ``label`` (as the user named it, for
    messages), ``arg`` (the command-line source it came from) and ``key``: its name for the split, the file
    name or its path inside the source folder, so that moving the data elsewhere does not change the split."""

    path: Path
    kind: str
    label: str
    arg: str
    key: str


def expand_sources(sources: list[str], glob: str | None = None) -> list[SourceFile]:
    """The files the command-line sources stand for, in a fixed order.

    A folder gives its files (recursively, sorted) whose names match ``glob`` (default:
    ``.txt``, ``.md``, ``.jsonl`` and ``.parquet`` files), or is itself a ``datasets`` folder.

    :raises DataError: for a source that does not exist, or a folder without matching files.
    """
    files: list[SourceFile] = []
    for arg in sources:
        p = Path(arg).expanduser()
        if p.is_dir() and (p / "state.json").is_file() and (p / "dataset_info.json").is_file():
            files.append(SourceFile(p, "hf-disk", arg, arg, p.resolve().name))
        elif p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and (fnmatch.fnmatch(f.name, glob) if glob else f.suffix.lower() in _KIND_BY_SUFFIX)
            )
            if not found:
                wanted = f"files matching --glob {glob!r}" if glob else ".txt, .md, .jsonl or .parquet files"
                raise DataError(
                    f"source {arg!r} is a folder without {wanted}; add some, or choose files with --glob", path=arg
                )
            for f in found:
                rel = f.relative_to(p).as_posix()
                files.append(SourceFile(f, _kind(f), f"{arg.rstrip('/')}/{rel}", arg, rel))
        elif p.is_file():
            files.append(SourceFile(p, _kind(p), arg, arg, p.name))
        else:
            raise DataError(f"source {arg!r} does not exist; give text/JSONL/Parquet files or folders", path=arg)
    return files


def _kind(path: Path) -> str:
    return _KIND_BY_SUFFIX.get(path.suffix.lower(), "text")


def source_bytes(source: SourceFile) -> int:
    """The size on disk of a source (for the progress bar)."""
    if source.path.is_dir():
        return sum(f.stat().st_size for f in source.path.rglob("*.arrow"))
    return source.path.stat().st_size


def read_pieces(source: SourceFile, field: str) -> Iterator[Piece]:
    """Stream a source's documents as pieces; raises :class:`DataError` naming the file (and line)."""
    if source.kind == "text":
        yield from _text_pieces(source)
    elif source.kind == "jsonl":
        yield from _jsonl_pieces(source, field)
    elif source.kind == "parquet":
        yield from _parquet_pieces(source, field)
    else:
        yield from _hf_disk_pieces(source, field)


def _cut(text: str) -> int:
    """Where to cut ``text`` near :data:`PIECE_BYTES` characters: after a newline followed by a non-space.

    Returns 0 when there is no such point yet (keep reading).
    """
    if len(text) <= PIECE_BYTES:
        return 0
    pos = PIECE_BYTES
    while True:
        nl = text.find("\n", pos)
        if nl < 0 or nl + 1 >= len(text):
            return 0
        if not text[nl + 1].isspace():
            return nl + 1
        pos = nl + 1


def _text_pieces(source: SourceFile) -> Iterator[Piece]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    buf, n, offset, lines = "", 0, 0, 0
    with open(source.path, "rb") as f:
        while True:
            block = f.read(_BLOCK_BYTES)
            try:
                buf += decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                line = lines + block[: max(exc.start, 0)].count(b"\n") + 1
                raise DataError(
                    f"{source.label!r} line {line} is not UTF-8 text ({exc.reason} at byte {offset + exc.start}); "
                    "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) or leave it out",
                    path=str(source.path),
                    line=line,
                ) from None
            offset += len(block)
            lines += block.count(b"\n")
            while (cut := _cut(buf)) > 0:
                yield Piece(f"{source.key}#{n}", buf[:cut], last=False)
                buf, n = buf[cut:], n + 1
            if not block:
                break
    if not buf and n == 0:
        raise DataError(f"source {source.label!r} is empty; give a file with text or leave it out", path=source.label)
    yield Piece(f"{source.key}#{n}", buf, last=True)


def _jsonl_pieces(source: SourceFile, field: str) -> Iterator[Piece]:
    n = 0
    with open(source.path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{source.label!r} line {lineno}"
            try:
                record = json.loads(raw)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{where} is not UTF-8 text ({exc.reason}); convert the file to UTF-8 or remove the line",
                    path=str(source.path),
                    line=lineno,
                ) from None
            except ValueError as exc:
                raise DataError(
                    f"{where} is not JSON ({exc}); fix or remove that line (JSONL: one JSON object per line)",
                    path=str(source.path),
                    line=lineno,
                ) from None
            text = _field(record, field, where, source, lineno)
            if text:
                yield Piece(f"{source.key}:{n}", text, last=True)
                n += 1
    if n == 0:
        raise DataError(
            f"source {source.label!r} holds no documents (no line with text in field {field!r}); "
            "give a JSONL file with text or leave it out",
            path=str(source.path),
        )


def _field(record: Any, field: str, where: str, source: SourceFile, lineno: int) -> str:
    if not isinstance(record, dict) or field not in record:
        keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
        raise DataError(
            f"{where} has no field {field!r} (it has: {keys}); pass the text field's name with --field NAME",
            path=str(source.path),
            line=lineno,
        )
    value = record[field]
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field {field!r} is {type(value).__name__}, not text; pass the text field with --field NAME",
            path=str(source.path),
            line=lineno,
        )
    return value


def _parquet_pieces(source: SourceFile, field: str) -> Iterator[Piece]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"reading {source.label!r} needs pyarrow; pip install 'apt-core[parquet]'", path=str(source.path)
        ) from None
    try:
        pf = pq.ParquetFile(source.path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise DataError(f"{source.label!r} is not a Parquet file ({exc})", path=str(source.path)) from None
    columns = pf.schema_arrow.names
    if field not in columns:
        raise DataError(
            f"{source.label!r} has no column {field!r} (columns: {', '.join(columns)}); "
            "pass the text column's name with --field NAME",
            path=str(source.path),
        )
    n = 0
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text:
                yield Piece(f"{source.key}:{n}", str(text), last=True)
                n += 1
    if n == 0:
        raise DataError(f"source {source.label!r} holds no text in column {field!r}", path=str(source.path))


def _hf_disk_pieces(source: SourceFile, field: str) -> Iterator[Piece]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{source.label!r} was saved by Hugging Face datasets, which is not installed; "
            "pip install 'apt-core[datasets]'",
            path=str(source.path),
        ) from None
    ds = datasets.load_from_disk(str(source.path))  # memory-mapped Arrow
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(
            f"{source.label!r} holds several splits ({', '.join(ds)}); give one split's folder",
            path=str(source.path),
        )
    if field not in ds.column_names:
        raise DataError(
            f"{source.label!r} has no column {field!r} (columns: {', '.join(ds.column_names)}); "
            "pass the text column's name with --field NAME",
            path=str(source.path),
        )
    n = 0
    for batch in ds.select_columns([field]).iter(batch_size=1024):
        for text in batch[field]:
            if text:
                yield Piece(f"{source.key}:{n}", str(text), last=True)
                n += 1
    if n == 0:
        raise DataError(f"source {source.label!r} holds no text in column {field!r}", path=str(source.path))


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
