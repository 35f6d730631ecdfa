"""Degree-wise linear map of spherical-harmonic features stored as one array.

Features of EquiformerV2 and eSCN are arrays [N, (lmax + 1)^2, C] (l-primary coefficients, see
``dens.models.so2.coefficients``). A linear map commuting with rotations mixes channels with one
matrix per degree and adds a bias to l = 0 only: fairchem 1.x ``SO3_LinearV2``
(equiformer_v2/so3.py), same parameter names and shapes (``weight`` [lmax + 1, C_out, C_in]).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dens.models.so2.coefficients import degree_order


class SO3Linear(nn.Module):
    """x: [N, (lmax + 1)^2, C_in] -> [N, (lmax + 1)^2, C_out]."""

    def __init__(self, in_features: int, out_features: int, lmax: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.lmax = in_features, out_features, lmax
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(lmax + 1, out_features, in_features))
        nn.init.uniform_(self.weight, -bound, bound)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.register_buffer("expand_index", degree_order(lmax)[0], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.index_select(0, self.expand_index)  # [(L+1)^2, C_out, C_in]
        out = torch.einsum("nki,koi->nko", x, weight)
        out[:, 0] += self.bias
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, lmax={self.lmax}"
