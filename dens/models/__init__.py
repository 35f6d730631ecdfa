"""Model families DeNS is applied to, built from a resolved experiment's hyper-parameters.

All families share one interface: ``forward(data, force_input=None, predict_noise=False)`` returns
``{"energy": [B], "forces": [N, 3]}`` and, with ``predict_noise``, ``"noise": [N, 3]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn


class ModelNotAvailableError(RuntimeError):
    """The model family of an experiment is not implemented in this version of dens."""


PENDING_FAMILIES = {
    "equiformer_v2": "EquiformerV2 (OC20/OC22 experiments) is not implemented yet",
    "escn": "eSCN (OC20 experiments) is not implemented yet",
}


def build_model(experiment: Mapping[str, Any]) -> nn.Module:
    """The model of a resolved experiment (:meth:`dens.config.Registry.resolve`): its family
    built with the preset's constructor arguments, the Table 5 switches and the DeNS flag."""
    family = experiment["model"]["family"]
    hyperparameters = experiment["model"]["hyperparameters"]
    if family == "equiformer":
        from dens.models.equiformer import Equiformer

        return Equiformer(**hyperparameters)
    if family in PENDING_FAMILIES:
        raise ModelNotAvailableError(
            f"model family {family!r}: {PENDING_FAMILIES[family]}; "
            "it lands with the OC20/OC22 issue of the dens project"
        )
    raise ModelNotAvailableError(f"unknown model family {family!r}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
