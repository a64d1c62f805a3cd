"""APT plugin system demo: one plugin through its whole life.

Run it with ``python examples/example_plugin.py`` (apt-core installed). It

1. registers a plugin class with the global ``plugin_manager``,
2. loads it from an ``APTConfig`` (its pydantic config section is validated),
3. sets it up (it registers an attention provider; its lifecycle methods become hooks),
4. lists the providers it registered,
5. builds the provider and runs a forward pass,
6. simulates a training lifecycle by triggering events (with a conditional hook),
7. prints the hook statistics the kernel keeps for every handler, and
8. tears everything down.

The numbered sections are those of the original project's demo.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from apt.core import APTConfig
from apt.plugins import Plugin
from apt.plugins import every_n_epochs
from apt.plugins import hook_manager
from apt.plugins import plugin_manager
from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field


EPOCHS = 5
STEPS_PER_EPOCH = 4


class ExampleAttention(nn.Module):
    """Causal multi-head self-attention, the provider this plugin contributes.

    Factory signature of kind ``attention`` (see the guide): keyword arguments
    ``d_model, n_head, block_size, dropout, bias``; maps ``(B, T, C) -> (B, T, C)``.
    """

    def __init__(self, d_model: int, n_head: int, block_size: int, dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        assert d_model % n_head == 0, f"d_model {d_model} must be divisible by n_head {n_head}"
        self.d_model, self.n_head, self.dropout = d_model, n_head, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        out: torch.Tensor = self.proj(y)  # (B, T, C)
        return out

    def __repr__(self) -> str:
        return f"ExampleAttention(d_model={self.d_model}, heads={self.n_head})"


class ExampleConfig(BaseModel):
    """The plugin's config section (``example:`` in a YAML config), validated before setup."""

    model_config = ConfigDict(extra="forbid")

    log_every: int = Field(2, gt=0, description="Print the mean loss every N steps.")


class ExamplePlugin(Plugin):
    """Registers an attention provider and follows the training lifecycle."""

    name = "example"
    version = "1.0.0"
    description = "Demo plugin: an attention provider and a few lifecycle hooks."
    providers = ("attention:example",)
    config_model = ExampleConfig
    critical = False  # an error in a hook disables this plugin instead of stopping the run

    def __init__(self, config: ExampleConfig | None = None) -> None:
        super().__init__(config)  # validated once, by the plugin manager (or here from None: the defaults)
        self.losses: list[float] = []

    def setup(self, registry: Any, hook_manager: Any) -> None:
        super().setup(registry, hook_manager)
        registry.register("attention", "example", ExampleAttention)

    def teardown(self) -> None:
        self.losses.clear()

    # Lifecycle methods are registered as hooks automatically; each takes the arguments
    # it needs by name and ignores the rest through **kwargs.
    def on_train_begin(self, **kwargs: Any) -> None:
        print("   [example] training begins")

    def on_epoch_start(self, epoch: int, **kwargs: Any) -> None:  # the original's alias of on_epoch_begin
        print(f"   [example] epoch {epoch} started")

    def on_step_end(self, step: int, loss: float, **kwargs: Any) -> dict[str, float] | None:
        self.losses.append(loss)
        if (step + 1) % self.config.log_every == 0:
            recent = self.losses[-self.config.log_every :]
            return {"example/mean_loss": sum(recent) / len(recent)}
        return None

    def on_epoch_end(self, epoch: int, metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        print(f"   [example] epoch {epoch} ended: {metrics}")

    def on_train_end(self, step: int, **kwargs: Any) -> None:
        print(f"   [example] training ended after {step} steps")


def main() -> None:
    print("APT Plugin System Demo")
    print("=" * 60)

    print("1. Registering plugin...")
    plugin_manager.register_plugin("example", ExamplePlugin)
    print("   ✓ Plugin registered")

    print("\n2. Loading plugin...")
    plugin_manager.load_from_config(APTConfig(plugins=["example"], example={"log_every": 2}))
    plugin = plugin_manager.get_plugin("example")
    print(f"   ✓ Plugin loaded: {plugin!r}")

    print("\n3. Setting up plugin...")
    plugin_manager.setup_all()
    print("   ✓ Plugin setup complete")

    print("\n4. Checking providers...")
    registry = plugin_manager.registry
    mine: dict[str, list[str]] = {}
    for kind, names in registry.list_providers().items():  # type: ignore[union-attr]
        for name in names:
            if registry.get_info(kind, name)["plugin"] == "example":
                mine.setdefault(kind, []).append(name)
    print(f"   Registered providers: {mine}")

    print("\n5. Testing provider...")
    torch.manual_seed(0)
    layer = registry.build("attention", "example", d_model=512, n_head=8, block_size=64, dropout=0.0, bias=False)
    print(f"   ✓ Created layer: {layer!r}")
    x = torch.randn(2, 16, 512)  # (B, T, C)
    y = layer(x)  # (B, T, C)
    print(f"   ✓ Forward pass: {tuple(x.shape)} -> {tuple(y.shape)}")

    print("\n6. Simulating training lifecycle...")
    saved: list[int] = []

    def save_checkpoint(epoch: int, **kwargs: Any) -> None:
        saved.append(epoch)

    # A plain function as a hook, run only every second epoch (epochs 1 and 3 of 0..4).
    hook_manager.register("on_epoch_end", save_checkpoint, condition=every_n_epochs(2))
    step = 0
    plugin_manager.trigger_event("on_train_begin", epoch=0, step=0)
    for epoch in range(EPOCHS):
        plugin_manager.trigger_event("on_epoch_start", epoch=epoch, step=step)
        for _ in range(STEPS_PER_EPOCH):
            plugin_manager.trigger_event("on_step_start", epoch=epoch, step=step)
            loss = 4.0 * math.exp(-0.1 * step)  # a stand-in for a real loss curve
            results = plugin_manager.trigger_event("on_step_end", epoch=epoch, step=step, loss=loss, metrics={})
            for metrics in filter(None, results):
                print(f"   step {step}: {metrics}")
            step += 1
        plugin_manager.trigger_event("on_epoch_end", epoch=epoch, step=step, metrics={"train_loss": round(loss, 4)})
    plugin_manager.trigger_event("on_train_end", epoch=EPOCHS - 1, step=step, metrics={})
    print(f"   checkpoints saved at epochs: {saved}")

    print("\n7. Hook statistics:")
    for event, stats in hook_manager.get_stats().items():
        print(f"   {event}: {stats['calls']} executions")
        for h in stats["handlers"]:
            who = f"{h['plugin']}:{h['handler']}" if h["plugin"] else h["handler"]
            skipped = f", {h['skipped']} skipped by condition" if h["skipped"] else ""
            print(f"      {who}: {h['calls']} calls{skipped}, {h['errors']} errors, mean {h['mean_s'] * 1e6:.1f} µs")

    print("\n8. Teardown:")
    plugin_manager.teardown_all()
    hook_manager.unregister("on_epoch_end", save_checkpoint)
    plugin_manager.unload("example")
    print("   ✓ All plugins cleaned up")


if __name__ == "__main__":
    main()
