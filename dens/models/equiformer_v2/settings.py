"""EquiformerV2's hyper-parameters (``EquiformerV2Settings``): those it shares with eSCN
(dens.models.so3.settings.SO3NetworkSettings, whose num_layers are its transformer blocks) and
its own, each with its default (fairchem 1.x's official OC20 configuration) and range."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from dens.models.so3.settings import SO3NetworkSettings
from dens.setting_fields import setting

# fairchem 1.x defaults (statistics of OC20 IS2RE 100k), used by every official config.
AVG_NUM_NODES = 77.81317
AVG_DEGREE = 23.395238876342773
# fairchem 1.x get_max_neighbors_mask: with enforce_max_neighbors_strictly=False, neighbours whose
# squared distance is within this many Å^2 of the (K+1)-th nearest's are kept too.
DEGENERACY_TOLERANCE = 0.01


@dataclass(frozen=True)
class EquiformerV2Settings(SO3NetworkSettings):
    """What EquiformerV2 is built from."""

    network: ClassVar[str] = "EquiformerV2"

    attn_hidden_channels: int = setting(64, minimum=1)
    """Message channels between the two SO(2) convolutions of an attention block."""
    num_heads: int = setting(8, minimum=1)
    """Attention heads."""
    attn_alpha_channels: int = setting(64, minimum=1)
    """Width of each head's logit features."""
    attn_value_channels: int = setting(16, minimum=1)
    """Width of each head's values."""
    ffn_hidden_channels: int = setting(128, minimum=1)
    """Hidden channels of the feed-forward networks (and of their grid MLP, the official
    configs' ``use_grid_mlp: True``)."""
    edge_channels: int = setting(128, minimum=1)
    """Hidden width of the radial MLPs."""
    num_distance_basis: int = setting(600, minimum=1)
    """Gaussians of the edge lengths on [0, cutoff] (fairchem 1.x fixes 600)."""
    grid_resolution: int = setting(18, minimum=1)
    """Points of the sphere grid in each angle."""
    enforce_max_neighbors_strictly: bool = True
    """False keeps neighbours tied with the last one within 0.01 Å^2 (fairchem's option, set by
    the official OC22 config)."""
    alpha_drop: float = setting(0.1, minimum=0, maximum=1)
    """Dropout of the attention weights."""
    drop_path_rate: float = setting(0.05, minimum=0, maximum=1)
    """Stochastic depth, per structure."""
    proj_drop: float = setting(0.0, minimum=0, maximum=1)
    """Dropout of the block outputs."""
    weight_init: Literal["uniform", "normal"] = "uniform"
    """Initialisation of the linear layers: "uniform" (the official configs) or "normal"."""
    avg_num_nodes: float = setting(AVG_NUM_NODES, exclusiveMinimum=0)
    """Normalisation of the energy sum."""
    avg_degree: float = setting(AVG_DEGREE, exclusiveMinimum=0)
    """Normalisation of the edge-degree embedding."""

    @property
    def degeneracy_tolerance(self) -> float | None:
        """None: at most max_neighbors per atom, strictly; else the tie tolerance in Å^2."""
        return None if self.enforce_max_neighbors_strictly else DEGENERACY_TOLERANCE
