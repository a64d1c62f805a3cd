"""``apt generate``: sample text from a trained run's model."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from apt.errors import CheckpointError
from apt.errors import UsageError


__all__ = ["InferenceHost", "last_schedule_point", "load_run_model", "register", "run_tokenizer"]


def register(subparsers: Any) -> None:
    """Add the ``generate`` command."""
    p = subparsers.add_parser(
        "generate",
        help="sample text from a trained run",
        description="Sample text from RUN_DIR's model (config.yaml + model.safetensors).",
    )
    p.add_argument("--run", type=Path, required=True, metavar="RUN_DIR", help="a run folder written by apt train")
    p.add_argument("--prompt", default="", help="text to continue (default: empty)")
    p.add_argument("--max-new-tokens", type=int, default=200, metavar="N")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None, metavar="K")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument(
        "--weights", metavar="NAME", help="a 'weights' provider to take weights from (e.g. align's 'stable')"
    )
    p.add_argument(
        "--retrieval",
        action="store_true",
        help="mix a kNN-LM into each next-token distribution (the run's 'logprobs:retrieval' provider, "
        "from apt-plugin-retrieval)",
    )
    p.set_defaults(func=run)


@dataclass
class InferenceHost:
    """What plugins see as ``trainer`` while a model is rebuilt outside training.

    A :class:`~apt.plugins.TrainerView` of one process with no optimizer and no data:
    plugins change the model through it as they do in training.
    """

    config: Any
    plugin_manager: Any
    model: Any = None
    run_dir: Path | None = None
    epoch: int = 0
    global_step: int = 0
    step_in_epoch: int = 0
    rank: int = 0
    world_size: int = 1
    is_global_zero: bool = True
    is_distributed: bool = False
    parallelism: str = "single"
    optimizer: Any = None
    lr_scheduler: Any = None
    device: Any = field(default="cpu")
    dtype: Any = None
    val_batches: list[Any] = field(default_factory=list)
    tokenizer: Any = None  # the run's tokenizer (its tokenizer.json; byte for older runs)
    data: None = None  # the run's data is not loaded outside training
    stop_reason: str | None = None  # nothing stops outside training

    @property
    def schedule(self) -> Any:
        return self.plugin_manager.schedule

    def sync_optimizer(self) -> None:
        """No optimizer outside training."""

    def skip_optimizer_step(self, reason: str) -> None:
        """No optimizer step outside training."""

    def request_stop(self, reason: str, source: str | None = None) -> None:
        """Nothing to stop outside training."""

    def all_reduce_sum(self, t: Any) -> Any:
        return t  # one process

    def all_reduce_mean(self, t: Any) -> Any:
        return t

    def check_fingerprint(self, saved: dict[str, Any] | None, strict: bool = False) -> list[str]:
        return list(self.plugin_manager.check_fingerprint(saved, strict=strict))

    def state_dict(self) -> dict[str, Any]:
        """The model's weights: there is no training state outside training."""
        return {"model": self.model.state_dict() if self.model is not None else {}}


