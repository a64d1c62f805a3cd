"""``apt data prepare``: tokenize text once into token shards that training memory-maps."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``data`` command (``apt data prepare``)."""
    p = subparsers.add_parser(
        "data",
        help="prepare training data (tokenize once into memory-mapped shards)",
        description="Prepare training data for apt train --set data.path=DIR.",
    )
    sub = p.add_subparsers(dest="data_command", metavar="COMMAND", parser_class=type(p))
    prep = sub.add_parser(
        "prepare",
        help="tokenize text, JSONL, Parquet or a saved datasets folder into token shards",
        description="Tokenize SOURCEs into token shards (train-*.bin, val-*.bin), tokenizer.json and "
        "manifest.json in --out. Sources: .txt/.md files (one document each), .jsonl (one document per "
        "line, text in --field), .parquet (column --field), folders of those, and folders saved by "
        "Hugging Face datasets (save_to_disk). The same inputs and options give byte-identical output.",
    )
    prep.add_argument("sources", nargs="+", metavar="SOURCE", help="files or folders to read")
    prep.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder to write (must not exist)")
    prep.add_argument(
        "--tokenizer", default="byte", metavar="byte|bpe|PATH.json",
        help="byte (default), bpe (train a byte-level BPE on the sources), or a tokenizer.json to use",
    )  # fmt: skip
    prep.add_argument("--vocab-size", type=int, metavar="N", help="BPE vocabulary for --tokenizer bpe (default 4096)")
    prep.add_argument("--field", default="text", metavar="NAME", help="text field of JSONL/Parquet/datasets records")
    prep.add_argument("--glob", metavar="PATTERN", help="files to take from source folders, e.g. '*.txt'")
    prep.add_argument("--workers", type=int, default=1, metavar="N", help="tokenizing processes (default 1)")
    prep.add_argument("--val-fraction", type=float, default=0.01, metavar="F", help="share for validation (0.01)")
    prep.add_argument("--seed", type=int, default=0, metavar="S", help="seeds the train/validation split")
    prep.add_argument("--shard-tokens", type=int, default=100_000_000, metavar="N", help="tokens per shard file (100M)")
    prep.add_argument("--overwrite", action="store_true", help="replace --out once the new data is complete")
    prep.set_defaults(func=run_prepare)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_prepare(args: argparse.Namespace) -> int:
    from apt.data import prepare

    manifest = prepare(
        args.sources,
        args.out,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        field=args.field,
        glob=args.glob,
        workers=args.workers,
        val_fraction=args.val_fraction,
        seed=args.seed,
        shard_tokens=args.shard_tokens,
        overwrite=args.overwrite,
    )
    splits = manifest["splits"]
    tok = manifest["tokenizer"]
    print(
        f"prepared {args.out}: {splits['train']['tokens']:,} train tokens ({splits['train']['docs']:,} documents), "
        f"{splits['val']['tokens']:,} validation tokens; tokenizer {tok['name']} ({tok['vocab_size']:,} ids), "
        f"{manifest['dtype']} shards"
    )
    print(f"train on it: apt train --set data.path={args.out}")
    return 0
