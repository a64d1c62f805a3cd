"""Sparse upcycling (Komatsuzaki et al. 2022, arXiv 2212.05055) and expert stacking.

A dense FFN becomes an MoE whose E experts all start as exact copies of it. Because the
k gates of a token are renormalised to sum to 1, ``sum_j g_j * expert(x) = expert(x)``
whatever the router says: right after upcycling (dropless) the layer computes what the
dense FFN computed, up to float rounding. The router starts near zero so that routing is
close to uniform and the experts diverge only as the router learns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from apt.model import MLP
from apt.model import SwiGLU
from torch import nn

from apt_plugin_moe._experts import ExpertActivation
from apt_plugin_moe._experts import ModuleExperts
from apt_plugin_moe._experts import StackedExperts
from apt_plugin_moe._layer import MoELayer
from apt_plugin_moe._router import TopKRouter


__all__ = ["ROUTER_INIT_STD", "stack_ffns", "upcycle_ffn"]

#: Std of the router weights after upcycling: logits ~1e-3 * |x|, i.e. almost uniform routing.
ROUTER_INIT_STD = 1e-3


def stack_ffns(ffns: Sequence[nn.Module]) -> StackedExperts | None:
    """Copy E core FFN modules (``apt.model.MLP`` or ``apt.model.SwiGLU``) into one :class:`StackedExperts`.

    Expert e computes exactly what ``ffns[e]`` computes (dropout aside). Returns ``None``
    when the modules are not all core MLPs or all core SwiGLUs of one shape. The types must
    be exactly ``MLP`` / ``SwiGLU``: a subclass may override ``forward`` (another activation,
    extra terms), and only the weights would be copied, so it is not stacked.
    """
    kind = type(ffns[0])
    if kind not in (MLP, SwiGLU) or not all(type(f) is kind for f in ffns):
        return None
    cores: list[MLP | SwiGLU] = [f for f in ffns if isinstance(f, (MLP, SwiGLU))]  # all of them (narrows the type)
    first = cores[0]
    fc, proj = first.c_fc, first.c_proj
    d_model, bias = fc.in_features, fc.bias is not None
    swiglu = isinstance(first, SwiGLU)
    d_ff = proj.in_features
    bank = StackedExperts(len(ffns), d_model, d_ff, "swiglu" if swiglu else "gelu", bias)
    bank.to(device=fc.weight.device, dtype=fc.weight.dtype)
    with torch.no_grad():
        for e, f in enumerate(cores):
            # MLP.c_fc (F, D) and SwiGLU.c_fc (2F, D) = [gate | up] have exactly the layout of w1[e]
            bank.w1[e].copy_(f.c_fc.weight)
            bank.w2[e].copy_(f.c_proj.weight)  # (D, F)
            if bias:
                assert bank.b1 is not None and bank.b2 is not None
                assert f.c_fc.bias is not None and f.c_proj.bias is not None
                bank.b1[e].copy_(f.c_fc.bias)
                bank.b2[e].copy_(f.c_proj.bias)
    return bank


def upcycle_ffn(
    ffn: nn.Module,
    *,
    num_experts: int,
    top_k: int,
    capacity_factor: float | None = None,
    jitter: float = 0.0,
    shared_experts: int = 0,
    dispatch: str = "auto",
    generator: torch.Generator | None = None,
) -> MoELayer:
    """An MoE layer whose experts are copies of the dense ``ffn``; same output when dropless.

    Core FFNs (exactly ``MLP`` or ``SwiGLU``, not subclasses) become :class:`StackedExperts`
    (fast dispatch) and the layer applies the FFN's ``dropout`` after combining the experts;
    any other module is deep-copied into :class:`ModuleExperts`, whose copies keep their own
    dropout, and the layer adds none. Shared experts, if any, start with a zero output
    projection so that they add nothing at first.

    :param generator: seeds the router init (for reproducible upcycling).
    """
    weight = next(ffn.parameters())
    device, dtype = weight.device, weight.dtype
    stacked = stack_ffns([ffn] * num_experts)
    bank: StackedExperts | ModuleExperts
    activation: ExpertActivation
    dropout = 0.0
    if stacked is None:
        # an unknown FFN: copies of the module; shapes for shared experts are guessed from its first weight.
        # Each copy still applies whatever dropout the module has inside, so the layer must add none
        # (dropout 0.0), or training would drop twice.
        bank = ModuleExperts(ffn, num_experts)
        d_model, d_ff, activation, bias = weight.shape[-1], weight.shape[0], "gelu", False
    else:
        bank = stacked
        d_model, d_ff, activation, bias = bank.d_model, bank.d_ff, bank.activation, bank.b1 is not None
        # the stack holds only the weights: the core FFN's output dropout moves to the layer
        drop = getattr(ffn, "dropout", None)
        dropout = drop.p if isinstance(drop, nn.Dropout) else 0.0

    router = TopKRouter(d_model, num_experts, top_k, jitter)
    with torch.no_grad():
        w = torch.randn(router.gate.weight.shape, generator=generator) * ROUTER_INIT_STD
        router.gate.weight.copy_(w)
    layer = MoELayer(
        d_model,
        d_ff,
        num_experts=num_experts,
        top_k=top_k,
        expert_ffn=activation,
        bias=bias,
        dropout=dropout,
        capacity_factor=capacity_factor,
        jitter=jitter,
        shared_experts=shared_experts,
        dispatch=dispatch,
        experts=bank,
        router=router,
    )
    if layer.shared is not None:
        with torch.no_grad():
            layer.shared.w2.zero_()
            if layer.shared.b2 is not None:
                layer.shared.b2.zero_()
    return layer.to(device=device, dtype=dtype)
