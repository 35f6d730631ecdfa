"""Equivariant graph attention with MLP attention and non-linear messages.

Equiformer (Liao & Smidt, ICLR 2023, Sec. 3.3, Fig. 1(c)); for edge j -> i:

    x_ij = Linear_src(x_j) + Linear_dst(x_i)                               (merge)
    h_ij = DTP(x_ij, Y(r_ij); w = RadialMLP(rbf(|r_ij|)))                   (depthwise TP)
    f_ij^(0) = Linear_alpha(h_ij^(0))                   (type-0 part, per head)
    a_ij = softmax_j( w_a . SmoothLeakyReLU(f_ij^(0)) )                      (MLP attention)
    v_ij = Linear_v(DTP'(Gate(Linear(h_ij)), Y(r_ij)))                       (non-linear message)
    y_i = Linear_out( concat_heads sum_j a_ij v_ij )

``attention=False`` replaces the attention weights by a plain sum over neighbours divided by
sqrt(average degree) (an equivariant convolution with the same non-linear messages; with no
layer norm either, the network is SEGNN-like, DeNS Table 5).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dens.models.common.segment_softmax import segment_softmax
from dens.models.equiformer.depthwise_tensor_product import DepthwiseTensorProduct
from dens.models.equiformer.equivariant_dropout import EquivariantDropout
from dens.models.equiformer.gate_activation import Gate, second_moment_scale, smooth_leaky_relu
from dens.models.equiformer.radial_basis import RadialMLP
from dens.models.equiformer.so3_features import Channels, scatter_sum
from dens.models.equiformer.so3_linear import SO3Linear


class GraphAttention(nn.Module):
    """x[l]: [N, 2l+1, channels_in[l]] -> [N, 2l+1, channels_out[l]] (see module doc).

    channels_pre_attn: irreps of x_ij and h_ij's gated part; channels_head: irreps of one
    head's value (``num_heads`` heads); the type-0 channels of a head's value also set the
    width of its attention MLP. fc_neurons: hidden sizes of the radial MLP.
    """

    def __init__(
        self,
        channels_in: Channels,
        channels_out: Channels,
        channels_pre_attn: Channels,
        channels_head: Channels,
        num_heads: int,
        lmax_sh: int,
        num_basis: int,
        fc_neurons: list[int] | tuple[int, ...],
        attention: bool = True,
        alpha_drop: float = 0.0,
        proj_drop: float = 0.0,
        avg_degree: float = 1.0,
        weight_init: str = "normal",
    ) -> None:
        super().__init__()
        if channels_head[0] == 0:
            raise ValueError("irreps_head needs type-0 channels (they drive the attention)")
        self.attention = attention
        self.num_heads = num_heads
        channels_value = tuple(c * num_heads for c in channels_head)
        self.merge_src = SO3Linear(channels_in, channels_pre_attn, True, weight_init)
        self.merge_dst = SO3Linear(channels_in, channels_pre_attn, False, weight_init)
        self.dtp = DepthwiseTensorProduct(channels_pre_attn, lmax_sh, channels_pre_attn)
        self.radial = RadialMLP(num_basis, fc_neurons, self.dtp.weight_numel)
        self.gate = Gate(channels_pre_attn)
        self.linear_gate = SO3Linear(
            self.dtp.channels_out, self.gate.channels_in, True, weight_init
        )
        self.dtp_value = DepthwiseTensorProduct(
            channels_pre_attn, lmax_sh, channels_value, weight_init=weight_init
        )
        self.linear_value = SO3Linear(
            self.dtp_value.channels_out, channels_value, True, weight_init
        )
        if attention:
            self.linear_alpha = SO3Linear(
                (self.dtp.channels_out[0],), (channels_value[0],), True, weight_init
            )
            alpha_dot = torch.empty(num_heads, channels_head[0])
            bound = math.sqrt(6.0 / (num_heads + channels_head[0]))  # Glorot, as GATv2
            self.alpha_dot = nn.Parameter(alpha_dot.uniform_(-bound, bound))
            self.alpha_scale = second_moment_scale(smooth_leaky_relu)
            self.alpha_dropout = nn.Dropout(alpha_drop) if alpha_drop > 0 else None
        self.inv_sqrt_degree = 1.0 / math.sqrt(avg_degree)
        self.proj = SO3Linear(channels_value, channels_out, True, weight_init)
        self.proj_dropout = EquivariantDropout(proj_drop)

    def forward(
        self,
        x: list[Tensor],
        edge_src: Tensor,
        edge_dst: Tensor,
        edge_sh: Tensor,
        edge_basis: Tensor,
    ) -> list[Tensor]:
        """edge_src/edge_dst: [E] (messages flow src -> dst); edge_sh: [E, (lmax_sh+1)^2];
        edge_basis: [E, num_basis]."""
        num_nodes = x[0].shape[0]
        src = self.merge_src(x)
        dst = self.merge_dst(x)
        message = [
            s.index_select(0, edge_src) + d.index_select(0, edge_dst)
            for s, d in zip(src, dst, strict=True)
        ]
        hidden = self.dtp(message, edge_sh, self.radial(edge_basis))
        value = self.gate(self.linear_gate(hidden))
        value = self.linear_value(self.dtp_value(value, edge_sh))  # [E, 2l+1, H*C_head]
        if self.attention:
            n_edges = edge_src.shape[0]
            alpha = self.linear_alpha(hidden[:1])[0].view(n_edges, self.num_heads, -1)
            alpha = smooth_leaky_relu(alpha) * self.alpha_scale
            logits = (alpha * self.alpha_dot).sum(dim=-1)  # [E, H]
            alpha = segment_softmax(logits, edge_dst, num_nodes)
            if self.alpha_dropout is not None:
                alpha = self.alpha_dropout(alpha)
            alpha = alpha.view(n_edges, 1, self.num_heads, 1)
            value = [
                (
                    v.view(n_edges, v.shape[1], self.num_heads, v.shape[2] // self.num_heads)
                    * alpha
                ).flatten(2)
                for v in value
            ]
            aggregated = scatter_sum(value, edge_dst, num_nodes)
        else:
            aggregated = [a * self.inv_sqrt_degree for a in scatter_sum(value, edge_dst, num_nodes)]
        return self.proj_dropout(self.proj(aggregated))
