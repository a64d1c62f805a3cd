"""Metric bookkeeping and the run folder's JSON files (written by rank 0 only)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO
from typing import Any


__all__ = ["MetricsWriter", "bits_per_byte", "default_run_dir", "set_aside_records_after", "write_json"]

_LN2 = math.log(2.0)


def bits_per_byte(loss_nats: float) -> float:
    """Cross-entropy per token in bits: bits per byte with the byte tokenizer (one token is one byte).

    Other tokenizers scale it by tokens per byte (the trainer does, for ``val_bpb``).
    """
    return loss_nats / _LN2


def default_run_dir(parent: str | Path, name: str | None) -> Path:
    """``parent/name``, the name defaulting to the local time (``20261126-150102``)."""
    return Path(parent) / (name or time.strftime("%Y%m%d-%H%M%S"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)  # JSON has no NaN/inf
    if hasattr(value, "item") and callable(value.item):  # 0-d tensors and numpy scalars
        return _jsonable(value.item())
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON (atomically: a partial file never replaces a good one)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    tmp.replace(path)


def set_aside_records_after(path: Path, step: int) -> int:
    """Move the records of ``path`` (``metrics.jsonl``) past ``step`` to ``metrics.superseded.jsonl``.

    A run resumed from the checkpoint of ``step`` into its own folder repeats the steps after
    it; their first records describe weights the resume threw away. Moving them aside keeps
    one record per step for ``apt plot`` and loses nothing. A last line cut off by a kill
    (no newline) goes aside too, so that the next record starts on a line of its own;
    other lines that are not records stay. Returns how many lines were moved.
    """
    if not path.is_file():
        return 0
    keep: list[str] = []
    aside: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            aside.append(line + "\n")  # cut off mid-write
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        later = isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step
        (aside if later else keep).append(line)
    if aside:
        with path.with_name("metrics.superseded.jsonl").open("a", encoding="utf-8") as f:
            f.writelines(aside)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        tmp.replace(path)
    return len(aside)


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl``; a no-op without a path."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = path.open("a", encoding="utf-8") if path is not None else None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        self._file.flush()  # so that `apt plot` and `tail -f` see a live run

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
