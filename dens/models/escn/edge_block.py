"""Invariant edge features of eSCN from the edge length and the two atom types.

fairchem 1.x escn/escn.py ``EdgeBlock`` (same parameter names): with g(d) the Gaussian basis of
the edge length (shared by all layers, computed once per forward pass),

    x_edge = SiLU(fc1_edge_attr(SiLU(fc1_dist(g(d)) + source_embedding(Z_src)
                                     + target_embedding(Z_dst))))
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class EdgeBlock(nn.Module):
    """distance basis [E, B], atom types of the source and target [E] -> [E, edge_channels].

    The atom-type embeddings start at U(+-0.001) as in the reference."""

    def __init__(self, num_distance_basis: int, edge_channels: int, max_num_elements: int) -> None:
        super().__init__()
        self.fc1_dist = nn.Linear(num_distance_basis, edge_channels)
        self.source_embedding = nn.Embedding(max_num_elements, edge_channels)
        self.target_embedding = nn.Embedding(max_num_elements, edge_channels)
        nn.init.uniform_(self.source_embedding.weight, -0.001, 0.001)
        nn.init.uniform_(self.target_embedding.weight, -0.001, 0.001)
        self.fc1_edge_attr = nn.Linear(edge_channels, edge_channels)

    def forward(self, distance_basis: Tensor, z_source: Tensor, z_target: Tensor) -> Tensor:
        x = self.fc1_dist(distance_basis)
        x = x + self.source_embedding(z_source) + self.target_embedding(z_target)
        return F.silu(self.fc1_edge_attr(F.silu(x)))
