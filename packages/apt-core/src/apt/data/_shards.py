"""Reading prepared data: token shards opened as read-only memory maps, never loaded whole.

A window never crosses a shard: window start ``s`` in ``[0, n_starts)`` maps to the shard
whose range of valid starts holds it, exactly as a start into one long token tensor does.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from apt.data._prepare import FORMAT
from apt.data._prepare import MANIFEST
from apt.data._tokenizer import BPETokenizer
from apt.data._tokenizer import ByteTokenizer
from apt.data._tokenizer import load_tokenizer
from apt.errors import DataError


__all__ = ["PreparedData", "TokenShards", "is_prepared"]


def is_prepared(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``apt data prepare`` (it has a ``manifest.json``)."""
    return (Path(path).expanduser() / MANIFEST).is_file()


class TokenShards:
    """One split's shards as memory maps; draws ``(x, y)`` windows by global start index.

    :param folder: the prepared folder.
    :param info: the split's manifest entry (``{"tokens", "docs", "shards": [...]}``).
    :param dtype: the shards' token dtype.
    """

    def __init__(self, folder: Path, info: dict[str, Any], dtype: str) -> None:
        self.maps = [np.memmap(folder / s["file"], dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
                     for s in info["shards"] if s["tokens"] > 0]  # fmt: skip
        self.n_tokens = int(sum(len(m) for m in self.maps))
        self._bounds: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self.n_tokens

    def n_starts(self, block_size: int) -> int:
        """How many windows of ``block_size + 1`` tokens start in some shard (the range random starts come from)."""
        return sum(max(0, len(m) - block_size) for m in self.maps)

    def windows(self, starts: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
        """Inputs and next-token targets ``(N, T)`` int64 for global window starts ``starts`` (N,)."""
        bounds = self._bounds.get(block_size)
        if bounds is None:
            bounds = self._bounds[block_size] = [0]
            for m in self.maps:
                bounds.append(bounds[-1] + max(0, len(m) - block_size))
        rows = []
        for s in starts.tolist():
            i = bisect.bisect_right(bounds, s) - 1  # the shard holding start s
            o = s - bounds[i]
            rows.append(self.maps[i][o : o + block_size + 1])
        chunk = torch.from_numpy(np.stack(rows).astype(np.int64))  # (N, T + 1), the only copy made
        return chunk[:, :-1], chunk[:, 1:]

    def sample(self, max_tokens: int) -> Tensor:
        """Up to ``max_tokens`` tokens taken evenly from the shards (for statistics), int64."""
        take = max(1, max_tokens // max(1, len(self.maps)))
        parts = [np.asarray(m[: min(len(m), take)], dtype=np.int64) for m in self.maps]
        return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.long)


class PreparedData:
    """A folder written by ``apt data prepare``: manifest, tokenizer and the train/val shards.

    :param folder: the folder.
    :param verify: check each shard's size and SHA-256 against the manifest (reads every shard once).
    :raises DataError: for a missing/foreign manifest, a missing shard or a hash mismatch.
    """

    def __init__(self, folder: str | Path, verify: bool = True) -> None:
        self.folder = Path(folder).expanduser()
        path = self.folder / MANIFEST
        try:
            raw = path.read_bytes()
            self.manifest: dict[str, Any] = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{str(path)!r} cannot be read as a manifest ({exc}); run apt data prepare again", path=str(path)
            ) from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise DataError(f"{str(path)!r} is not an apt data prepare manifest", path=str(path))
        #: SHA-256 of manifest.json: names this exact data (a resume refuses other data)
        self.sha256 = hashlib.sha256(raw).hexdigest()
        self.tokenizer: ByteTokenizer | BPETokenizer = load_tokenizer(self.folder / "tokenizer.json")
        want = self.manifest["tokenizer"]["sha256"]
        got = hashlib.sha256(self.tokenizer.to_json().encode("utf-8")).hexdigest()
        if got != want:
            raise DataError(
                f"{str(self.folder / 'tokenizer.json')!r} is not the tokenizer the shards were made with "
                f"(SHA-256 {got[:12]}, manifest {want[:12]}); run apt data prepare again",
                path=str(self.folder / "tokenizer.json"),
            )
        if verify:
            self.verify()
        dtype = self.manifest["dtype"]
        self.train = TokenShards(self.folder, self.manifest["splits"]["train"], dtype)
        self.val = TokenShards(self.folder, self.manifest["splits"]["val"], dtype)

    def verify(self) -> None:
        """Check every shard's size and SHA-256 against the manifest."""
        itemsize = np.dtype(self.manifest["dtype"]).itemsize
        for split in self.manifest["splits"].values():
            for shard in split["shards"]:
                f = self.folder / shard["file"]
                where = f"shard {str(f)!r}"
                if not f.is_file():
                    raise DataError(f"{where} is missing; run apt data prepare again", path=str(f))
                if f.stat().st_size != shard["tokens"] * itemsize:
                    raise DataError(
                        f"{where} holds {f.stat().st_size} bytes, the manifest says {shard['tokens'] * itemsize}; "
                        "the file changed or is cut short: run apt data prepare again",
                        path=str(f),
                    )
                h = hashlib.sha256()
                with open(f, "rb") as fh:
                    while block := fh.read(1 << 24):
                        h.update(block)
                if h.hexdigest() != shard["sha256"]:
                    raise DataError(
                        f"{where} has SHA-256 {h.hexdigest()[:12]}..., the manifest says {shard['sha256'][:12]}...; "
                        "the file changed or is corrupt: run apt data prepare again",
                        path=str(f),
                    )

    def __repr__(self) -> str:
        return f"PreparedData({str(self.folder)!r}, train={len(self.train)} tokens, val={len(self.val)} tokens)"
