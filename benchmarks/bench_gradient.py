"""Step time with the gradient plugin, divided by the step time without it, side by side in one run.

Variants (each trainer sees the same batches; ``Trainer.train_step`` timed in interleaved
rounds so that machine noise hits all of them alike):

* ``logging``: the plugin with its defaults (global norm every step, per-group norms,
  parameter norms and update ratios every 10th step); ``logging_every_step`` logs all of it
  every step. Target: ``logging / plain <= 1.03``.
* ``agc``: logging plus adaptive gradient clipping. Target: ``agc / plain <= 1.05``.
* ``pcgrad_2`` / ``pcgrad_3``: PCGrad over T = 2 and 3 named terms (the LM loss plus one or
  two auxiliary terms on the logits, added by a benchmark plugin that the matching
  ``plain_T`` trainer runs too). PCGrad needs one backward per term from the one forward, so
  the analytic expectation is ``(step + (T - 1) * backward) / step``, with ``backward`` the
  measured time of one backward pass of a micro-batch (forward+backward minus forward).

Three ratios per variant: of the medians, of the minima, and "in-plugin": the plain step plus
the time measured inside the plugin's handlers (hook statistics), which a loaded machine's
noise hardly touches (for PCGrad minus the trainer backward that the plugin replaces).

    python benchmarks/bench_gradient.py --threads 1     # CPU, a small model
    python benchmarks/bench_gradient.py --device cuda --d-model 512 --n-layer 8 --block-size 256

Prints medians and ratios; nothing is asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from apt.core import APTConfig
from apt.plugins import Plugin
from apt.plugins import PluginManager
from apt.train import Trainer
from apt_plugin_gradient import GradientPlugin


class BenchTerms(Plugin):
    """``bench_terms.n`` auxiliary loss terms on the logits (a z-loss and a logit-size penalty)."""

    name = "bench_terms"

    def on_compute_loss(self, outputs: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        logits = outputs.logits.float()  # (B, T, V)
        terms = {"aux_z": 1e-3 * logits.logsumexp(-1).pow(2).mean()}
        if int(self.config.get("n", 1)) > 1:
            terms["aux_l2"] = 1e-4 * logits.pow(2).mean()
        return terms


def _trainer(args: argparse.Namespace, gradient: dict[str, Any] | None, n_terms: int) -> Trainer:
    plugins = (["gradient"] if gradient is not None else []) + (["bench_terms"] if n_terms > 1 else [])
    data: dict[str, Any] = {
        "plugins": plugins,
        "model": {
            "block_size": args.block_size, "n_layer": args.n_layer, "n_head": args.n_head, "d_model": args.d_model,
        },
        "training": {
            "max_epochs": 1, "steps_per_epoch": 10_000, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
            "device": args.device, "seed": 0, "precision": args.precision,
        },
        "bench_terms": {"n": n_terms - 1},
    }  # fmt: skip
    if gradient is not None:
        data["gradient"] = gradient
    config = APTConfig(**data)
    pm = PluginManager()
    pm.register_plugin("gradient", GradientPlugin)
    pm.register_plugin("bench_terms", BenchTerms)
    pm.load_from_config(config)
    trainer = Trainer(config, pm, run_dir=None)
    trainer.setup()
    # what fit() does before the first step: the plugin groups the parameters here
    trainer.hooks.trigger("on_train_begin", trainer=trainer, model=trainer.model, config=config, epoch=0, step=0)
    return trainer


def _plugin_seconds(trainer: Trainer) -> float:
    """Seconds spent so far in the gradient plugin's handlers (the hook statistics)."""
    total = 0.0
    for event in trainer.plugin_manager.statistics().values():
        total += sum(h["total_s"] for h in event["handlers"] if h["plugin"] == "gradient")
    return total


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
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds; each runs every variant once")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 avoids OpenMP stalls on a busy shared machine)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    variants = {
        "plain": _trainer(args, None, 1),
        "logging": _trainer(args, {}, 1),
        "logging_every_step": _trainer(args, {"log": {"every": 1}}, 1),
        "agc": _trainer(args, {"clip": {"mode": "agc"}}, 1),
        "plain_2": _trainer(args, None, 2),
        "pcgrad_2": _trainer(args, {"surgery": {"mode": "pcgrad"}}, 2),
        "plain_3": _trainer(args, None, 3),
        "pcgrad_3": _trainer(args, {"surgery": {"mode": "pcgrad"}}, 3),
    }
    plain = variants["plain"]
    device = plain.device
    batches = [plain.batches.next_step() for _ in range(args.warmup + args.rounds)]
    for trainer in variants.values():
        for x, y in batches[: args.warmup]:
            trainer.train_step(x, y)

    # one micro-batch's forward (with grad) and forward+backward, for the PCGrad expectation
    model = plain.model
    assert model is not None

    def forward(x: torch.Tensor, y: torch.Tensor, backward: bool) -> None:
        autocast = torch.autocast(device.type, dtype=plain.dtype, enabled=plain.dtype != torch.float32)
        for xb, yb in zip(x.split(args.batch_size), y.split(args.batch_size), strict=True):
            with autocast:
                loss = model(xb.to(device), yb.to(device)).loss
            if backward:
                loss.backward()
        model.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {name: [] for name in [*variants, "forward", "forward_backward"]}
    hook_s = {name: _plugin_seconds(trainer) for name, trainer in variants.items()}
    order = list(variants)
    shuffle = random.Random(0)
    for x, y in batches[args.warmup :]:
        shuffle.shuffle(order)  # no variant always runs first (or right after the same one)
        for name in order:
            times[name].append(_timed(partial(variants[name].train_step, x, y), device))
        times["forward"].append(_timed(partial(forward, x, y, False), device))
        times["forward_backward"].append(_timed(partial(forward, x, y, True), device))
    # the time spent inside the gradient plugin's handlers per step: overhead without the machine's noise
    hook_s = {name: (_plugin_seconds(variants[name]) - hook_s[name]) / args.rounds for name in variants}

    med = {name: statistics.median(values) for name, values in times.items()}
    low = {name: min(values) for name, values in times.items()}
    backward = med["forward_backward"] - med["forward"]
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"device {device} ({plain.dtype}), {n_params / 1e6:.2f}M params, batch {args.batch_size} x "
        f"{args.block_size} tokens, grad_accum {args.grad_accum}, {torch.get_num_threads()} CPU threads, "
        f"{args.rounds} interleaved rounds (medians)"
    )
    print(f"  {'variant':<20} {'median':>9}    {'min':>9}    {'in plugin':>9}")
    for name in times:
        inside = f"{hook_s[name] * 1e3:9.2f} ms" if name in hook_s else ""
        print(f"  {name:<20} {med[name] * 1e3:9.2f} ms {low[name] * 1e3:9.2f} ms {inside}")
    print("ratio                        median   min   in-plugin: (plain [- its backward] + plugin time) / plain")
    for name, base, note in (
        ("logging", "plain", "target <= 1.03"),
        ("logging_every_step", "plain", ""),
        ("agc", "plain", "target <= 1.05"),
        ("pcgrad_2", "plain_2", ""),
        ("pcgrad_3", "plain_3", ""),
    ):
        # a PCGrad plugin does the backward passes itself: the trainer's own backward is not run
        replaced = backward * args.grad_accum if name.startswith("pcgrad") else 0.0
        inside = (med[base] - replaced + hook_s[name]) / med[base]
        print(
            f"{name + ' / ' + base:<28} {med[name] / med[base]:6.3f} {low[name] / low[base]:6.3f} {inside:6.3f}  {note}"
        )
    for t in (2, 3):
        step = med[f"plain_{t}"]
        expected = (step + (t - 1) * backward * args.grad_accum) / step
        print(f"pcgrad_{t} analytic expectation: {expected:.3f} ({t} backward passes of "
              f"{backward * 1e3:.1f} ms instead of 1)")  # fmt: skip


if __name__ == "__main__":
    main()
