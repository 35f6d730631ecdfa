"""Equivariant graph attention of EquiformerV2 built on SO(2) convolutions (Liao et al., ICLR 2024,
Sec. 3.2 and Fig. 1(b); fairchem 1.x ``SO2EquivariantGraphAttention`` with the official settings:
non-linear messages, attention re-normalisation, separable S2 activation).

For an edge src -> dst with invariant edge features z_e = [RBF(|r|), A_src(Z_src), A_dst(Z_dst)]:

    m = D_e [x_src, x_dst]                     (rotate into the edge frame, keep |m| <= mmax)
    m, (a, g) = SO2Conv_1(m; radial(z_e))      (a: attention features, g: gating scalars)
    m = SO2Conv_2(SeparableS2Act(g, m))
    alpha = softmax_{e -> dst}( <SmoothLeakyReLU(LayerNorm(a_h)), w_h> )  per head h
    out_dst = Linear( sum_e D_e^T (alpha_e,h * m_e,h) )
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dens.models.common.segment_softmax import segment_softmax
from dens.models.equiformer_v2.activation import SeparableS2Activation, SmoothLeakyReLU
from dens.models.so2.so2_convolution import SO2Convolution
from dens.models.so2.sphere_grid import SphereGrid
from dens.models.so3.edge_graph import EdgeGraph, gather_nodes, sum_to_nodes
from dens.models.so3.so3_linear import SO3Linear


class SO2GraphAttention(nn.Module):
    """x: [N, (lmax + 1)^2, C] -> [N, (lmax + 1)^2, output_channels].

    hidden_channels: channels of the messages between the two SO(2) convolutions; num_heads,
    alpha_channels, value_channels: attention heads, width of each head's logit features and of
    its values; edge_channels: widths of the radial MLP [B, hidden, hidden] (B = distance basis);
    edge_grid: the truncated (mmax), m-primary sphere grid; alpha_drop: dropout of the attention
    weights. Parameter names as the reference.
    """

    def __init__(
        self,
        sphere_channels: int,
        hidden_channels: int,
        num_heads: int,
        alpha_channels: int,
        value_channels: int,
        output_channels: int,
        lmax: int,
        mmax: int,
        edge_grid: SphereGrid,
        max_num_elements: int,
        edge_channels: list[int],
        alpha_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads, self.alpha_channels = num_heads, alpha_channels
        self.value_channels = value_channels
        self.source_embedding = nn.Embedding(max_num_elements, edge_channels[-1])
        self.target_embedding = nn.Embedding(max_num_elements, edge_channels[-1])
        nn.init.uniform_(self.source_embedding.weight, -0.001, 0.001)
        nn.init.uniform_(self.target_embedding.weight, -0.001, 0.001)
        radial = [edge_channels[0] + 2 * edge_channels[-1], *edge_channels[1:]]
        self.so2_conv_1 = SO2Convolution(
            2 * sphere_channels,
            hidden_channels,
            lmax,
            mmax,
            edge_channels=radial,
            extra_m0_channels=num_heads * alpha_channels + hidden_channels,
        )
        self.alpha_norm = nn.LayerNorm(alpha_channels)
        self.alpha_act = SmoothLeakyReLU()
        bound = 1.0 / math.sqrt(alpha_channels)
        self.alpha_dot = nn.Parameter(
            torch.empty(num_heads, alpha_channels).uniform_(-bound, bound)
        )
        self.alpha_dropout = nn.Dropout(alpha_drop) if alpha_drop > 0.0 else None
        self.s2_act = SeparableS2Activation(edge_grid)
        self.so2_conv_2 = SO2Convolution(hidden_channels, num_heads * value_channels, lmax, mmax)
        self.proj = SO3Linear(num_heads * value_channels, output_channels, lmax)

    def forward(self, x: Tensor, graph: EdgeGraph) -> Tensor:
        src, dst = graph.src, graph.dst
        edge_scalars = torch.cat(
            (
                graph.distance_basis,
                self.source_embedding(graph.atomic_numbers.index_select(0, src)),
                self.target_embedding(graph.atomic_numbers.index_select(0, dst)),
            ),
            dim=1,
        )
        # rotate into the edge frame (kept orders only): [E, K, 2C]
        message = torch.cat(
            (
                torch.bmm(graph.to_frame, gather_nodes(x, src)),
                torch.bmm(graph.to_frame, gather_nodes(x, dst)),
            ),
            dim=2,
        )
        message, extra = self.so2_conv_1(message, edge_scalars)
        num_alpha = self.num_heads * self.alpha_channels
        alpha_features, gates = extra.split([num_alpha, extra.shape[1] - num_alpha], dim=1)
        message = self.s2_act(gates, message)
        message, _ = self.so2_conv_2(message)

        logits = self.alpha_act(
            self.alpha_norm(alpha_features.reshape(-1, self.num_heads, self.alpha_channels))
        )
        alpha = segment_softmax(
            torch.einsum("ehc,hc->eh", logits, self.alpha_dot), dst, graph.num_nodes
        )
        if self.alpha_dropout is not None:
            alpha = self.alpha_dropout(alpha)
        num_edges, num_kept = message.shape[:2]
        message = message.view(num_edges, num_kept, self.num_heads, self.value_channels)
        message = (message * alpha.view(num_edges, 1, self.num_heads, 1)).flatten(2)
        message = torch.bmm(graph.from_frame, message)  # [E, (L+1)^2, heads * values]
        return self.proj(sum_to_nodes(message, dst, graph.num_nodes))
