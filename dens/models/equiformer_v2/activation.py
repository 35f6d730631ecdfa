"""Non-linearities of EquiformerV2 (Liao et al., ICLR 2024, Sec. 3.2 and 3.3).

- ``SmoothLeakyReLU``: the activation of the attention logits (fairchem 1.x activation.py).
- ``SeparableS2Activation``: l = 0 through SiLU of separate gating scalars; degrees l > 0 through
  the S2 activation: sample the feature on a sphere grid, SiLU point-wise, project back
  (``dens.models.so2.SphereGrid``; fairchem 1.x ``SeparableS2Activation``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dens.models.so2.sphere_grid import SphereGrid


class SmoothLeakyReLU(nn.Module):
    """x -> (1 + a)/2 x + (1 - a)/2 x (2 sigmoid(x) - 1), a = negative_slope."""

    def __init__(self, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        a = self.negative_slope
        return (1 + a) / 2 * x + (1 - a) / 2 * x * (2 * torch.sigmoid(x) - 1)


class SeparableS2Activation(nn.Module):
    """scalars: [E, C], x: [E, K, C] (coefficient 0 is l = 0) -> [E, K, C]."""

    def __init__(self, grid: SphereGrid) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, scalars: Tensor, x: Tensor) -> Tensor:
        higher = self.grid.silu(x, skip=1)
        return torch.cat((F.silu(scalars).unsqueeze(1), higher), dim=1)
