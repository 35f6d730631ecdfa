"""The hyper-parameters EquiformerV2 and eSCN share (``SO3NetworkSettings``), which each family's
settings extend (dens.models.equiformer_v2.EquiformerV2Settings, dens.models.escn.ESCNSettings).
Each field states its default (fairchem 1.x's official OC20 configurations) and range once
(dens.setting_fields); ``__post_init__`` adds the checks that span fields. A wrong value raises
dens.errors.ConfigError (a ValueError) naming ``model.<key>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dens.models.so2.edge_frame import EdgeRoll
from dens.setting_fields import check_fields, setting


@dataclass(frozen=True)
class SO3NetworkSettings:
    """What both SO(3)-array networks are built from."""

    network: ClassVar[str] = "this network"  # its name in error messages

    num_layers: int = setting(12, minimum=1)
    """Blocks of the network."""
    lmax: int = setting(6, minimum=1)
    """Degree of the node features [N, (lmax + 1)^2, C] (fairchem 1.x: ``lmax_list``, one
    resolution)."""
    mmax: int = setting(2, minimum=1)
    """Orders kept in the edge frame, at most lmax (fairchem 1.x: ``mmax_list``)."""
    sphere_channels: int = setting(128, minimum=1)
    """Channels C per coefficient."""
    cutoff: float = setting(12.0, exclusiveMinimum=0)
    """Radius of the graph in Å (dens.models.graph.periodic_neighbors; fairchem 1.x:
    EquiformerV2's ``max_radius``, eSCN's ``cutoff``)."""
    max_neighbors: int = setting(20, minimum=1)
    """At most this many incoming edges per atom."""
    edge_roll: EdgeRoll = "training"
    """The roll of the edge frames about their edges (``dens.models.so2.edge_frame``): "random"
    in every forward pass as the official code, "training" random in training mode and
    deterministic in eval mode, "fixed"."""
    max_num_elements: int = setting(90, minimum=2)
    """Size of the atom-type tables (atomic numbers 1..max_num_elements - 1)."""
    force_encoding: bool = False
    """The DeNS force encoding (Sec. 3.2.2, Eq. 5)."""
    noise_head: bool = False
    """The DeNS noise head (App. D.1)."""
    attention: bool = True
    """DeNS Table 5's switch, which neither network can turn off (only True, the value every
    OC20/OC22 experiment names, is accepted)."""
    layer_norm: bool = True
    """DeNS Table 5's other switch, likewise True only."""

    def __post_init__(self) -> None:
        if not self.attention or not self.layer_norm:
            raise ValueError(
                f"{self.network} has no attention or layer normalisation to switch off (DeNS "
                f"Table 5 ablates them for Equiformer on MD17 only); got "
                f"attention={self.attention}, layer_norm={self.layer_norm}"
            )
        check_fields(self, "model")
        if self.mmax > self.lmax:
            raise ValueError(f"need 1 <= mmax <= lmax, got lmax={self.lmax}, mmax={self.mmax}")

    @property
    def degeneracy_tolerance(self) -> float | None:
        """Neighbours tied with the last one kept within this many Å^2; None: at most
        max_neighbors per atom, strictly."""
        return None
