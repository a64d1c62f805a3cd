"""APT models to and from Hugging Face ``transformers`` layouts: GPT-2, Llama and Mixtral.

No ``transformers`` import: ``config.json`` is written and read as a plain dict, weights
as safetensors. Which architecture a model maps onto follows from its shape::

    position=learned, norm=layernorm, ffn=gelu|gelu_tanh            -> GPT2LMHeadModel
    position=rope, norm=rmsnorm, ffn=swiglu, bias=false              -> LlamaForCausalLM
    the Llama shape with a plugin FFN claimed by an ``hf_ffn``       -> that converter's architecture
    provider (apt-plugin-moe: every block MoE)                          (MixtralForCausalLM)

Weight names, with ``i`` the block and ``C``/``K``/``F`` the width, key/value width and FFN width:

==========================  =====================================  ====================================
APT                         GPT-2 (Conv1D: weights transposed)     Llama / Mixtral
==========================  =====================================  ====================================
wte.weight                  transformer.wte.weight                 model.embed_tokens.weight
wpe.weight                  transformer.wpe.weight                 (RoPE, no table)
blocks.i.ln_1               transformer.h.i.ln_1                   model.layers.i.input_layernorm
blocks.i.attn.c_attn        transformer.h.i.attn.c_attn (.T)       self_attn.q_proj | k_proj | v_proj
                                                                   (rows [:C], [C:C+K], [C+K:])
blocks.i.attn.c_proj        transformer.h.i.attn.c_proj (.T)       self_attn.o_proj
blocks.i.ln_2               transformer.h.i.ln_2                   post_attention_layernorm
blocks.i.ffn.c_fc           transformer.h.i.mlp.c_fc (.T)          mlp.gate_proj | up_proj ([:F], [F:])
blocks.i.ffn.c_proj         transformer.h.i.mlp.c_proj (.T)        mlp.down_proj
ln_f                        transformer.ln_f                       model.norm
lm_head.weight              lm_head.weight (untied only)           lm_head.weight (untied only)
==========================  =====================================  ====================================

APT's RoPE rotates dimension ``i`` with ``i + hs/2`` like transformers' Llama, so q/k rows
copy over without the permutation Meta's interleaved checkpoints need. GPT-2 always has
biases: a model trained with ``bias: false`` exports zeros, which compute the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from typing import Protocol
from typing import runtime_checkable

import torch
from torch import Tensor
from torch import nn

from apt.errors import ConfigError


__all__ = [
    "ARCHITECTURES",
    "HFBlockConverter",
    "apt_to_hf",
    "architecture_of",
    "hf_config",
    "hf_to_apt",
    "model_fields_from_hf",
    "rope_theta_of",
]

#: ``model_type`` -> the ``architectures`` entry of ``config.json``.
ARCHITECTURES: dict[str, str] = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mixtral": "MixtralForCausalLM",
}


@runtime_checkable
class HFBlockConverter(Protocol):
    """What a provider of kind ``hf_ffn`` builds: maps a plugin's FFN onto a Hugging Face block.

    A plugin registers a zero-argument factory, ``registry.register("hf_ffn", "mixtral",
    MixtralConverter)``. Export asks each converter whether it :meth:`claims` a block's FFN
    that core does not know; import looks one up by :attr:`architecture` (the checkpoint's
    ``model_type``). ``prefix`` is the layer's key prefix, ``"model.layers.3."``.
    """

    #: the Hugging Face ``model_type`` a model whose blocks it claims exports as
    architecture: str

    def claims(self, ffn: nn.Module) -> bool:
        """Whether ``ffn`` is this plugin's module (an isinstance check)."""

    def config_fields(self, ffn: nn.Module) -> dict[str, Any]:
        """Extra ``config.json`` fields (``num_local_experts`` ...); raise ConfigError when it does not map."""

    def to_hf(self, ffn: nn.Module, prefix: str) -> dict[str, Tensor]:
        """The block's FFN tensors under their Hugging Face names."""

    def load_hf(self, ffn: nn.Module, weights: Mapping[str, Tensor], prefix: str, config: Mapping[str, Any]) -> None:
        """Copy the FFN tensors of one layer into ``ffn``; ConfigError naming the field on a mismatch."""


