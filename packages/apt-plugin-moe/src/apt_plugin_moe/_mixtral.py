"""Weights to and from Hugging Face's ``MixtralSparseMoeBlock`` layout (transformers 4.x).

Mixtral block keys (relative to ``...block_sparse_moe.``)::

    gate.weight          (E, D)   router, no bias
    experts.{e}.w1.weight (F, D)  gate projection
    experts.{e}.w3.weight (F, D)  up projection
    experts.{e}.w2.weight (D, F)  down projection;  expert(x) = w2(silu(w1 x) * w3 x)

The routing convention that makes the outputs equal: softmax over the E logits (fp32),
top-k, renormalise the k gates to sum to 1, output = sum of gate * expert(x) — exactly
what :class:`~apt_plugin_moe.TopKRouter` does, so ``from_mixtral_state_dict`` with
``top_k = num_experts_per_tok`` and ``capacity_factor=None`` reproduces the block (in
fp32, up to float rounding; ties in top-k aside). Transformers v5 fuses the experts as
``experts.gate_up_proj (E, 2F, D)`` = ``cat([w1, w3], 1)`` and ``experts.down_proj (E, D, F)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from collections.abc import Mapping

import torch
from apt.errors import CheckpointError
from apt.errors import ConfigError
from torch import Tensor

from apt_plugin_moe._experts import StackedExperts
from apt_plugin_moe._layer import MoELayer


__all__ = ["MixtralConverter", "from_mixtral_state_dict", "to_mixtral_state_dict"]


def to_mixtral_state_dict(layer: MoELayer, prefix: str = "") -> dict[str, Tensor]:
    """The layer's router and experts as a Mixtral sparse-MoE block state dict (copies).

    :param prefix: prepended to every key, e.g. ``"model.layers.0.block_sparse_moe."``.
    :raises ConfigError: the layer is not Mixtral-shaped (needs SwiGLU experts without
        bias and no shared experts).
    """
    bank = layer.experts
    if not isinstance(bank, StackedExperts) or bank.activation != "swiglu" or bank.b1 is not None:
        raise ConfigError(
            "only SwiGLU experts without bias map onto Mixtral's block; build the layer with "
            "moe.expert_ffn='swiglu' and model.bias=false",
            key="moe.expert_ffn",
        )
    if layer.shared is not None:
        raise ConfigError("Mixtral's block has no shared experts; set moe.shared_experts=0", key="moe.shared_experts")
    f = bank.d_ff
    sd = {f"{prefix}gate.weight": layer.router.gate.weight.detach().clone()}
    for e in range(bank.num_experts):
        sd[f"{prefix}experts.{e}.w1.weight"] = bank.w1[e, :f].detach().clone()  # gate rows of the fused w1
        sd[f"{prefix}experts.{e}.w3.weight"] = bank.w1[e, f:].detach().clone()  # up rows
        sd[f"{prefix}experts.{e}.w2.weight"] = bank.w2[e].detach().clone()
    return sd


def _format_indices(indices: Iterable[int]) -> str:
    """Sorted indices with consecutive runs shortened: ``[0, 1, 2, 3, 5]`` -> ``"0..3, 5"``."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


def from_mixtral_state_dict(
    sd: Mapping[str, Tensor],
    *,
    top_k: int = 2,
    prefix: str = "",
    capacity_factor: float | None = None,
    jitter: float = 0.0,
    dispatch: str = "auto",
) -> MoELayer:
    """Build an :class:`~apt_plugin_moe.MoELayer` from a Mixtral sparse-MoE block state dict.

    The number of experts, ``d_model`` and ``d_ff`` are read from the tensors' shapes.

    :param top_k: Mixtral's ``num_experts_per_tok`` (2 for Mixtral-8x7B).
    :param prefix: the block's key prefix in ``sd``.
    :raises CheckpointError: a key is missing, a shape does not fit, or the experts under
        ``prefix + "experts."`` are not exactly ``0 .. E-1`` for the gate's E.
    """

    def get(key: str) -> Tensor:
        full = prefix + key
        if full not in sd:
            raise CheckpointError(
                f"Mixtral state dict has no key {full!r}; expected gate.weight and experts.{{e}}.w1/w2/w3.weight "
                f"under the prefix {prefix!r}",
                path=full,
            )
        return sd[full]

    gate = get("gate.weight")
    if gate.dim() != 2:
        raise CheckpointError(f"{prefix}gate.weight must be (E, D), got shape {tuple(gate.shape)}", path="gate.weight")
    num_experts, d_model = gate.shape
    # E comes from the gate; expert tensors beyond it (or gaps below it) mean gate and experts come from
    # different blocks or configs, and must not be dropped or left at their init silently
    pattern = re.compile(re.escape(prefix) + r"experts\.(\d+)\.")
    present = {int(m.group(1)) for key in sd if (m := pattern.match(key)) is not None}
    if present != set(range(num_experts)):
        extra, missing = present - set(range(num_experts)), set(range(num_experts)) - present
        problems = ([f"extra experts {_format_indices(extra)}"] if extra else []) + (
            [f"missing experts {_format_indices(missing)}"] if missing else []
        )
        held = f"experts {_format_indices(present)}" if present else "no experts"
        raise CheckpointError(
            f"the gate has {num_experts} experts ({prefix}gate.weight is {tuple(gate.shape)}) but the state dict "
            f"holds {held} under "
            f"{prefix + 'experts.'!r} ({'; '.join(problems)}); pass a state dict whose gate and experts agree",
            path=f"{prefix}gate.weight",
        )
    d_ff = get("experts.0.w1.weight").shape[0]
    layer = MoELayer(
        d_model,
        d_ff,
        num_experts=num_experts,
        top_k=top_k,
        expert_ffn="swiglu",
        bias=False,
        capacity_factor=capacity_factor,
        jitter=jitter,
        dispatch=dispatch,
    ).to(device=gate.device, dtype=gate.dtype)
    bank = layer.experts
    assert isinstance(bank, StackedExperts)
    expected = {"w1": (d_ff, d_model), "w3": (d_ff, d_model), "w2": (d_model, d_ff)}
    with torch.no_grad():
        layer.router.gate.weight.copy_(gate)
        for e in range(num_experts):
            targets = (("w1", bank.w1[e, :d_ff]), ("w3", bank.w1[e, d_ff:]), ("w2", bank.w2[e]))
            for name, target in targets:
                t = get(f"experts.{e}.{name}.weight")
                if tuple(t.shape) != expected[name]:
                    raise CheckpointError(
                        f"{prefix}experts.{e}.{name}.weight has shape {tuple(t.shape)}, expected {expected[name]} "
                        f"(E={num_experts}, D={d_model}, F={d_ff})",
                        path=f"{prefix}experts.{e}.{name}.weight",
                    )
                target.copy_(t)
    return layer


