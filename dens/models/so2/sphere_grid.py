"""Sampling a spherical-harmonic feature on a grid of the sphere and projecting it back.

The S2 activation of EquiformerV2 (Liao et al., ICLR 2024, Sec. 3.2; eSCN, Passaro & Zitnick, ICML
2023) evaluates a feature f = sum_lm c_lm Y_lm on e3nn's (beta, alpha) grid, applies a point-wise
non-linearity and projects back with e3nn's quadrature (``o3.ToS2Grid`` / ``o3.FromS2Grid``,
"component" normalisation). As fairchem 1.x ``SO3_Grid`` (equiformer_v2/so3.py), when only the
orders |m| <= mmax < lmax are kept the degrees l > mmax are scaled by sqrt((2l + 1)/(2 mmax + 1))
on both matrices, and the matrices are built in float32 (the reference's default dtype; a module
cast to float64 then holds the same rounded values).
"""

from __future__ import annotations

import functools

import torch
from e3nn import o3
from torch import Tensor, nn

from dens.models.so2.coefficients import degree_order, order_major_index


@functools.lru_cache(maxsize=16)
def grid_matrices(
    lmax: int, mmax: int, resolution: int, order_major: bool
) -> tuple[Tensor, Tensor]:
    """The sampling matrix [P, K] and the projection matrix [K, P] of ``SphereGrid`` (float32,
    CPU; cached: e3nn derives its Legendre polynomials symbolically, ~0.2 s per call)."""
    res = (resolution, resolution)
    to_grid = o3.ToS2Grid(lmax, res, normalization="component", dtype=torch.float32, device="cpu")
    from_grid = o3.FromS2Grid(
        res, lmax, normalization="component", dtype=torch.float32, device="cpu"
    )
    # [beta, alpha, coefficient]
    to_mat = torch.einsum("mbi,am->bai", to_grid.shb, to_grid.sha)
    from_mat = torch.einsum("am,mbi->bai", from_grid.sha, from_grid.shb)
    degree, order = degree_order(lmax)
    if mmax < lmax:
        scale = torch.sqrt((2 * degree + 1) / (2 * mmax + 1)).to(torch.float32)
        scale = torch.where(degree > mmax, scale, torch.ones_like(scale))
        to_mat, from_mat = to_mat * scale, from_mat * scale
    keep = (
        order_major_index(lmax, mmax) if order_major else torch.nonzero(order.abs() <= mmax)[:, 0]
    )
    return to_mat[..., keep].flatten(0, 1), from_mat[..., keep].flatten(0, 1).T.contiguous()


class SphereGrid(nn.Module):
    """x: [M, K, C] coefficients of M features -> grid [P, M, C] (P = resolution^2 points) and
    back.

    lmax, mmax: degrees and orders kept; resolution: points in beta and in alpha; order_major:
    the K = |{(l, m): |m| <= mmax}| coefficients are m-primary (edge-frame features,
    ``coefficients.order_major_index``) instead of l-primary (node features, mmax = lmax).
    Buffers ``to_grid`` [P, K] and ``from_grid`` [K, P].
    """

    def __init__(self, lmax: int, mmax: int, resolution: int, order_major: bool = False) -> None:
        super().__init__()
        self.lmax, self.mmax, self.resolution = lmax, mmax, resolution
        to_grid, from_grid = grid_matrices(lmax, mmax, resolution, order_major)
        self.register_buffer("to_grid", to_grid.clone(), persistent=False)
        self.register_buffer("from_grid", from_grid.clone(), persistent=False)

    def sample(self, x: Tensor) -> Tensor:
        """[M, K, C] -> [P, M, C] (points first: one matrix product for all M features)."""
        m, k, c = x.shape
        return (self.to_grid @ x.transpose(0, 1).reshape(k, m * c)).view(-1, m, c)

    def project(self, grid: Tensor, skip: int = 0) -> Tensor:
        """[P, M, C] -> [M, K - skip, C]: coefficients from index ``skip`` on."""
        p, m, c = grid.shape
        return (self.from_grid[skip:] @ grid.reshape(p, m * c)).view(-1, m, c).transpose(0, 1)

    def extra_repr(self) -> str:
        return f"lmax={self.lmax}, mmax={self.mmax}, resolution={self.resolution}"
