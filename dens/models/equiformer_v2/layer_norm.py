"""Separable layer normalisation of spherical-harmonic features (EquiformerV2, Liao et al., ICLR
2024, Sec. 3.3 and Fig. 1(c); fairchem 1.x ``EquiformerV2`` ``norm_type: layer_norm_sh``,
equiformer_v2/layer_norm.py ``EquivariantLayerNormArraySphericalHarmonics``).

l = 0: an ordinary LayerNorm over channels. l > 0: all degrees together are divided by one
root-mean-square per node, sqrt(mean_c sum_{l>0} mean_m x_{lmc}^2 / lmax + eps) (each degree
weighted equally: "std_balance_degrees"), then scaled by a learned weight per (degree, channel).
No bias for l > 0 and no centring, so rotations commute with it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dens.models.so2.coefficients import degree_order


class EquivariantLayerNormSH(nn.Module):
    """x: [N, (lmax + 1)^2, C] -> same shape. Parameters ``norm_l0`` (LayerNorm) and
    ``affine_weight`` [lmax, C], as the reference."""

    def __init__(self, lmax: int, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        if lmax < 1:
            raise ValueError(f"EquivariantLayerNormSH needs lmax >= 1, got {lmax}")
        self.lmax, self.num_channels, self.eps = lmax, num_channels, eps
        self.norm_l0 = nn.LayerNorm(num_channels, eps=eps)
        self.affine_weight = nn.Parameter(torch.ones(lmax, num_channels))
        degree = degree_order(lmax)[0][1:]
        balance = 1.0 / ((2 * degree + 1).to(torch.float64) * lmax)  # cast when used
        self.register_buffer("balance", balance, persistent=False)
        self.register_buffer("expand_index", degree - 1, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x0 = self.norm_l0(x[:, :1])
        rest = x[:, 1:]
        mean_sq = (
            torch.einsum("nic,i->n", rest.pow(2), self.balance.to(x.dtype)) / self.num_channels
        )
        scale = (mean_sq + self.eps).pow(-0.5).view(-1, 1, 1)
        weight = self.affine_weight.index_select(0, self.expand_index)  # [(L+1)^2 - 1, C]
        return torch.cat((x0, rest * (scale * weight)), dim=1)

    def extra_repr(self) -> str:
        return f"lmax={self.lmax}, num_channels={self.num_channels}, eps={self.eps}"