def _require_gpt(model: Any) -> None:
    """Only :class:`apt.model.GPT` maps onto Hugging Face names (the model functions below take it as Any)."""
    from apt.model import GPT

    if not isinstance(model, GPT):
        raise ConfigError(f"only apt.model.GPT models export to Hugging Face, got {type(model).__name__}")


def _layer_kinds() -> tuple[type, type, type]:
    from apt.model._layers import MLP
    from apt.model._layers import CausalSelfAttention
    from apt.model._layers import SwiGLU

    return CausalSelfAttention, MLP, SwiGLU


def architecture_of(model: Any, converters: list[HFBlockConverter]) -> tuple[str, HFBlockConverter | None]:
    """``(model_type, converter)`` the model exports as; ConfigError naming what does not map."""
    from apt.model import LayerNorm
    from apt.model import RMSNorm

    _require_gpt(model)
    attention_cls, mlp_cls, swiglu_cls = _layer_kinds()
    c = model.config
    for i, block in enumerate(model.blocks):
        if type(block.attn) is not attention_cls:
            raise ConfigError(
                f"block {i}'s attention is {type(block.attn).__name__} (model.attention={c.attention!r}), which has "
                "no Hugging Face counterpart; only the core 'causal' attention exports",
                key="model.attention",
            )
    norms = {type(m) for b in model.blocks for m in (b.ln_1, b.ln_2)} | {type(model.ln_f)}
    ffns = [block.ffn for block in model.blocks]
    if c.position == "learned":
        if norms != {LayerNorm}:
            raise ConfigError(
                f"model.norm={c.norm!r} with learned positions has no Hugging Face counterpart; GPT-2 needs "
                "model.norm=layernorm (or use position: rope with norm: rmsnorm for Llama)",
                key="model.norm",
            )
        if not all(type(f) is mlp_cls for f in ffns):
            bad = next(f for f in ffns if type(f) is not mlp_cls)
            raise ConfigError(
                f"the FFN {type(bad).__name__} (model.ffn={c.ffn!r}) with learned positions has no Hugging Face "
                "counterpart; GPT-2 needs model.ffn=gelu or gelu_tanh",
                key="model.ffn",
            )
        if c.n_kv_head is not None and c.n_kv_head != c.n_head:
            raise ConfigError(
                "GPT-2 has no grouped-query attention; model.n_kv_head must be unset or equal model.n_head",
                key="model.n_kv_head",
            )
        return "gpt2", None
    # rotary positions: the Llama family
    if norms != {RMSNorm}:
        raise ConfigError(
            f"model.norm={c.norm!r} with position=rope has no Hugging Face counterpart; Llama needs model.norm=rmsnorm",
            key="model.norm",
        )
    if c.bias:
        raise ConfigError(
            "Llama/Mixtral have no biases in norms and linear layers; this model has model.bias=true", key="model.bias"
        )
    if all(type(f) is swiglu_cls for f in ffns):
        return "llama", None
    for conv in converters:
        if all(conv.claims(f) for f in ffns):
            return conv.architecture, conv
    for conv in converters:
        claimed = [i for i, f in enumerate(ffns) if conv.claims(f)]
        if claimed:  # some blocks are the plugin's, not all: Mixtral-style models have one in every layer
            dense = [i for i in range(len(ffns)) if i not in claimed]
            raise ConfigError(
                f"Hugging Face {conv.architecture} has a {type(ffns[claimed[0]]).__name__} in every layer, but blocks "
                f"{dense} have another FFN; put the plugin's FFN in every block (moe.layers: all)",
                key="model.ffn",
            )
    bad = next(f for f in ffns if type(f) is not swiglu_cls)
    known = ", ".join(conv.architecture for conv in converters) or "none loaded"
    raise ConfigError(
        f"the FFN {type(bad).__name__} (model.ffn={c.ffn!r}) has no Hugging Face counterpart with position=rope: "
        f"Llama needs model.ffn=swiglu in every block, or a plugin FFN with an hf_ffn converter (loaded: {known}) "
        "in every block",
        key="model.ffn",
    )


