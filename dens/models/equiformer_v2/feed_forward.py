"""Feed-forward network of EquiformerV2 with a separable point-wise MLP on the sphere grid (Liao
et al., ICLR 2024, Sec. 3.3; fairchem 1.x ``FeedForwardNetwork`` with ``use_grid_mlp: True``,
``use_sep_s2_act: True``, the setting of every official OC20/OC22 config).

    h = SO3Linear_1(x);  g = MLP(sample(h)) point-wise on the grid;  h' = project(g)
    h'[l = 0] = SiLU(Linear(x[l = 0]))         (separable: scalars bypass the grid)
    out = SO3Linear_2(h')
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dens.models.so2.sphere_grid import SphereGrid
from dens.models.so3.so3_linear import SO3Linear


class FeedForwardNetwork(nn.Module):
    """x: [N, (lmax + 1)^2, C] -> [N, (lmax + 1)^2, C_out]; ``grid`` samples all orders (mmax =
    lmax). Parameter names as the reference: so3_linear_1, scalar_mlp.0, grid_mlp.{0,2,4},
    so3_linear_2."""

    def __init__(
        self,
        sphere_channels: int,
        hidden_channels: int,
        output_channels: int,
        lmax: int,
        grid: SphereGrid,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.so3_linear_1 = SO3Linear(sphere_channels, hidden_channels, lmax)
        self.scalar_mlp = nn.Sequential(nn.Linear(sphere_channels, hidden_channels), nn.SiLU())
        self.grid_mlp = nn.Sequential(
            nn.Linear(hidden_channels, hidden_channels, bias=False),
            nn.SiLU(),
            nn.Linear(hidden_channels, hidden_channels, bias=False),
            nn.SiLU(),
            nn.Linear(hidden_channels, hidden_channels, bias=False),
        )
        self.so3_linear_2 = SO3Linear(hidden_channels, output_channels, lmax)

    def forward(self, x: Tensor) -> Tensor:
        scalars = self.scalar_mlp(x[:, 0])
        grid = self.grid_mlp(self.grid.sample(self.so3_linear_1(x)))
        higher = self.grid.project(grid, skip=1)
        return self.so3_linear_2(torch.cat((scalars.unsqueeze(1), higher), dim=1))
