"""Radial bases of interatomic distances and the radial MLP of Equiformer.

Bases (``number_of_basis`` functions of the distance d, cutoff r_c):
- ``"exp"`` (ExpNormalSmearing of TorchMD-NET; the official Equiformer MD17 configs):
  phi_k(d) = f_cut(d) exp(-beta (exp(-alpha d) - mu_k)^2), alpha = 5/r_c, mu_k evenly spaced
  in [exp(-r_c), 1], beta = (2 (1 - exp(-r_c)) / K)^-2, f_cut(d) = (cos(pi d/r_c) + 1)/2.
- ``"gaussian"`` (Graphormer; Equiformer QM9/OC20): learnable means, widths and an affine
  map of d/r_c, phi_k = N(a d/r_c + b; mu_k, sigma_k).
- ``"bessel"`` (GemNet spherical Bessel, Equiformer's ``bessel`` variants):
  phi_k(d) = sqrt(2/r_c^3) sin(w_k d/r_c) / (d/r_c) * u(d/r_c), w_k = k pi (learnable) and
  u the polynomial envelope of exponent 5.

``RadialMLP``: Equiformer's radial profile (Sec. 3.3), maps the basis to per-edge tensor
product weights: (Linear -> LayerNorm -> SiLU) per hidden layer, a final Linear without bias
plus a learned offset.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor, nn

BasisType = Literal["exp", "gaussian", "bessel"]
BASIS_TYPES: tuple[str, ...] = get_args(BasisType)


class ExpNormalSmearing(nn.Module):
    """d: [E] -> [E, K]; fixed (non-trainable) means and widths, kept in float64 and cast to
    the distances' dtype, so that a float64 model has the float64 values the official code
    computes in its default dtype (a float32 table cast to float64 differs by ~1e-8)."""

    def __init__(self, num_basis: int, cutoff: float) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.alpha = 5.0 / cutoff
        start = math.exp(-cutoff)
        means = torch.linspace(start, 1.0, num_basis, dtype=torch.float64)
        betas = torch.full(
            (num_basis,), (2.0 / num_basis * (1.0 - start)) ** -2, dtype=torch.float64
        )
        self.register_buffer("means", means, persistent=False)
        self.register_buffer("betas", betas, persistent=False)

    def forward(self, dist: Tensor) -> Tensor:
        d = dist.unsqueeze(-1)
        means, betas = self.means.to(dist.dtype), self.betas.to(dist.dtype)
        f_cut = 0.5 * (torch.cos(d * math.pi / self.cutoff) + 1.0) * (d < self.cutoff)
        return f_cut * torch.exp(-betas * (torch.exp(-self.alpha * d) - means) ** 2)


class GaussianBasis(nn.Module):
    """d: [E] -> [E, K]; Graphormer's learnable Gaussians of d/r_c."""

    def __init__(self, num_basis: int, cutoff: float) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.mean = nn.Parameter(torch.empty(num_basis).uniform_(0.0, 1.0))
        self.std = nn.Parameter(torch.empty(num_basis).uniform_(1.0 / num_basis, 1.0))
        self.weight = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, dist: Tensor) -> Tensor:
        x = self.weight * (dist / self.cutoff).unsqueeze(-1) + self.bias
        std = self.std.abs() + 1e-5
        return torch.exp(-0.5 * ((x - self.mean) / std) ** 2) / (math.sqrt(2 * math.pi) * std)


class BesselBasis(nn.Module):
    """d: [E] -> [E, K]; spherical Bessel functions of order 0 times a polynomial envelope."""

    def __init__(self, num_basis: int, cutoff: float, envelope_exponent: int = 5) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.norm_const = math.sqrt(2.0 / cutoff**3)
        self.frequencies = nn.Parameter(math.pi * torch.arange(1, num_basis + 1).float())
        p = envelope_exponent
        self.p = p
        self.a = -(p + 1) * (p + 2) / 2
        self.b = p * (p + 2)
        self.c = -p * (p + 1) / 2

    def forward(self, dist: Tensor) -> Tensor:
        d = (dist / self.cutoff).unsqueeze(-1)
        env = 1 + self.a * d**self.p + self.b * d ** (self.p + 1) + self.c * d ** (self.p + 2)
        env = torch.where(d < 1, env, torch.zeros_like(env))
        return env * self.norm_const * torch.sin(self.frequencies * d) / d


def radial_basis(basis_type: str, num_basis: int, cutoff: float) -> nn.Module:
    """The basis named ``basis_type`` (one of BASIS_TYPES)."""
    if basis_type == "exp":
        return ExpNormalSmearing(num_basis, cutoff)
    if basis_type == "gaussian":
        return GaussianBasis(num_basis, cutoff)
    if basis_type == "bessel":
        return BesselBasis(num_basis, cutoff)
    raise ValueError(f"basis_type must be one of {BASIS_TYPES}, got {basis_type!r}")


class RadialMLP(nn.Module):
    """[E, num_basis] -> [E, num_out]; hidden sizes ``hidden`` (official fc_neurons)."""

    def __init__(self, num_basis: int, hidden: list[int] | tuple[int, ...], num_out: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = num_basis
        for h in hidden:
            linear = nn.Linear(size, h)
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.LayerNorm(h), nn.SiLU()]
            size = h
        layers.append(nn.Linear(size, num_out, bias=False))
        self.net = nn.Sequential(*layers)
        bound = 1.0 / math.sqrt(size)
        self.offset = nn.Parameter(torch.empty(num_out).uniform_(-bound, bound))

    def forward(self, basis: Tensor) -> Tensor:
        return self.net(basis) + self.offset