def hf_config(model: Any, arch: str, converter: HFBlockConverter | None) -> dict[str, Any]:
    """The ``config.json`` dict for ``model`` exported as ``arch``."""
    _require_gpt(model)
    c = model.config
    eps = float(model.ln_f.eps)
    tied = model.lm_head.weight is model.wte.weight
    common: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": int(model.wte.num_embeddings),
        "tie_word_embeddings": tied,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "dtype": "float32",
        "use_cache": True,
    }
    if arch == "gpt2":
        act = model.blocks[0].ffn.approximate
        return {
            **common,
            "n_positions": c.block_size,
            "n_embd": c.d_model,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_inner": c.ffn_hidden,
            "activation_function": "gelu_new" if act == "tanh" else "gelu",
            "layer_norm_epsilon": eps,
            "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout,
            "attn_pdrop": c.dropout,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
        }
    # every block's FFN must map onto the same config fields (one intermediate_size, one expert count ...)
    if converter is None:
        per_block = [{"intermediate_size": b.ffn.d_ff} for b in model.blocks]
    else:
        per_block = [converter.config_fields(b.ffn) for b in model.blocks]
    differ = [i for i, fields in enumerate(per_block) if fields != per_block[0]]
    if differ:
        raise ConfigError(
            f"Hugging Face {arch} has one FFN shape for all layers, but blocks {differ} differ from block 0 "
            f"({per_block[differ[0]]} vs {per_block[0]})",
            key="model.ffn",
        )
    out = {
        **common,
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv_head or c.n_head,
        "head_dim": c.d_model // c.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": c.block_size,
        "rms_norm_eps": eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "attention_dropout": c.dropout,
        **per_block[0],
    }
    if arch == "llama":
        out.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
    return out


