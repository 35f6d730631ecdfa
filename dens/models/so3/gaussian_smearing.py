"""Gaussian basis of edge lengths: exp(-(d - mu_k)^2 / (2 (w Delta)^2)), mu_k evenly spaced on
[0, cutoff], Delta their spacing, width factor w (fairchem 1.x scn/smearing.py ``GaussianSmearing``,
built by EquiformerV2 with 600 functions and w = 2, by eSCN with cutoff / 0.02 functions)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GaussianSmearing(nn.Module):
    """dist: [E] -> [E, num_basis]. Centres are kept in float64 and cast to ``dist``'s dtype."""

    def __init__(self, cutoff: float, num_basis: int, width: float = 2.0) -> None:
        super().__init__()
        offset = torch.linspace(0.0, cutoff, num_basis, dtype=torch.float64, device="cpu")
        self.coeff = -0.5 / (width * (offset[1] - offset[0])).item() ** 2
        self.register_buffer("offset", offset, persistent=False)

    def forward(self, dist: Tensor) -> Tensor:
        return torch.exp(self.coeff * (dist.unsqueeze(-1) - self.offset.to(dist.dtype)).pow(2))
