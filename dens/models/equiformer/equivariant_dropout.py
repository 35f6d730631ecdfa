"""Stochastic depth and dropout that preserve equivariance (Equiformer, Sec. 3.4 / App.).

- ``GraphDropPath``: stochastic depth (Huang et al., 2016) per structure: the residual branch
  of a whole structure is dropped with probability p and otherwise scaled by 1/(1-p).
- ``EquivariantDropout``: drops whole type-l vectors (one mask value per node and channel,
  shared by the 2l+1 components) and scales the rest by 1/(1-p).

Both are the identity in eval mode or with p = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GraphDropPath(nn.Module):
    """x[l]: [N, 2l+1, C_l], batch: [N] (structure index of each node) -> same shapes."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: list[Tensor], batch: Tensor, num_graphs: int) -> list[Tensor]:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.bernoulli(x[0].new_full((num_graphs,), keep)) / keep
        node_mask = mask[batch].view(-1, 1, 1)
        return [xl * node_mask for xl in x]

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class EquivariantDropout(nn.Module):
    """x[l]: [N, 2l+1, C_l] -> same shapes, whole type-l vectors dropped."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        out = []
        for xl in x:
            mask = torch.bernoulli(xl.new_full((xl.shape[0], 1, xl.shape[-1]), keep)) / keep
            out.append(xl * mask)
        return out

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
