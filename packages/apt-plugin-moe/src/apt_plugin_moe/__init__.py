"""apt-plugin-moe: a fast, observable top-k Mixture-of-Experts FFN for APT.

``pip install apt-plugin-moe`` registers the plugin ``moe`` (entry point group
``apt.plugins``) with the providers ``router:topk``, ``ffn:moe``, ``plot:moe_load`` and ``hf_ffn:mixtral``
(``apt export`` / ``model.init_from`` of Mixtral checkpoints).
The building blocks are usable on their own::

    from apt_plugin_moe import MoELayer
    layer = MoELayer(d_model=256, d_ff=1024, num_experts=8, top_k=2)
    y = layer(x)                       # (B, T, 256) -> (B, T, 256)
    loss = loss + 0.01 * layer.last_balance + 0.001 * layer.last_z
"""

from __future__ import annotations

from apt_plugin_moe._config import MoEConfig
from apt_plugin_moe._dispatch import DispatchPlan
from apt_plugin_moe._dispatch import capacity_for
from apt_plugin_moe._dispatch import loop_moe
from apt_plugin_moe._dispatch import plan_dispatch
from apt_plugin_moe._dispatch import sorted_moe
from apt_plugin_moe._experts import ModuleExperts
from apt_plugin_moe._experts import StackedExperts
from apt_plugin_moe._experts import grouped_mm_available
from apt_plugin_moe._layer import MoELayer
from apt_plugin_moe._losses import router_entropy
from apt_plugin_moe._losses import router_z_loss
from apt_plugin_moe._losses import switch_load_balancing_loss
from apt_plugin_moe._metrics import reduce_moe_stats
from apt_plugin_moe._mixtral import MixtralConverter
from apt_plugin_moe._mixtral import from_mixtral_state_dict
from apt_plugin_moe._mixtral import to_mixtral_state_dict
from apt_plugin_moe._plot import plot_expert_load
from apt_plugin_moe._plugin import MoEPlugin
from apt_plugin_moe._plugin import moe_layers
from apt_plugin_moe._router import RouterOutput
from apt_plugin_moe._router import TopKRouter
from apt_plugin_moe._upcycle import stack_ffns
from apt_plugin_moe._upcycle import upcycle_ffn


__all__ = [
    "DispatchPlan",
    "MixtralConverter",
    "MoEConfig",
    "MoELayer",
    "MoEPlugin",
    "ModuleExperts",
    "RouterOutput",
    "StackedExperts",
    "TopKRouter",
    "capacity_for",
    "from_mixtral_state_dict",
    "grouped_mm_available",
    "loop_moe",
    "moe_layers",
    "plan_dispatch",
    "plot_expert_load",
    "reduce_moe_stats",
    "router_entropy",
    "router_z_loss",
    "sorted_moe",
    "stack_ffns",
    "switch_load_balancing_loss",
    "to_mixtral_state_dict",
    "upcycle_ffn",
]
