"""Model families DeNS is applied to, built from a resolved experiment's hyper-parameters.

All families share one interface: ``forward(data, force_input=None, predict_noise=False)`` returns
``{"energy": [B], "forces": [N, 3]}`` and, with ``predict_noise``, ``"noise": [N, 3]``; the
constructor takes one settings object, of the class's ``settings_type`` (a frozen dataclass:
the preset's keys plus the switches ``force_encoding`` and ``noise_head`` (DeNS) and
``attention`` / ``layer_norm`` (Table 5), with their defaults and checks); ``build_network``
builds one from a mapping of them.

Layout: one package per family (``equiformer/``, ``equiformer_v2/``, ``escn/``, and ``nequip/``:
an adapter of the ``nequip`` package, the optional extra ``nequip``), the SO(2) mathematics that
EquiformerV2 and eSCN share (Wigner-D, edge frames, sphere grids, SO(2) convolution) in
``so2/``, the blocks they share on features as one array [N, (lmax + 1)^2, C] (DeNS input stage,
edge graph, Gaussian smearing, SO(3)-linear layer, fairchem import helpers, shared
hyper-parameters) in ``so3/``, what every family uses (initialisation, input checks, segment
softmax) in ``common/``, graph construction in ``graph.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dens.errors import ModelNotAvailableError

if TYPE_CHECKING:  # torch is imported with a family's module: the DAG reads PENDING_FAMILIES
    from torch import nn

FAMILIES = {
    "equiformer": "dens.models.equiformer:Equiformer",
    "equiformer_v2": "dens.models.equiformer_v2:EquiformerV2",
    "escn": "dens.models.escn:ESCN",
    "nequip": "dens.models.nequip:NequIP",
}
"""Model family (config/experiments.yaml ``model.family``) -> "module:class": the one registration
of a family, whose code lives in its own package; the configuration's families are checked
against it (dens.pipeline.registry), and tests/test_model_families.py lists the other places
that name one."""

OPTIONAL_EXTRAS = {"nequip": "nequip"}
"""Model family -> the pip extra that installs its package (``pip install -e '.[extra]'``)."""

PENDING_FAMILIES: dict[str, str] = {}
"""Model families named by experiments but not implemented yet -> why (tables mark their rows
"not run"; building one raises ModelNotAvailableError). Empty now that eSCN has landed."""


def model_class(family: str) -> type[nn.Module]:
    """The network class of a model family."""
    if family in PENDING_FAMILIES:
        raise ModelNotAvailableError(
            f"model family {family!r}: {PENDING_FAMILIES[family]}; "
            "it lands with the OC20/OC22 issue of the dens project"
        )
    if family not in FAMILIES:
        raise ModelNotAvailableError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    module, name = FAMILIES[family].split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as error:
        extra = OPTIONAL_EXTRAS.get(family)
        if extra is None or error.name is None or error.name.startswith("dens"):
            raise
        raise ModelNotAvailableError(
            f"model family {family!r} needs the optional dependency "
            f"{error.name.split('.')[0]!r}: "
            f"pip install -e '.[{extra}]'"
        ) from error


def build_network(family: str, hyperparameters: Mapping[str, Any]) -> nn.Module:
    """The network of ``family`` with these hyper-parameters: its class's ``settings_type`` (the
    dataclass that states their defaults and checks) built from them, then the network."""
    network = model_class(family)
    return network(network.settings_type(**hyperparameters))


def build_model(experiment: Mapping[str, Any]) -> nn.Module:
    """The model of a resolved experiment (:meth:`dens.pipeline.registry.Registry.resolve`): its
    family's network built with the resolved hyper-parameters (preset, overrides and switches)."""
    model = experiment["model"]
    return build_network(model["family"], model["hyperparameters"])


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
