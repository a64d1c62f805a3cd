"""Reduce the MoE layers' per-step accumulators into ``moe/...`` metrics."""

from __future__ import annotations

from collections.abc import Sequence

from apt_plugin_moe._layer import STAT_FIELDS


__all__ = ["reduce_moe_stats"]


def reduce_moe_stats(rows: Sequence[Sequence[float]], layer_ids: Sequence[int], num_experts: int) -> dict[str, float]:
    """Metrics of one optimizer step from each MoE layer's accumulator.

    :param rows: per layer, ``E`` slot counts followed by :data:`~apt_plugin_moe._layer.STAT_FIELDS`
        sums over the step's training forwards (:meth:`MoELayer.stats_tensor`).
    :param layer_ids: the block index of each row (names the per-layer metrics).
    :param num_experts: E.
    :returns: per layer ``moe/layer{i}/load_e{j}`` (fraction of the layer's slots routed to
        expert j, before dropping), ``max_load`` (largest fraction), ``max_over_mean_load``
        (``E * max_load``; 1 = perfectly balanced), ``dropped_frac``, ``entropy`` (mean
        routing entropy / log E), ``dead_experts`` (experts that got no slot this step),
        ``aux_loss`` and ``z_loss`` (unweighted, mean over forwards); and over layers
        ``moe/aux_loss``, ``moe/z_loss``, ``moe/entropy`` (means), ``moe/dropped_frac``
        (all dropped slots / all slots), ``moe/max_over_mean_load`` (worst layer),
        ``moe/dead_experts`` (sum). Layers without a forward this step are skipped.
    """
    out: dict[str, float] = {}
    idx = {name: num_experts + i for i, name in enumerate(STAT_FIELDS)}
    aux, z, ent, worst = [], [], [], 0.0
    dropped = slots = dead_total = 0.0
    for layer, row in zip(layer_ids, rows, strict=True):
        forwards = row[idx["forwards"]]
        if forwards <= 0:
            continue
        counts = list(row[:num_experts])
        total = sum(counts)
        p = f"moe/layer{layer}/"
        loads = [c / total if total > 0 else 0.0 for c in counts]
        for j, frac in enumerate(loads):
            out[f"{p}load_e{j}"] = frac
        max_load = max(loads)
        out[f"{p}max_load"] = max_load
        out[f"{p}max_over_mean_load"] = max_load * num_experts
        out[f"{p}dropped_frac"] = row[idx["dropped"]] / max(row[idx["slots"]], 1.0)
        out[f"{p}entropy"] = row[idx["entropy_sum"]] / max(row[idx["tokens"]], 1.0)
        out[f"{p}dead_experts"] = float(sum(1 for c in counts if c == 0))
        out[f"{p}aux_loss"] = row[idx["balance_sum"]] / forwards
        out[f"{p}z_loss"] = row[idx["z_sum"]] / forwards
        aux.append(out[f"{p}aux_loss"])
        z.append(out[f"{p}z_loss"])
        ent.append(out[f"{p}entropy"])
        worst = max(worst, out[f"{p}max_over_mean_load"])
        dropped += row[idx["dropped"]]
        slots += row[idx["slots"]]
        dead_total += out[f"{p}dead_experts"]
    if aux:
        out["moe/aux_loss"] = sum(aux) / len(aux)
        out["moe/z_loss"] = sum(z) / len(z)
        out["moe/entropy"] = sum(ent) / len(ent)
        out["moe/dropped_frac"] = dropped / max(slots, 1.0)
        out["moe/max_over_mean_load"] = worst
        out["moe/dead_experts"] = dead_total
    return out
