"""What the importers of fairchem 1.x checkpoints (EquiformerV2, eSCN) share: the error they
raise, the EMA swap, the fold of an unused force encoding and the exact load that names every
key it cannot map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from dens.errors import CheckpointError


class CheckpointImportError(CheckpointError):
    """The checkpoint is not one this importer can map exactly; the message names why (a
    ValueError, and one line from the ``dens`` command)."""


def ema_parameters(
    state: dict[str, Tensor], names: Sequence[str], shadow: Sequence[Tensor]
) -> dict[str, Tensor]:
    """``state`` with the EMA's averages ``shadow`` in place of the parameters ``names`` (the
    ones fairchem's EMA tracks, in order); refused when counts or shapes differ."""
    if len(names) != len(shadow) or any(
        state[n].shape != s.shape for n, s in zip(names, shadow, strict=False)
    ):
        raise CheckpointImportError(
            f"EMA has {len(shadow)} tensors for {len(names)} parameters, or shapes differ; "
            "load with use_ema=False"
        )
    return {**state, **dict(zip(names, shadow, strict=True))}


def fold_unused_force_encoding(state: dict[str, Tensor], arguments: Mapping[str, Any]) -> None:
    """A DeNS backbone without force encoding still adds force_embedding's bias at l = 0: fold
    it into the atom embedding (``sphere_embedding``) and drop the encoding's weight."""
    if arguments["noise_head"] and not arguments["force_encoding"]:
        bias = state.pop("force_embedding.bias", None)
        if bias is not None and "sphere_embedding.weight" in state:
            state["sphere_embedding.weight"] = state["sphere_embedding.weight"] + bias
        state.pop("force_embedding.weight", None)


def load_exactly(
    model: nn.Module,
    state: dict[str, Tensor],
    family: str,
    origin: Mapping[str, str] | None = None,
) -> None:
    """Load every parameter of ``model``; refuse extra, missing or differently shaped ones by
    name (``origin``: the checkpoint's names of renamed keys, ours for missing ones)."""
    ours, origin = model.state_dict(), origin or {}
    extra = sorted(origin.get(k, k) for k in set(state) - set(ours))
    missing = sorted(set(ours) - set(state))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} vs {tuple(ours[k].shape)}"
        for k in set(state) & set(ours)
        if state[k].shape != ours[k].shape
    )
    if extra or missing or shapes:
        raise CheckpointImportError(
            f"the checkpoint does not map onto {family}: "
            + "; ".join(
                f"{what}: {', '.join(names)}"
                for what, names in (
                    ("unmatched checkpoint keys", extra),
                    ("missing keys", missing),
                    ("shape mismatches", shapes),
                )
                if names
            )
        )
    model.load_state_dict(state, strict=True)
