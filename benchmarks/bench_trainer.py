"""Trainer overhead: steps per second of the Trainer divided by a bare hand-written PyTorch loop.

Three loops train the same model (the default config's GPT unless overridden) on the same
batches with the same optimizer, LR schedule and clipping, and each ends with the same
one-batch validation:

* ``bare``: a nanoGPT-style loop written by hand, no APT machinery;
* ``core``: ``Trainer.fit()`` with the plugin system on but no plugin loaded;
* ``plugins``: ``Trainer.fit()`` with 10 no-op plugins handling every event.

The three run interleaved in ``--rounds`` rounds (order rotated each round) in one
process, and the best (shortest) time of each is compared: machine load only ever adds
time, so the minimum is the least disturbed measurement. Targets: core / bare >= 0.97,
plugins / bare >= 0.95.

    python benchmarks/bench_trainer.py [--steps 40] [--rounds 5] [--threads 1] [--set model.d_model=256 ...]

On a machine shared with other jobs, ``--threads 1`` avoids torch's intra-op threads
waiting for each other, which otherwise makes every time noisy.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from apt.core import APTConfig
from apt.core import ProviderRegistry
from apt.data import BatchSource
from apt.data import TextDataset
from apt.data import validation_windows
from apt.model import GPT
from apt.plugins import HOOK_NAMES
from apt.plugins import Plugin
from apt.plugins import PluginManager
from apt.train import Trainer
from apt.train import build_adamw
from apt.train import build_cosine
from apt.train import param_groups


def make_config(steps: int, overrides: list[str], plugins: list[str]) -> APTConfig:
    config = APTConfig(plugins=plugins).with_overrides(
        [
            f"training.steps_per_epoch={steps}",
            "training.max_epochs=1",
            f"training.val_interval={steps + 1}",  # only the epoch-end validation
            "training.val_batches=1",
            "training.device=cpu",
            *overrides,
        ]
    )
    config.plugins = plugins
    return config


def bare_loop(config: APTConfig, data: TextDataset) -> float:
    """Seconds for a hand-written loop doing what the Trainer does (build, train, validate once)."""
    tc = config.training
    t0 = time.perf_counter()
    torch.manual_seed(tc.seed)
    model = GPT(config.model, ProviderRegistry())
    optimizer = build_adamw(param_groups(model, tc.weight_decay), tc)
    scheduler = build_cosine(optimizer, tc, tc.total_steps)
    batches = BatchSource(data.train, config.model.block_size, tc.batch_size, tc.grad_accum, seed=tc.seed)
    for _ in range(tc.steps_per_epoch):
        x, y = batches.next_step()
        loss = model(x, y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # what a loop reads to log its loss
    model.eval()
    with torch.no_grad():
        for xb, yb in validation_windows(data.val, config.model.block_size, tc.batch_size, tc.val_batches):
            model(xb, yb).loss.item()
    return time.perf_counter() - t0


def noop_plugin(i: int) -> type[Plugin]:
    """A plugin with a handler for every event that does nothing."""

    def handler(self: Plugin, **kwargs: Any) -> None:
        return None

    attrs: dict[str, Any] = {"name": f"noop{i}", "version": "1.0.0", "critical": False}
    attrs.update({event: handler for event in HOOK_NAMES})
    return type(f"Noop{i}", (Plugin,), attrs)


NOOPS = [noop_plugin(i) for i in range(10)]


def trainer_loop(config: APTConfig, n_plugins: int) -> float:
    """Seconds of ``Trainer.fit()`` (model building, training, validation) with ``n_plugins`` no-op plugins."""
    pm = PluginManager()
    for cls in NOOPS[:n_plugins]:
        pm.register_plugin(str(cls.name), cls)
    pm.load_from_config(config)
    trainer = Trainer(config, pm)  # loads the corpus: outside the timing, as for the bare loop
    t0 = time.perf_counter()
    trainer.fit()
    elapsed = time.perf_counter() - t0
    pm.teardown_all()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best times are compared")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    names = [f"noop{i}" for i in range(10)]
    configs = {
        "bare": make_config(args.steps, args.overrides, []),
        "core": make_config(args.steps, args.overrides, []),
        "plugins": make_config(args.steps, args.overrides, names),
    }
    data = TextDataset.from_config(configs["bare"])
    runs = {
        "bare": lambda: bare_loop(configs["bare"], data),
        "core": lambda: trainer_loop(configs["core"], 0),
        "plugins": lambda: trainer_loop(configs["plugins"], 10),
    }
    m = configs["bare"].model
    print(
        f"model: {m.n_layer} layers, d_model {m.d_model}, block {m.block_size}, batch "
        f"{configs['bare'].training.batch_size}; {args.steps} steps x {args.rounds} rounds; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    # warm-up: allocator, kernels, lazy imports
    bare_loop(make_config(3, args.overrides, []), data)
    trainer_loop(make_config(3, args.overrides, names), 10)

    seconds: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    for r in range(args.rounds):
        for key in order[r % 3 :] + order[: r % 3]:
            seconds[key].append(runs[key]())
    rate = {k: args.steps / min(v) for k, v in seconds.items()}
    for key in runs:
        print(f"{key:8s} {rate[key]:7.3f} steps/s   (runs: {', '.join(f'{s:.2f}s' for s in seconds[key])})")
    core, plugins = rate["core"] / rate["bare"], rate["plugins"] / rate["bare"]
    print(f"core / bare    = {core:.3f}   (target >= 0.97) {'ok' if core >= 0.97 else 'BELOW TARGET'}")
    print(f"plugins / bare = {plugins:.3f}   (target >= 0.95) {'ok' if plugins >= 0.95 else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