def last_schedule_point(run_dir: Path, max_epochs: int, total_steps: int) -> tuple[int, int]:
    """``(epoch, step)`` at which the run applied its schedule for the last time.

    That is the start of its last step: ``summary.json`` says where the run ended, which is
    before the configured end when it stopped early. Without a summary: the configured end.
    """
    import json

    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        steps, epochs = int(summary["steps"]), int(summary["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        steps, epochs = total_steps, max_epochs
    return max(epochs - 1, 0), max(steps - 1, 0)


def run_tokenizer(run_dir: Path) -> Any:
    """The tokenizer a run trained with: its ``tokenizer.json``, or bytes for runs from before it was saved."""
    from apt.data import ByteTokenizer
    from apt.data import load_tokenizer

    saved = run_dir / "tokenizer.json"
    return load_tokenizer(saved) if saved.is_file() else ByteTokenizer()


def load_run_model(run_dir: Path, weights: str | None = None) -> tuple[Any, Any]:
    """Rebuild the model of ``run_dir`` as it was at the end of training and load its weights.

    The run's plugins are loaded again (``config.yaml``), ``on_model_built`` fires and
    every scheduled plugin is brought to its state at the run's last step (``summary.json``;
    a run may have stopped early), so plugin-made layers (MoE experts) exist before the
    weights load.

    :returns: ``(model, plugin_manager)``; the model is in eval mode on the CPU.
    """
    import torch

    from apt.core import APTConfig
    from apt.model import GPT
    from apt.plugins import PluginManager
    from apt.train import load_weights

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UsageError(
            f"{str(run_dir)!r} is not a run folder: it has no config.yaml (give the folder apt train made)"
        )
    config = APTConfig.from_yaml(cfg_path)
    config.training.resume = None
    pm = PluginManager()
    pm.load_from_config(config)
    pm.setup_all()
    tc = config.training
    host = InferenceHost(config=config, plugin_manager=pm, run_dir=run_dir, device=torch.device("cpu"))
    host.tokenizer = run_tokenizer(run_dir)
    pm.apply_schedule(host, epoch=0, step=0)
    torch.manual_seed(tc.seed)
    host.model = GPT(config.model, pm.registry)
    for replacement in pm.hook_manager.trigger("on_model_built", trainer=host, model=host.model, config=config):
        host.model = replacement
    host.epoch, host.global_step = last_schedule_point(run_dir, tc.max_epochs, tc.total_steps)
    pm.apply_schedule(host, epoch=host.epoch, step=host.global_step)
    if weights is not None:
        if "weights" not in pm.registry.kinds() or not pm.registry.has("weights", weights):
            names = pm.registry.list_providers("weights") if "weights" in pm.registry.kinds() else []
            raise UsageError(
                f"--weights {weights!r}: no 'weights' provider of that name; available: {', '.join(names) or 'none'} "
                "(providers come from the run's plugins)"
            )
        load_weights(host.model, pm.registry.build("weights", weights, run_dir=run_dir))
    else:
        path = run_dir / "model.safetensors"
        if not path.is_file():
            raise CheckpointError(
                f"{str(path)!r} does not exist: the run did not finish (apt train writes it at the end)", path=str(path)
            )
        load_weights(host.model, path)
    host.model.eval()
    return host.model, pm


def run(args: argparse.Namespace) -> int:
    import torch

    from apt.data import ByteTokenizer

    if args.max_new_tokens < 0 or (args.top_k is not None and args.top_k <= 0):
        raise UsageError("--max-new-tokens must be >= 0 and --top-k > 0")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UsageError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed must be in [0, 2**63), got {args.seed}")
    model, pm = load_run_model(args.run, args.weights)
    logprobs_fn = None
    try:
        if args.retrieval:
            logprobs_fn = _logprobs_provider(pm, "retrieval", model, args.run)
        tok = run_tokenizer(args.run)
        if isinstance(tok, ByteTokenizer):
            ids = tok.encode(args.prompt) or [ord("\n")]  # an empty prompt starts a new line
        else:  # an empty prompt starts a new document
            ids = tok.encode(args.prompt) or ([tok.eos_id] if tok.eos_id is not None else tok.encode("\n"))
        idx = torch.tensor([ids], dtype=torch.long)  # (1, T)
        generator = torch.Generator().manual_seed(args.seed)
        out = model.generate(
            idx,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            generator=generator,
            vocab_limit=tok.vocab_size,  # a padded vocabulary's extra ids are no tokens
            logprobs_fn=logprobs_fn,
        )
        print(tok.decode(out[0].tolist()))
    finally:
        close = getattr(logprobs_fn, "close", None)
        if close is not None:
            close()
        pm.teardown_all()
    return 0


def _logprobs_provider(pm: Any, name: str, model: Any, run_dir: Path) -> Any:
    """Build the ``logprobs:NAME`` provider of the run's plugins (see ``GPT.generate``'s ``logprobs_fn``).

    A provider of kind ``logprobs`` is a factory ``(model, run_dir) -> fn`` where
    ``fn(idx, logprobs) -> logprobs`` adjusts each next-token distribution; if ``fn`` has a
    ``close()`` method it is called after sampling.
    """
    if "logprobs" not in pm.registry.kinds() or not pm.registry.has("logprobs", name):
        raise UsageError(
            f"--{name}: no 'logprobs' provider {name!r} among the run's plugins; train the run with the "
            f"{name} plugin (pip install apt-plugin-{name}; plugins: [{name}])"
        )
    return pm.registry.build("logprobs", name, model=model, run_dir=run_dir)
