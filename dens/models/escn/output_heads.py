"""eSCN's energy and force heads: point-wise MLPs on node features sampled at fixed points.

fairchem 1.x escn/escn.py (``EnergyBlock``, ``ForceBlock``, same parameter names) samples the
node features at P points p_k of the sphere (``sphere_points``: a Fibonacci spiral whose points
are scaled by a density weight, scn/sampling.py ``CalcSpherePoints``), with e3nn's
spherical harmonics of the unnormalised points ("integral" normalisation,
``normalize=False``), and applies, per node and point,

    h_k = fc3(SiLU(fc2(SiLU(fc1(x(p_k))))))   (fc3: C -> 1, no bias)
    E_i = sum_k h_k / P,        F_i = sum_k h_k p_k / P.

The DeNS noise head of eSCN is a second ``ForceBlock`` (DeNS App. D.1: "the same module as
force prediction"; atomicarchitects/DeNS model/escn/escn_denoising.py ``denoising_pos_block``).
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import Tensor, nn
from torch.nn import functional as F


def sphere_points(num_points: int) -> Tensor:
    """The reference's weighted Fibonacci points: float64 [P, 3] (not unit vectors: each is
    scaled by P w_k / sum w, w_k the inverse of a Gaussian point density)."""
    golden_ratio = (1 + 5**0.5) / 2
    i = torch.arange(num_points, dtype=torch.float64, device="cpu").view(-1, 1)
    theta = 2 * math.pi * i / golden_ratio
    phi = torch.arccos(1 - 2 * (i + 0.5) / num_points)
    points = torch.cat(
        (torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)), 1
    )
    density = torch.exp(-((points[None] - points[:, None]) ** 2).sum(-1) / (0.5 * 0.3)).sum(1)
    weight = 1.0 / density
    return points * (num_points * weight / weight.sum()).view(-1, 1)


class SphereSampler(nn.Module):
    """Node features [N, (lmax + 1)^2, C] -> values at the sphere points [N, P, C]. Buffers
    (float64, cast when used): ``points`` [P, 3], ``harmonics`` [P, (lmax + 1)^2]."""

    def __init__(self, lmax: int, num_points: int) -> None:
        super().__init__()
        points = sphere_points(num_points)
        harmonics = o3.spherical_harmonics(list(range(lmax + 1)), points, normalize=False)
        self.register_buffer("points", points, persistent=False)
        self.register_buffer("harmonics", harmonics, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("nkc,pk->npc", x, self.harmonics.to(x.dtype))


class PointMLP(nn.Module):
    """Values at the points [N, P, C] -> h [N, P]: fc3(SiLU(fc2(SiLU(fc1(.)))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels)
        self.fc2 = nn.Linear(channels, channels)
        self.fc3 = nn.Linear(channels, 1, bias=False)

    def forward(self, x_points: Tensor) -> Tensor:
        return self.fc3(F.silu(self.fc2(F.silu(self.fc1(x_points)))))[..., 0]


class EnergyBlock(PointMLP):
    """[N, P, C] -> per-node energies [N]: the mean of h over the points."""

    def forward(self, x_points: Tensor) -> Tensor:
        return super().forward(x_points).mean(dim=1)


class ForceBlock(PointMLP):
    """[N, P, C], points [P, 3] -> per-node vectors [N, 3]: sum_k h_k p_k / P."""

    def forward(self, x_points: Tensor, points: Tensor) -> Tensor:
        h = super().forward(x_points)
        return h @ points.to(h.dtype) / points.shape[0]
