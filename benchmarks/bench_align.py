"""Step time of training with the align plugin active, divided by the step time without it.

Runs three trainers side by side in one process on identical batches -- no plugin, align
(teacher forward + KL + hidden term + EMA update), and align in EMA-only mode
(``alpha = beta = 0``: EMA update only) -- timing ``Trainer.train_step`` in interleaved
rounds so that machine noise hits all of them alike. It also times one no-grad forward
of the live model per micro-batch, the expected extra cost ("about one extra forward pass").

    python benchmarks/bench_align.py --threads 1     # CPU, a small model
    python benchmarks/bench_align.py --device cuda --d-model 512 --n-layer 8 --block-size 256

Prints medians and ratios; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from apt.core import APTConfig
from apt.plugins import PluginManager
from apt.train import Trainer
from apt_plugin_align import AlignPlugin


def _trainer(args: argparse.Namespace, plugins: list[str], align: dict[str, Any] | None = None) -> Trainer:
    data: dict[str, Any] = {
        "plugins": plugins,
        "model": {
            "block_size": args.block_size, "n_layer": args.n_layer, "n_head": args.n_head, "d_model": args.d_model,
        },
        "training": {
            "max_epochs": 1, "steps_per_epoch": 10_000, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
            "device": args.device, "seed": 0, "precision": args.precision,
        },
    }  # fmt: skip
    if align is not None:
        data["align"] = align
    config = APTConfig(**data)
    pm = PluginManager()
    pm.register_plugin("align", AlignPlugin)
    pm.load_from_config(config)
    trainer = Trainer(config, pm, run_dir=None)
    trainer.setup()
    return trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per trainer")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds; each runs every variant once")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 avoids OpenMP stalls on a busy shared machine)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    variants = {
        "plain": _trainer(args, []),
        "align": _trainer(args, ["align"], {"start_epoch": 0, "eval_stable": False, "save_stable": False}),
        "ema_only": _trainer(args, ["align"], {"start_epoch": 0, "alpha": 0, "beta": 0, "eval_stable": False}),
    }
    plain = variants["plain"]
    device = plain.device
    # identical batches for every variant: drawn once from the plain trainer's sampler
    batches = [plain.batches.next_step() for _ in range(args.warmup + args.rounds)]
    for trainer in variants.values():
        for x, y in batches[: args.warmup]:
            trainer.train_step(x, y)

    # the expected overhead: one no-grad forward per micro-batch, as the teacher pass does
    model = plain.model
    assert model is not None

    def live_forward(x: torch.Tensor) -> None:
        autocast = torch.autocast(device.type, dtype=plain.dtype, enabled=plain.dtype != torch.float32)
        with torch.no_grad(), autocast:
            for xb in x.split(args.batch_size):
                model(xb.to(device), return_hidden=True)

    times: dict[str, list[float]] = {name: [] for name in [*variants, "forward"]}
    for x, y in batches[args.warmup :]:
        for name, trainer in variants.items():
            times[name].append(_timed(partial(trainer.train_step, x, y), device))
        times["forward"].append(_timed(partial(live_forward, x), device))

    med = {name: statistics.median(values) for name, values in times.items()}
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"device {device} ({plain.dtype}), {n_params / 1e6:.2f}M params, batch {args.batch_size} x "
        f"{args.block_size} tokens, grad_accum {args.grad_accum}, {torch.get_num_threads()} CPU threads, "
        f"{args.rounds} interleaved rounds (medians)"
    )
    for name in ("plain", "align", "ema_only", "forward"):
        print(f"  {name:<9} {med[name] * 1e3:8.2f} ms")
    print(f"align / plain             {med['align'] / med['plain']:.3f}")
    print(f"ema_only / plain          {med['ema_only'] / med['plain']:.3f}")
    print(
        f"(plain + forward) / plain {(med['plain'] + med['forward']) / med['plain']:.3f}  <- 'one extra forward pass'"
    )


if __name__ == "__main__":
    main()
