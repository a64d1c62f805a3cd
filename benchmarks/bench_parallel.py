"""DDP against FSDP2 under torchrun: training throughput side by side, on the same model and global batch.

Each round launches ``torchrun --nproc_per_node=N -m apt train`` once with
``training.distributed=ddp`` and once with ``fsdp`` (order alternating), with no plugin,
and reads the tokens per second the trainer logs for every step. The first ``--warmup``
steps of a run are left out, the median of the rest is that run's figure, and the best
run of each mode is compared (load only ever slows a run down). One process with the same
global batch runs too, as the reference.

    python benchmarks/bench_parallel.py [--nproc 2] [--steps 30] [--rounds 2] [--set model.d_model=256 ...]

On CPU (gloo) FSDP2 pays an all-gather per block in the forward and in the backward and a
reduce-scatter per block, where DDP pays one all-reduce per bucket: expect it below DDP.
Its gain is memory (each rank keeps 1/N of the parameters, gradients and Adam state),
which this script does not measure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def tokens_per_s(run_dir: Path, warmup: int) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r and r["step"] > warmup]
    return statistics.median(speeds)


def run(mode: str, args: argparse.Namespace, workdir: Path, index: int) -> float:
    run_dir = workdir / f"{mode}-{index}"
    sets = [
        f"training.steps_per_epoch={args.steps}", "training.max_epochs=1", "training.log_interval=1",
        f"training.val_interval={args.steps + 1}", "training.val_batches=1", *args.set,
    ]  # fmt: skip
    if mode == "single":
        launcher = [sys.executable, "-m", "apt"]
        sets.append(f"training.batch_size={args.batch_size * args.nproc}")
    else:
        launcher = [
            shutil.which("torchrun") or "torchrun",
            "--standalone",
            f"--nproc_per_node={args.nproc}",
            "-m",
            "apt",
        ]
        sets += [f"training.distributed={mode}", f"training.batch_size={args.batch_size}"]
    command = [*launcher, "train", "--no-plugins", "--run-dir", str(run_dir)]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, capture_output=True, env=env)
    return tokens_per_s(run_dir, args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="per process")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args()

    best: dict[str, float] = {"ddp": 0.0, "fsdp": 0.0, "single": 0.0}
    with tempfile.TemporaryDirectory(prefix="apt-bench-parallel-") as tmp:
        for i in range(args.rounds):
            order = ["ddp", "fsdp", "single"] if i % 2 == 0 else ["fsdp", "ddp", "single"]
            for mode in order:
                speed = run(mode, args, Path(tmp), i)
                best[mode] = max(best[mode], speed)
                print(f"round {i + 1} {mode:6s} {speed:10.0f} tokens/s", flush=True)
    print(f"\n{args.nproc} processes, {args.batch_size} sequences each; one process with the same global batch")
    for mode, speed in best.items():
        print(f"{mode:6s} {speed:10.0f} tokens/s (best run)")
    print(f"fsdp / ddp    = {best['fsdp'] / best['ddp']:.3f}")
    print(f"ddp / single  = {best['ddp'] / best['single']:.3f}")
    print(f"fsdp / single = {best['fsdp'] / best['single']:.3f}")


if __name__ == "__main__":
    main()
