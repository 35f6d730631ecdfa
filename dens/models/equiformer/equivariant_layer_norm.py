"""Equivariant layer normalisation (Equiformer, Liao & Smidt, ICLR 2023, Sec. 3.1).

For each degree l of a feature x_l: [N, 2l+1, C_l] (official ``EquivariantLayerNormV2``,
"component" normalisation):

    l = 0:  x_0 <- x_0 - mean_c x_0[c]
    x_l <- x_l / sqrt(mean_{m,c} x_l[m,c]^2 + eps) * gamma_l[c]   (+ beta[c] for l = 0)

The statistics are invariant under rotation and the output scales each type-l vector by a
scalar, so the layer is equivariant.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dens.models.equiformer.so3_features import Channels


class EquivariantLayerNorm(nn.Module):
    """Layer norm over the channels of each degree; x[l]: [N, 2l+1, C_l] -> same shape."""

    def __init__(self, channels: Channels, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.eps = eps
        self.weight = nn.ParameterList([nn.Parameter(torch.ones(c)) for c in self.channels])
        self.bias = nn.Parameter(torch.zeros(self.channels[0]))

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        out = []
        for deg, (xl, weight) in enumerate(zip(x, self.weight, strict=True)):
            if xl.shape[-1] == 0:
                out.append(xl)
                continue
            if deg == 0:
                xl = xl - xl.mean(dim=-1, keepdim=True)
            inv_rms = torch.rsqrt(xl.pow(2).mean(dim=(-2, -1), keepdim=True) + self.eps)
            xl = xl * inv_rms * weight
            if deg == 0:
                xl = xl + self.bias
            out.append(xl)
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, eps={self.eps}"