def apt_to_hf(model: Any, arch: str, converter: HFBlockConverter | None) -> dict[str, Tensor]:
    """The model's tensors under ``arch``'s Hugging Face names (contiguous CPU copies)."""
    _require_gpt(model)
    c = model.config
    tied = model.lm_head.weight is model.wte.weight
    sd: dict[str, Tensor] = {}

    def put(name: str, t: Tensor) -> None:
        sd[name] = t.detach().to("cpu", copy=True).contiguous()

    def norm(name: str, m: Any, with_bias: bool) -> None:
        put(f"{name}.weight", m.weight)
        if with_bias:
            put(f"{name}.bias", m.bias if m.bias is not None else torch.zeros_like(m.weight))

    def conv1d(name: str, lin: nn.Linear) -> None:  # GPT-2's Conv1D stores (in, out)
        put(f"{name}.weight", lin.weight.t())
        put(f"{name}.bias", lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.weight.shape[0]))

    if arch == "gpt2":
        assert model.wpe is not None
        put("transformer.wte.weight", model.wte.weight)
        put("transformer.wpe.weight", model.wpe.weight)
        for i, b in enumerate(model.blocks):
            p = f"transformer.h.{i}."
            norm(p + "ln_1", b.ln_1, True)
            conv1d(p + "attn.c_attn", b.attn.c_attn)
            conv1d(p + "attn.c_proj", b.attn.c_proj)
            norm(p + "ln_2", b.ln_2, True)
            conv1d(p + "mlp.c_fc", b.ffn.c_fc)
            conv1d(p + "mlp.c_proj", b.ffn.c_proj)
        norm("transformer.ln_f", model.ln_f, True)
    else:
        put("model.embed_tokens.weight", model.wte.weight)
        kv = (c.n_kv_head or c.n_head) * (c.d_model // c.n_head)
        for i, b in enumerate(model.blocks):
            p = f"model.layers.{i}."
            put(p + "input_layernorm.weight", b.ln_1.weight)
            q, k, v = b.attn.c_attn.weight.split([c.d_model, kv, kv], dim=0)
            put(p + "self_attn.q_proj.weight", q)
            put(p + "self_attn.k_proj.weight", k)
            put(p + "self_attn.v_proj.weight", v)
            put(p + "self_attn.o_proj.weight", b.attn.c_proj.weight)
            put(p + "post_attention_layernorm.weight", b.ln_2.weight)
            if converter is None:
                gate, up = b.ffn.c_fc.weight.split(b.ffn.d_ff, dim=0)
                put(p + "mlp.gate_proj.weight", gate)
                put(p + "mlp.up_proj.weight", up)
                put(p + "mlp.down_proj.weight", b.ffn.c_proj.weight)
            else:
                for name, t in converter.to_hf(b.ffn, p).items():
                    put(name, t)
        put("model.norm.weight", model.ln_f.weight)
    if not tied:
        put("lm_head.weight", model.lm_head.weight)
    return sd


# --- import -------------------------------------------------------------------------------


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def rope_theta_of(cfg: Mapping[str, Any], default: float) -> float:
    """θ from ``rope_parameters`` (transformers 5), else ``rope_theta``, else ``default``."""
    params = cfg.get("rope_parameters") or {}
    if "rope_theta" in params:
        return float(params["rope_theta"])
    return float(_get(cfg, "rope_theta", default))


def model_fields_from_hf(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """APT ``model`` fields for a Hugging Face ``config.json``; ConfigError naming a field APT lacks.

    :param where: the folder, for messages.
    """
    arch = cfg.get("model_type")
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"model.init_from {where}: config.json model_type={arch!r} is not one APT imports "
            f"({', '.join(ARCHITECTURES)})",
            key="model.init_from",
        )

    def refuse(field: str, value: Any, why: str) -> ConfigError:
        return ConfigError(
            f"model.init_from {where}: config.json {field}={value!r} has no APT counterpart ({why})",
            key="model.init_from",
        )

    if cfg.get("quantization_config"):
        raise refuse("quantization_config", "...", "APT loads unquantized weights only")
    tied = bool(cfg.get("tie_word_embeddings", arch == "gpt2"))
    if arch == "gpt2":
        act = cfg.get("activation_function", "gelu_new")
        acts = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
        if act not in acts:
            raise refuse("activation_function", act, "APT's GPT-2 MLP has gelu and gelu_tanh")
        if cfg.get("scale_attn_by_inverse_layer_idx"):
            raise refuse("scale_attn_by_inverse_layer_idx", True, "APT scales attention by 1/sqrt(head size) only")
        if cfg.get("scale_attn_weights") is False:
            raise refuse("scale_attn_weights", False, "APT always scales attention by 1/sqrt(head size)")
        if cfg.get("add_cross_attention"):
            raise refuse("add_cross_attention", True, "APT is decoder-only")
        d = int(cfg["n_embd"])
        return {
            "vocab_size": int(cfg["vocab_size"]),
            "block_size": int(cfg["n_positions"]),
            "n_layer": int(cfg["n_layer"]),
            "n_head": int(cfg["n_head"]),
            "d_model": d,
            "d_ff": int(_get(cfg, "n_inner", 4 * d)),
            "bias": True,
            "ffn": acts[act],
            "norm": "layernorm",
            "position": "learned",
            "norm_eps": float(_get(cfg, "layer_norm_epsilon", 1e-5)),
            "tie_embeddings": tied,
            "attention": "causal",
        }
    # llama / mixtral
    d, h = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if cfg.get("hidden_act", "silu") != "silu":
        raise refuse("hidden_act", cfg.get("hidden_act"), "APT's SwiGLU gates with silu")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise refuse(flag, True, "APT's Llama shape has no biases")
    head_dim = cfg.get("head_dim")
    if head_dim is not None and int(head_dim) != d // h:
        raise refuse("head_dim", head_dim, f"APT's head size is hidden_size / num_attention_heads = {d // h}")
    params = cfg.get("rope_parameters") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise refuse("rope_parameters.rope_type", rope_type, "APT implements unscaled RoPE only")
    if cfg.get("rope_scaling"):
        raise refuse("rope_scaling", cfg["rope_scaling"], "APT implements unscaled RoPE only")
    if cfg.get("sliding_window") is not None:
        raise refuse("sliding_window", cfg["sliding_window"], "APT attends over the whole context")
    fields: dict[str, Any] = {
        "vocab_size": int(cfg["vocab_size"]),
        "n_layer": int(cfg["num_hidden_layers"]),
        "n_head": h,
        "n_kv_head": int(_get(cfg, "num_key_value_heads", h)),
        "d_model": d,
        "d_ff": int(cfg["intermediate_size"]),
        "bias": False,
        "ffn": "swiglu",
        "norm": "rmsnorm",
        "position": "rope",
        "rope_theta": rope_theta_of(cfg, 1e6 if arch == "mixtral" else 1e4),
        "norm_eps": float(_get(cfg, "rms_norm_eps", 1e-5 if arch == "mixtral" else 1e-6)),
        "tie_embeddings": tied,
        "attention": "causal",
    }
    return fields


def hf_to_apt(
    weights: Mapping[str, Tensor], cfg: Mapping[str, Any], model: Any, converter: HFBlockConverter | None
) -> dict[str, Tensor]:
    """A state dict for ``model`` (built with :func:`model_fields_from_hf`'s shape) from Hugging Face tensors.

    Plugin FFN tensors are copied into the model's modules by ``converter`` directly.
    Raises ConfigError when a tensor is missing.
    """
    _require_gpt(model)
    arch = cfg["model_type"]
    used: set[str] = set()

    def take(name: str) -> Tensor:
        if name not in weights:
            raise ConfigError(f"model.init_from: the checkpoint has no tensor {name!r}", key="model.init_from")
        used.add(name)
        return weights[name]

    sd: dict[str, Tensor] = {}
    if arch == "gpt2":
        sd["wte.weight"] = take("transformer.wte.weight")
        sd["wpe.weight"] = take("transformer.wpe.weight")[: model.config.block_size]  # a shorter context: first rows
        for i in range(len(model.blocks)):
            p, q = f"transformer.h.{i}.", f"blocks.{i}."
            for hf_name, apt_name, conv in (
                ("ln_1", "ln_1", False), ("attn.c_attn", "attn.c_attn", True), ("attn.c_proj", "attn.c_proj", True),
                ("ln_2", "ln_2", False), ("mlp.c_fc", "ffn.c_fc", True), ("mlp.c_proj", "ffn.c_proj", True),
            ):  # fmt: skip
                w = take(p + hf_name + ".weight")
                sd[q + apt_name + ".weight"] = w.t() if conv else w
                sd[q + apt_name + ".bias"] = take(p + hf_name + ".bias")
        sd["ln_f.weight"] = take("transformer.ln_f.weight")
        sd["ln_f.bias"] = take("transformer.ln_f.bias")
    else:
        sd["wte.weight"] = take("model.embed_tokens.weight")
        for i, block in enumerate(model.blocks):
            p, q = f"model.layers.{i}.", f"blocks.{i}."
            sd[q + "ln_1.weight"] = take(p + "input_layernorm.weight")
            sd[q + "attn.c_attn.weight"] = torch.cat(
                [take(p + f"self_attn.{n}_proj.weight") for n in ("q", "k", "v")], dim=0
            )
            sd[q + "attn.c_proj.weight"] = take(p + "self_attn.o_proj.weight")
            sd[q + "ln_2.weight"] = take(p + "post_attention_layernorm.weight")
            if converter is None:
                sd[q + "ffn.c_fc.weight"] = torch.cat(
                    [take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]
                )
                sd[q + "ffn.c_proj.weight"] = take(p + "mlp.down_proj.weight")
            else:
                converter.load_hf(block.ffn, weights, p, cfg)
                sd.update({q + "ffn." + k: t for k, t in block.ffn.state_dict().items()})
                used.update(k for k in weights if k.startswith(p) and ("block_sparse_moe." in k or ".mlp." in k))
        sd["ln_f.weight"] = take("model.norm.weight")
    if "lm_head.weight" in weights and model.lm_head.weight is not model.wte.weight:
        sd["lm_head.weight"] = take("lm_head.weight")
    elif model.lm_head.weight is not model.wte.weight:
        raise ConfigError(
            "model.init_from: the checkpoint has no lm_head.weight but model.tie_embeddings is false",
            key="model.tie_embeddings",
        )
    unused = sorted(k for k in weights if k not in used and k != "lm_head.weight")
    if unused:
        raise ConfigError(
            f"model.init_from: the checkpoint holds tensors APT's {arch} shape has no place for: "
            f"{', '.join(unused[:3])}{' ...' if len(unused) > 3 else ''}",
            key="model.init_from",
        )
    return sd
