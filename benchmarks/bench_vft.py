"""Tri-Vein attention and the Vein-Flow FFN against the core model: counted FLOPs, time, and val_bpb.

Part 1 (``--part attention``): one attention layer, d_model 256, 4 heads (head size 64),
T in {128, 512, 2048} at a fixed number of tokens per batch (B = tokens / T). Side by side:
the core ``attention:causal`` and ``attention:tva`` at r in {8, 16, 32} (folded, the default)
plus r = 16 unfolded (the literal per-head projection of full-width q, k, v). For each: FLOPs of
one forward + backward counted by ``torch.utils.flop_counter.FlopCounterMode`` (total, and the
part inside scaled_dot_product_attention, counted on SDPA's math backend because FlopCounterMode
has no formula for the fused CPU kernel; dense, the causal mask's skipped half included), parameters, and the median (and fastest) forward + backward time
over interleaved repeats. ``speed`` = core time / variant time (> 1: faster than core).

Part 2 (``--part train``): ``apt train`` on the default configuration (embedded corpus, 4 x 128
GPT, 2 epochs x 200 steps) three times, one after the other (``--parallel``: all at once, so
that on a shared machine they see the same load):

1. the default model, ``--no-plugins``;
2. ``--plugins vft`` with ``model.attention=tva`` and ``model.ffn=vft`` for the same steps (equal steps);
3. the TVA + VFT model for the steps it can take in the wall time of run 1 (equal wall time),
   from the ratio of their step times measured in alternation in this process before the runs
   (the median of back-to-back pairs: robust to load that drifts), with its own full LR schedule.

Each run's final val_bpb, wall time and step count are printed. ``--steps-per-epoch`` /
``--max-epochs`` shorten the schedule for all runs alike (say so when reporting).

    python benchmarks/bench_vft.py                              # both parts, CPU, 2 threads
    python benchmarks/bench_vft.py --part attention --seq 128 512
    python benchmarks/bench_vft.py --part train --max-epochs 1 --steps-per-epoch 150 --parallel
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from apt.core import APTConfig
from apt.model import CausalSelfAttention
from apt.plugins import PluginManager
from apt.train import Trainer
from apt_plugin_vft import TriVeinAttention
from apt_plugin_vft import VFTPlugin
from torch import nn
from torch.nn.attention import SDPBackend
from torch.nn.attention import sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


VFT_SETS = ["model.attention=tva", "model.ffn=vft"]


# --- part 1: one attention layer -------------------------------------------------------


def _fwd_bwd(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    module(x).backward(grad)


def _count_flops(fn: Callable[[], None]) -> int:
    """FLOPs of ``fn`` as FlopCounterMode counts them, SDPA on its math backend.

    FlopCounterMode has no formula for the fused CPU kernel (it counts 0 there); on the math
    backend SDPA is matmuls and softmax, so its T^2 part is counted (dense: the causal mask's
    skipped half included, as for every backend's formula).
    """
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops()


def _sdpa_flops(b: int, nh: int, t: int, head: int, device: str) -> int:
    """FLOPs of forward + backward of causal SDPA alone on ``(b, nh, t, head)`` q, k, v."""
    q, k, v = (torch.randn(b, nh, t, head, device=device, requires_grad=True) for _ in range(3))
    return _count_flops(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward())


def bench_attention(args: argparse.Namespace) -> None:
    d, nh = args.d_model, args.n_head
    variants: list[tuple[str, Callable[[int], nn.Module]]] = [
        ("core causal", lambda t: CausalSelfAttention(d, nh, t)),
        *((f"tva r={r}", lambda t, r=r: TriVeinAttention(d, nh, t, rank=r)) for r in args.ranks),
        ("tva r=16 unfolded", lambda t: TriVeinAttention(d, nh, t, rank=16, fold=False)),
    ]
    print(f"\n== attention:tva vs attention:causal: d_model {d}, {nh} heads (head size {d // nh}), "
          f"{args.tokens} tokens per batch, fwd+bwd, {args.device}, {args.threads} threads ==")  # fmt: skip
    print(f"{'T':>5} {'variant':<18} {'params':>8} {'GFLOP':>8} {'(SDPA)':>8} {'flop ratio':>10} "
          f"{'median ms':>10} {'min ms':>8} {'speed':>6} {'speed(min)':>10}")  # fmt: skip
    for t in args.seq:
        b = max(1, args.tokens // t)
        torch.manual_seed(0)
        x = torch.randn(b, t, d, device=args.device, requires_grad=True)
        grad = torch.randn(b, t, d, device=args.device)
        mods = [(name, make(t).to(args.device)) for name, make in variants]
        flops = {name: _count_flops(partial(_fwd_bwd, m, x, grad)) for name, m in mods}
        heads = {name: getattr(m, "rank", d // nh) for name, m in mods}
        sdpa = {name: _sdpa_flops(b, nh, t, heads[name], args.device) for name, _ in mods}
        times: dict[str, list[float]] = {name: [] for name, _ in mods}
        for rep in range(args.warmup + args.repeats):  # interleaved: load hits every variant alike
            for name, m in mods:
                _sync(args.device)
                start = time.perf_counter()
                _fwd_bwd(m, x, grad)
                _sync(args.device)
                if rep >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        base_med, base_min = statistics.median(times["core causal"]), min(times["core causal"])
        base_flops = flops["core causal"]
        for name, m in mods:
            total = flops[name]
            med, fast = statistics.median(times[name]), min(times[name])
            params = sum(p.numel() for p in m.parameters())
            print(f"{t:>5} {name:<18} {params:>8} {total / 1e9:>8.3f} {sdpa[name] / 1e9:>8.3f} {total / base_flops:>10.3f} "
                  f"{med * 1e3:>10.1f} {fast * 1e3:>8.1f} {base_med / med:>6.2f} {base_min / fast:>10.2f}")  # fmt: skip


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- part 2: training runs ---------------------------------------------------------------


def _schedule_sets(args: argparse.Namespace, steps_per_epoch: int) -> list[str]:
    return [f"training.max_epochs={args.max_epochs}", f"training.steps_per_epoch={steps_per_epoch}"]


def _trainer(sets: list[str], plugins: bool) -> Trainer:
    config = APTConfig(plugins=["vft"] if plugins else []).with_overrides(sets)
    pm = PluginManager()
    if plugins:
        pm.register_plugin("vft", VFTPlugin)
    pm.load_from_config(config)
    trainer = Trainer(config, pm)
    trainer.setup()
    return trainer


def step_time_ratio(args: argparse.Namespace) -> tuple[float, float, float]:
    """Seconds per optimizer step of (default, TVA + VFT) and the median of their per-pair ratios.

    The two trainers take turns on the same batch; each pair runs back to back, so the ratio
    of a pair sees nearly the same machine load even when the load drifts.
    """
    sets = _schedule_sets(args, args.steps_per_epoch)
    base, vft = _trainer(sets, plugins=False), _trainer([*sets, *VFT_SETS], plugins=True)
    tc, mc = base.config.training, base.config.model
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, mc.vocab_size, (tc.batch_size * tc.grad_accum, mc.block_size), generator=gen)
    y = torch.randint(0, mc.vocab_size, x.shape, generator=gen)
    times: dict[str, list[float]] = {"base": [], "vft": []}
    for rep in range(2 + args.step_repeats):
        for name, trainer in (("base", base), ("vft", vft)):
            start = time.perf_counter()
            trainer.train_step(x, y)
            if rep >= 2:
                times[name].append(time.perf_counter() - start)
    ratio = statistics.median(v / b for b, v in zip(times["base"], times["vft"], strict=True))
    return statistics.median(times["base"]), statistics.median(times["vft"]), ratio


def _start(run_dir: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "apt", "train", "--run-dir", str(run_dir), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _result(run_dir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = [r for r in records if "vft/eps_mean" in r]
    summary["vft_last"] = {k: v for k, v in last[-1].items() if k.startswith(("vft/", "loss/vft"))} if last else {}
    return summary


def bench_train(args: argparse.Namespace) -> None:
    steps = args.max_epochs * args.steps_per_epoch
    t_base, t_vft, ratio = step_time_ratio(args)
    spe_equal_time = max(1, round(args.steps_per_epoch / ratio))
    how = "all three at once (equal load)" if args.parallel else "one after the other"
    print(
        f"\n== val_bpb: default model vs TVA + VFT (vft defaults), {args.max_epochs} x {args.steps_per_epoch} steps =="
    )
    print(f"interleaved step time: default {t_base * 1e3:.0f} ms, TVA+VFT {t_vft * 1e3:.0f} ms (medians); "
          f"TVA+VFT / default per pair: {ratio:.2f}; equal wall time = {args.max_epochs} x {spe_equal_time} steps "
          f"of TVA+VFT; runs {how}")  # fmt: skip
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-vft-"))
    out.mkdir(parents=True, exist_ok=True)
    runs = [
        ("default", ["--no-plugins", *_flags(_schedule_sets(args, args.steps_per_epoch))]),
        (
            "tva+vft, equal steps",
            ["--plugins", "vft", *_flags([*_schedule_sets(args, args.steps_per_epoch), *VFT_SETS])],
        ),
        ("tva+vft, equal time", ["--plugins", "vft", *_flags([*_schedule_sets(args, spe_equal_time), *VFT_SETS])]),
    ]
    procs: list[subprocess.Popen[bytes]] = []
    for i, (_, extra) in enumerate(runs):
        procs.append(_start(out / f"run{i}", extra))
        if not args.parallel:
            procs[-1].wait(timeout=args.run_timeout)
    for proc in procs:
        if proc.wait(timeout=args.run_timeout) != 0:
            raise SystemExit(f"training run failed: {' '.join(str(a) for a in proc.args)}")  # type: ignore[union-attr]
    results = [(name, _result(out / f"run{i}")) for i, (name, _) in enumerate(runs)]
    for name, s in results:
        print(f"  {name:<22} steps {s['steps']:>4}  params {s['params']:>8}  wall {s['wall_s']:7.1f} s  "
              f"val_bpb {s['val_bpb']:.4f}  (unigram {s['baseline_bpb']:.4f})")  # fmt: skip
        if s["vft_last"]:
            print("    last logged:", ", ".join(f"{k} {v:.4f}" for k, v in sorted(s["vft_last"].items())))
    base_bpb = results[0][1]["val_bpb"]
    for name, s in results[1:]:
        print(f"  {name}: val_bpb {s['val_bpb']:.4f} vs default {base_bpb:.4f} ({s['val_bpb'] / base_bpb - 1:+.1%})")
    print(f"  ({steps} steps is {'the default run' if steps == 400 else 'a shortened schedule'}; runs in {out})")


def _flags(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["attention", "train", "all"], default="all")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--seq", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--tokens", type=int, default=4096, help="tokens per batch (B = tokens / T)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-epochs", type=int, default=2, help="training runs: epochs (default run: 2)")
    p.add_argument("--steps-per-epoch", type=int, default=200, help="training runs: steps per epoch (default: 200)")
    p.add_argument("--step-repeats", type=int, default=8, help="interleaved steps timed for the step-time ratio")
    p.add_argument("--run-timeout", type=float, default=3600.0, help="seconds allowed per training run")
    p.add_argument("--out", help="folder for the training runs (default: a temporary folder)")
    p.add_argument("--parallel", action="store_true", help="start the three training runs at once (shared machines)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("attention", "all"):
        bench_attention(args)
    if args.part in ("train", "all"):
        bench_train(args)


if __name__ == "__main__":
    main()
