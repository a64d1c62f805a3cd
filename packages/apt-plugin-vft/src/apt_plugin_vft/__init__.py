"""apt-plugin-vft: Tri-Vein attention and the Vein-Flow feed-forward for APT.

``pip install apt-plugin-vft`` registers the plugin ``vft`` (entry point group
``apt.plugins``) with the providers ``attention:tva`` and ``ffn:vft``; choose them with
``model.attention: tva`` and ``model.ffn: vft``. The modules are usable on their own::

    from apt_plugin_vft import TriVeinAttention, VeinFlowFFN
    attn = TriVeinAttention(d_model=256, n_head=4, block_size=512, rank=16)
    y = attn(x)                        # (B, T, 256) -> (B, T, 256), causal
    ffn = VeinFlowFFN(d_model=256, rank=32, hidden=128, tau=0.95)
"""

from __future__ import annotations

from apt_plugin_vft._attention import TriVeinAttention
from apt_plugin_vft._config import VFTConfig
from apt_plugin_vft._ffn import VeinFlowFFN
from apt_plugin_vft._plugin import TAU_SCHEDULE
from apt_plugin_vft._plugin import VFTPlugin
from apt_plugin_vft._plugin import vein_modules
from apt_plugin_vft._vein import off_manifold_rate
from apt_plugin_vft._vein import orthogonality_error
from apt_plugin_vft._vein import orthonormal_rows


__all__ = [
    "TAU_SCHEDULE",
    "TriVeinAttention",
    "VFTConfig",
    "VFTPlugin",
    "VeinFlowFFN",
    "off_manifold_rate",
    "orthogonality_error",
    "orthonormal_rows",
    "vein_modules",
]