class MixtralConverter:
    """The ``hf_ffn:mixtral`` provider: MoE layers to and from Hugging Face Mixtral blocks.

    ``apt export`` writes a model whose every block is an :class:`MoELayer` (Llama shape
    otherwise) as ``MixtralForCausalLM`` in the layout ``save_pretrained`` writes
    (``block_sparse_moe.experts.{e}.w1/w2/w3``); ``model.init_from`` reads that layout and
    transformers 5's fused one (``mlp.gate.weight``, ``mlp.experts.gate_up_proj`` ``(E, 2F, D)``
    = ``cat([w1, w3], 1)``, ``mlp.experts.down_proj`` ``(E, D, F)``).
    """

    architecture = "mixtral"

    def claims(self, ffn: torch.nn.Module) -> bool:
        return isinstance(ffn, MoELayer)

    def config_fields(self, ffn: torch.nn.Module) -> dict[str, object]:
        """``num_local_experts``, ``num_experts_per_tok``, ``intermediate_size`` ...; ConfigError if it does not map."""
        assert isinstance(ffn, MoELayer)
        if ffn.capacity_factor is not None:
            raise ConfigError(
                f"Mixtral routes every token (dropless) but moe.capacity_factor is {ffn.capacity_factor}; dropped "
                "tokens would make the exported logits differ: set moe.capacity_factor: null",
                key="moe.capacity_factor",
            )
        to_mixtral_state_dict(ffn)  # refuses non-SwiGLU experts, biases and shared experts
        return {
            "num_local_experts": ffn.num_experts,
            "num_experts_per_tok": ffn.top_k,
            "intermediate_size": ffn.d_ff,
            "router_jitter_noise": float(ffn.router.jitter),
            "output_router_logits": False,
            "sliding_window": None,
        }

    def to_hf(self, ffn: torch.nn.Module, prefix: str) -> dict[str, Tensor]:
        assert isinstance(ffn, MoELayer)
        return to_mixtral_state_dict(ffn, prefix=prefix + "block_sparse_moe.")

    def load_hf(
        self, ffn: torch.nn.Module, weights: Mapping[str, Tensor], prefix: str, config: Mapping[str, object]
    ) -> None:
        """Copy one Mixtral layer's router and experts into ``ffn``; ConfigError naming the moe field that differs."""
        assert isinstance(ffn, MoELayer)
        want = {
            "moe.num_experts": (ffn.num_experts, config.get("num_local_experts")),
            "moe.top_k": (ffn.top_k, config.get("num_experts_per_tok")),
            "moe.d_ff": (ffn.d_ff, config.get("intermediate_size")),
        }
        for key, (have, need) in want.items():
            if need is not None and have != need:
                raise ConfigError(
                    f"model.init_from: the Mixtral checkpoint needs {key}: {need} (the MoE layers have {have})", key=key
                )
        bank = ffn.experts
        if not isinstance(bank, StackedExperts) or bank.activation != "swiglu" or bank.b1 is not None:
            raise ConfigError(
                "model.init_from: Mixtral experts are SwiGLU without bias; set moe.expert_ffn: swiglu",
                key="moe.expert_ffn",
            )
        if ffn.shared is not None:
            raise ConfigError(
                "model.init_from: Mixtral has no shared experts; set moe.shared_experts: 0", key="moe.shared_experts"
            )
        fused = prefix + "mlp.experts.gate_up_proj"
        if fused in weights:  # transformers 5's own layout
            gate, w1, w2 = (
                weights[prefix + "mlp.gate.weight"],
                weights[fused],
                weights[prefix + "mlp.experts.down_proj"],
            )
        else:
            layer = from_mixtral_state_dict(weights, top_k=ffn.top_k, prefix=prefix + "block_sparse_moe.")
            assert isinstance(layer.experts, StackedExperts)
            gate, w1, w2 = layer.router.gate.weight, layer.experts.w1, layer.experts.w2
        for name, src, dst in (("gate", gate, ffn.router.gate.weight), ("w1", w1, bank.w1), ("w2", w2, bank.w2)):
            if src.shape != dst.shape:
                raise CheckpointError(
                    f"{prefix}: Mixtral {name} has shape {tuple(src.shape)}, the MoE layer {tuple(dst.shape)}",
                    path=prefix,
                )
            with torch.no_grad():
                dst.copy_(src)
