"""``apt export``: write a run's model as a Hugging Face folder that ``transformers`` loads."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from apt.errors import UsageError


__all__ = ["parse_size", "register"]


def register(subparsers: Any) -> None:
    """Add the ``export`` command."""
    p = subparsers.add_parser(
        "export",
        help="write a run's model as a Hugging Face folder",
        description=(
            "Write RUN_DIR's model as a Hugging Face transformers folder (config.json, model.safetensors, "
            "generation_config.json, tokenizer files): GPT-2 for learned positions + layernorm + gelu, Llama for "
            "rope + rmsnorm + swiglu without bias, Mixtral for that shape with the moe plugin in every block."
        ),
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a run folder written by apt train")
    p.add_argument("--format", choices=("hf",), default="hf", help="output format (hf: Hugging Face transformers)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new (or empty) folder to write")
    p.add_argument(
        "--weights", metavar="NAME", help="a 'weights' provider to take weights from (e.g. align's 'stable': the EMA)"
    )
    p.add_argument(
        "--max-shard-size",
        default="5GB",
        metavar="SIZE",
        help="split model.safetensors past this size (e.g. 2GB, 500MB)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="stored weight type (float32 keeps the weights exactly)",
    )
    p.set_defaults(func=run)


def parse_size(text: str) -> int:
    """``"5GB"`` -> bytes (KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024; a bare number is bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if m is None or float(m.group(1)) <= 0:
        raise UsageError(f"--max-shard-size {text!r}: give a positive size such as 5GB, 500MB or 1048576")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * scale)


def run(args: argparse.Namespace) -> int:
    import torch

    from apt.cli._generate import load_run_model
    from apt.interop import save_hf

    max_bytes = parse_size(args.max_shard_size)
    model, pm = load_run_model(args.run, args.weights)
    try:
        tokenizer = args.run / "tokenizer.json"
        arch = save_hf(
            model,
            args.out,
            registry=pm.registry,
            tokenizer_json=tokenizer if tokenizer.is_file() else None,
            max_shard_bytes=max_bytes,
            dtype=getattr(torch, args.dtype),
        )
    finally:
        pm.teardown_all()
    weights = f" ({args.weights} weights)" if args.weights else ""
    print(f"exported {args.run}{weights} as {arch} to {args.out}")
    return 0
