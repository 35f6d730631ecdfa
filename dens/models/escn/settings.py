"""eSCN's hyper-parameters (``ESCNSettings``): those it shares with EquiformerV2
(dens.models.so3.settings.SO3NetworkSettings, whose num_layers are its layer blocks and whose
graph keeps at most max_neighbors per atom strictly: fairchem's eSCN has no other option) and its
own, each with its default (fairchem 1.x's official OC20 configuration) and range."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dens.models.so3.settings import SO3NetworkSettings
from dens.setting_fields import setting


@dataclass(frozen=True)
class ESCNSettings(SO3NetworkSettings):
    """What eSCN is built from."""

    network: ClassVar[str] = "eSCN"

    hidden_channels: int = setting(256, minimum=1)
    """Width of the SO(2) bottlenecks."""
    edge_channels: int = setting(128, minimum=1)
    """Width of the invariant edge features (from the distance basis and the embeddings of the
    two atoms' types)."""
    num_sphere_samples: int = setting(128, minimum=1)
    """Points of the output heads on the sphere."""
    grid_resolution: int | None = setting(None, minimum=1)
    """None for fairchem's grids (2 (lmax + 1) in beta, 2 mmax + 1 resp. 2 lmax + 3 in alpha),
    else a square grid of that many points per angle."""
    distance_resolution: float = setting(0.02, exclusiveMinimum=0)
    """Spacing of the Gaussian centres on [0, cutoff] in Å (fairchem's default 0.02 gives
    cutoff / 0.02 Gaussians)."""
    basis_width: float = setting(2.0, exclusiveMinimum=0)
    """Width of the Gaussians in units of their spacing."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_distance_basis < 2:
            raise ValueError(
                f"need at least 2 Gaussians: cutoff {self.cutoff} / distance_resolution "
                f"{self.distance_resolution} < 2"
            )

    @property
    def num_distance_basis(self) -> int:
        """Gaussians of the edge lengths on [0, cutoff]: int(cutoff / distance_resolution)."""
        return int(self.cutoff / self.distance_resolution)
