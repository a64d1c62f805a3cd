"""Model weights as ``model.safetensors``: what ``apt generate`` loads.

safetensors refuses tensors that share memory, so a tied output head
(``lm_head.weight is wte.weight``) is stored once, under ``wte.weight``, and re-tied
on load by the model itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor
from torch import nn

from apt.errors import CheckpointError


__all__ = ["load_weights", "save_weights", "shape_mismatches", "weights_state_dict"]


def shape_mismatches(model_state: Mapping[str, Tensor], weights: Mapping[str, Tensor]) -> list[str]:
    """``"name: (saved shape) here, (model shape) in the model"`` for each tensor both hold with different shapes."""
    return [
        f"{name}: {tuple(t.shape)} saved, {tuple(model_state[name].shape)} in the model"
        for name, t in sorted(weights.items())
        if name in model_state and tuple(t.shape) != tuple(model_state[name].shape)
    ]


def weights_state_dict(model: nn.Module, state: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The model's tensors with every shared tensor kept once (first name wins), detached and contiguous.

    :param state: the tensors to store, when they are not ``model.state_dict()`` (the full
        weights gathered from a sharded model); names the model ties are still stored once.
    """
    first_name: dict[int, str] = {}
    aliases = set()  # later names of a tied parameter (lm_head.weight -> wte.weight)
    for name, param in model.named_parameters(remove_duplicate=False):
        if first_name.setdefault(id(param), name) != name:
            aliases.add(name)
    seen: dict[int, str] = {}
    out: dict[str, Tensor] = {}
    for name, t in (model.state_dict() if state is None else state).items():
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if name in aliases or (key in seen and t.numel()):
            continue  # an alias of a tensor already stored (tied weights)
        seen[key] = name
        out[name] = t.detach().contiguous().cpu()
    return out


def save_weights(model: nn.Module, path: str | Path, state: Mapping[str, Tensor] | None = None) -> Path:
    """Write the model's weights (or ``state``, see :func:`weights_state_dict`) to ``path`` (safetensors)."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(weights_state_dict(model, state), str(path), metadata={"format": "pt", "writer": "apt"})
    return path


def load_weights(model: nn.Module, weights: str | Path | Mapping[str, Tensor]) -> None:
    """Load a safetensors file (or a ready name -> tensor mapping) into ``model``.

    Keys missing because they alias another tensor of the model (a tied head) are fine;
    any other missing or unexpected key is an error naming the file.

    :raises CheckpointError: if the file cannot be read or does not fit the model.
    """
    where, path = "the weights", None
    if not isinstance(weights, Mapping):
        path = str(weights)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        where = repr(path)
        try:
            weights = load_file(path)
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"cannot read model weights {where}: {exc}", path=path) from None
    params = dict(model.state_dict(keep_vars=True))
    mismatched = shape_mismatches(params, weights)
    if mismatched:
        raise CheckpointError(
            f"{where} do not fit the model: {len(mismatched)} tensor(s) differ in shape ({'; '.join(mismatched[:3])}); "
            "rebuild the model from the run's config.yaml with the same plugins",
            path=path,
        )
    tied = {n for n, t in params.items() if n not in weights and any(t is params[m] for m in weights if m in params)}
    missing, unexpected = model.load_state_dict(dict(weights), strict=False)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CheckpointError(
            f"{where} do not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}; "
            "rebuild the model from the run's config.yaml with the same plugins",
            path=path,
        )
