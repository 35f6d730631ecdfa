"""Edge-degree embedding of EquiformerV2 (Liao et al., ICLR 2024, Sec. 3.4; fairchem 1.x
equiformer_v2/input_block.py ``EdgeDegreeEmbedding``): every edge contributes m = 0 coefficients
of all degrees, a radial MLP of [RBF(|r|), A_src(Z_src), A_dst(Z_dst)], rotated from the edge frame
back to the lab frame (with the truncation rescale); the sum over incoming edges is divided by
``avg_degree``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dens.models.so2.so2_convolution import RadialFunction
from dens.models.so3.edge_graph import EdgeGraph, sum_to_nodes


class EdgeDegreeEmbedding(nn.Module):
    """graph -> [N, (lmax + 1)^2, C]. Parameter names as the reference."""

    def __init__(
        self,
        sphere_channels: int,
        lmax: int,
        max_num_elements: int,
        edge_channels: list[int],
        avg_degree: float,
    ) -> None:
        super().__init__()
        self.sphere_channels, self.lmax, self.avg_degree = sphere_channels, lmax, avg_degree
        self.source_embedding = nn.Embedding(max_num_elements, edge_channels[-1])
        self.target_embedding = nn.Embedding(max_num_elements, edge_channels[-1])
        nn.init.uniform_(self.source_embedding.weight, -0.001, 0.001)
        nn.init.uniform_(self.target_embedding.weight, -0.001, 0.001)
        self.rad_func = RadialFunction(
            [
                edge_channels[0] + 2 * edge_channels[-1],
                *edge_channels[1:],
                (lmax + 1) * sphere_channels,
            ]
        )

    def forward(self, graph: EdgeGraph) -> Tensor:
        edge_scalars = torch.cat(
            (
                graph.distance_basis,
                self.source_embedding(graph.atomic_numbers.index_select(0, graph.src)),
                self.target_embedding(graph.atomic_numbers.index_select(0, graph.dst)),
            ),
            dim=1,
        )
        m0 = self.rad_func(edge_scalars).view(-1, self.lmax + 1, self.sphere_channels)
        # the m = 0 coefficients are the first lmax + 1 kept ones (m-primary)
        lab = torch.bmm(graph.from_frame[:, :, : self.lmax + 1], m0)
        return sum_to_nodes(lab, graph.dst, graph.num_nodes) / self.avg_degree
