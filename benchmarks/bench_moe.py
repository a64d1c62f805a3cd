"""Forward + backward throughput of the MoE layer relative to a dense FFN of the same active FLOPs.

The dense baseline is the core FFN (``apt.model.MLP`` or ``SwiGLU``) of width ``top_k * d_ff``:
per token it does the same matmul FLOPs as the MoE's k experts of width ``d_ff``. Every
variant runs on the same input in one process; repeats are interleaved (dense, loop,
sliced, grouped_mm, dense, ...) so that load from other processes hits all of them alike,
and the median is reported. ``ratio = dense_time / variant_time`` (1.0 = as fast as dense);
``TFLOP/s`` counts the matmul FLOPs of one fwd+bwd (the same for every variant) over the median time. The
ratio of the fastest repeats is printed too: on a shared, oversubscribed CPU every op can lose a
time slice at its thread barrier, which hurts the MoE's ~10x more (smaller) ops more than the dense
FFN's few big ones; the minimum is the least disturbed estimate.

CPU target (4096 tokens, d 256, d_ff 1024, 8 experts, top-2): ratio >= 0.9.
GPU (bf16): ``benchmarks/gpu_moe.sh``.

    python benchmarks/bench_moe.py                       # CPU defaults, 2 threads
    python benchmarks/bench_moe.py --device cuda --dtype bf16 --tokens 16384 --d-model 1024 --d-ff 4096
    python benchmarks/bench_moe.py --profile 15 --trace-dir /tmp/moe_traces   # where the time goes

``--profile N`` then runs one more fwd+bwd of the dense FFN and of each explicit fast dispatch under
``torch.profiler`` and prints its N most expensive ops (self device time on CUDA, self CPU
time on CPU); ``--trace-dir`` also saves each as a Chrome trace (open in Perfetto).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from apt.model import MLP
from apt.model import SwiGLU
from apt_plugin_moe import MoELayer
from apt_plugin_moe import StackedExperts
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None
    y = module(x)
    y.backward(grad)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--activation", choices=["gelu", "swiglu"], default="gelu")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU runs)")
    p.add_argument("--no-loop", action="store_true", help="skip the slow per-expert mask loop baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest ops of each variant")
    p.add_argument("--trace-dir", type=Path, help="with --profile: save a Chrome trace per variant here")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    n, d, f, e, k = args.tokens, args.d_model, args.d_ff, args.experts, args.top_k

    dense_cls = MLP if args.activation == "gelu" else SwiGLU
    dense = dense_cls(d, k * f).to(device=device, dtype=dtype)
    moe = MoELayer(d, f, num_experts=e, top_k=k, expert_ffn=args.activation).to(device=device, dtype=dtype)
    moe.train()
    x = torch.randn(1, n, d, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(1, n, d, device=device, dtype=dtype)

    def moe_with(dispatch: str) -> Callable[[], None]:
        def run() -> None:
            moe.dispatch = dispatch
            _step(moe, x, grad)

        return run

    variants: dict[str, Callable[[], None]] = {"dense": lambda: _step(dense, x, grad)}
    if not args.no_loop:
        variants["loop"] = moe_with("loop")
    variants["sliced"] = moe_with("sliced")
    assert isinstance(moe.experts, StackedExperts)
    if moe.experts.grouped_ok(dtype):
        variants["grouped_mm"] = moe_with("grouped_mm")
    variants["auto"] = moe_with("auto")

    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.warmup):
        for fn in variants.values():
            fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)

    with torch.no_grad():
        r = moe.router(x.detach().reshape(-1, d))
        load = torch.bincount(r.experts.flatten(), minlength=e).float() / (n * k)
    backend_auto = moe.backend(x.reshape(-1, d))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} threads"
    print(
        f"MoE fwd+bwd vs dense FFN of width top_k*d_ff | tokens={n} d_model={d} d_ff={f} experts={e} top_k={k} "
        f"act={args.activation} dtype={args.dtype} device={where} torch={torch.__version__}"
    )
    print(f"router load (max/mean) = {float(load.max()) * e:.2f}; auto dispatch -> {backend_auto}")
    dense_t = statistics.median(times["dense"])
    dense_min = min(times["dense"])
    # matmul FLOPs of one fwd+bwd, the same for every variant: per token, k experts of (2 or 3) D x F
    # matrices; x2 for multiply-add, x3 for forward + the two backward products
    flops = 3 * 2 * n * k * f * d * (3 if args.activation == "swiglu" else 2)
    cols = ("median ms", 10), ("tokens/s", 12), ("ratio vs dense", 15), ("min ms", 9), ("ratio (min)", 12)
    cols += (("TFLOP/s", 8),)
    print(f"{'variant':<12} " + " ".join(f"{c:>{w}}" for c, w in cols))
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        print(
            f"{name:<12} {med * 1e3:>10.2f} {n / med:>12.0f} {dense_t / med:>15.3f} {best * 1e3:>9.2f} "
            f"{dense_min / best:>12.3f} {flops / med / 1e12:>8.2f}"
        )
    if args.profile:
        for name, fn in variants.items():
            if name not in ("loop", "auto"):  # auto is one of the others
                _profile(name, fn, device, args.profile, args.trace_dir)


def _profile(name: str, fn: Callable[[], None], device: torch.device, rows: int, trace_dir: Path | None) -> None:
    """One fwd+bwd of ``fn`` under the profiler: its ``rows`` costliest ops, optionally a Chrome trace."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n--- {name}: {rows} costliest ops by {sort_by} ---")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=rows))
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace_dir / f"moe_{name}.json"))


if __name__ == "__main__":
    main()
