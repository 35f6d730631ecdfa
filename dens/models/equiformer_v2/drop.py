"""Stochastic depth and dropout of EquiformerV2 features [N, (lmax + 1)^2, C] (fairchem 1.x
equiformer_v2/drop.py): both keep equivariance by dropping whole structures or whole channels."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GraphDropPath(nn.Module):
    """x: [N, ...], batch: [N] -> x with the residual branch of each structure dropped with
    probability p and otherwise scaled by 1 / (1 - p) (training only)."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.bernoulli(x.new_full((num_graphs,), keep)) / keep
        return x * mask.index_select(0, batch).view(-1, *([1] * (x.dim() - 1)))


class ChannelDropout(nn.Module):
    """x: [N, (lmax + 1)^2, C] -> one mask value per (node, channel), shared by all coefficients
    (``EquivariantDropoutArraySphericalHarmonics``, training only)."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"proj_drop must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        return x * (torch.bernoulli(x.new_full((x.shape[0], 1, x.shape[2]), keep)) / keep)
