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


class _ScaledBernoulliMask(nn.Module):
    """Masks of Bernoulli(1 - p) draws scaled by 1/(1-p), so that the expectation is unchanged."""

    setting = "dropout probability"

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"{self.setting} must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    @property
    def active(self) -> bool:
        """False in eval mode or with p = 0, where the module is the identity."""
        return self.training and self.drop_prob > 0.0

    def mask(self, like: Tensor, shape: tuple[int, ...]) -> Tensor:
        """A [shape] mask in ``like``'s dtype and device: 0 or 1/(1-p)."""
        keep = 1.0 - self.drop_prob
        return torch.bernoulli(like.new_full(shape, keep)) / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class GraphDropPath(_ScaledBernoulliMask):
    """x[l]: [N, 2l+1, C_l], batch: [N] (structure index of each node) -> same shapes."""

    setting = "drop_path_rate"

    def forward(self, x: list[Tensor], batch: Tensor, num_graphs: int) -> list[Tensor]:
        if not self.active:
            return x
        node_mask = self.mask(x[0], (num_graphs,))[batch].view(-1, 1, 1)
        return [xl * node_mask for xl in x]


class EquivariantDropout(_ScaledBernoulliMask):
    """x[l]: [N, 2l+1, C_l] -> same shapes, whole type-l vectors dropped."""

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        if not self.active:
            return x
        return [xl * self.mask(xl, (xl.shape[0], 1, xl.shape[-1])) for xl in x]
