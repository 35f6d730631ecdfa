"""Sampling a spherical-harmonic feature on a grid of the sphere and projecting it back.

The S2 activation of EquiformerV2 (Liao et al., ICLR 2024, Sec. 3.2; eSCN, Passaro & Zitnick, ICML
2023) evaluates a feature f = sum_lm c_lm Y_lm on e3nn's (beta, alpha) grid, applies a point-wise
non-linearity and projects back with e3nn's quadrature (``o3.ToS2Grid`` / ``o3.FromS2Grid``,
"component" normalisation). As fairchem 1.x ``SO3_Grid`` (equiformer_v2/so3.py), when only the
orders |m| <= mmax < lmax are kept the degrees l > mmax are scaled by sqrt((2l + 1)/(2 mmax + 1))
on both matrices. The matrices are kept in float64 and cast to the features' dtype when used, so
a float64 model samples exactly and a float32 one as the reference does (to rounding).

eSCN's grids (fairchem 1.x escn/so3.py ``SO3_Grid``) differ in three settings, which are
arguments here: a (beta, alpha) grid of 2 (lmax + 1) x (2 mmax + 1) points (2 (lmax + 1) + 1
in alpha when mmax = lmax), e3nn's "integral" normalisation, and no rescaling of l > mmax.
"""

from __future__ import annotations

import functools

import torch
from e3nn import o3
from torch import Tensor, nn
from torch.nn import functional as F

from dens.models.so2.coefficients import degree_order, order_major_index


@functools.lru_cache(maxsize=16)
def grid_matrices(
    lmax: int,
    mmax: int,
    resolution: tuple[int, int],
    order_major: bool,
    normalization: str = "component",
    rescale: bool = True,
) -> tuple[Tensor, Tensor]:
    """The sampling matrix [P, K] and the projection matrix [K, P] of ``SphereGrid`` (float64,
    CPU; cached: e3nn derives its Legendre polynomials symbolically, ~0.2 s per call).
    resolution: points in (beta, alpha)."""
    # e3nn builds parts of the grid (quadrature weights, Legendre tables) in the default dtype
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        to_grid = o3.ToS2Grid(lmax, resolution, normalization=normalization, device="cpu")
        from_grid = o3.FromS2Grid(resolution, lmax, normalization=normalization, device="cpu")
    finally:
        torch.set_default_dtype(default)
    # [beta, alpha, coefficient]
    to_mat = torch.einsum("mbi,am->bai", to_grid.shb, to_grid.sha)
    from_mat = torch.einsum("am,mbi->bai", from_grid.sha, from_grid.shb)
    degree, order = degree_order(lmax)
    if rescale and mmax < lmax:
        scale = torch.sqrt((2 * degree + 1).to(torch.float64) / (2 * mmax + 1))
        scale = torch.where(degree > mmax, scale, torch.ones_like(scale))
        to_mat, from_mat = to_mat * scale, from_mat * scale
    keep = (
        order_major_index(lmax, mmax) if order_major else torch.nonzero(order.abs() <= mmax)[:, 0]
    )
    return to_mat[..., keep].flatten(0, 1), from_mat[..., keep].flatten(0, 1).T.contiguous()


class SphereGrid(nn.Module):
    """x: [M, K, C] coefficients of M features -> grid [P, M, C] (P = points in beta times points
    in alpha) and back.

    lmax, mmax: degrees and orders kept; resolution: points in beta and in alpha, one number for
    a square grid; order_major: the K = |{(l, m): |m| <= mmax}| coefficients are m-primary
    (edge-frame features, ``coefficients.order_major_index``) instead of l-primary (node
    features, mmax = lmax); normalization: e3nn's "component" (EquiformerV2) or "integral"
    (eSCN); rescale: scale degrees l > mmax (EquiformerV2) or not (eSCN).
    Buffers ``to_grid`` [P, K] and ``from_grid`` [K, P].
    """

    def __init__(
        self,
        lmax: int,
        mmax: int,
        resolution: int | tuple[int, int],
        order_major: bool = False,
        normalization: str = "component",
        rescale: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(resolution, int):
            resolution = (resolution, resolution)
        self.lmax, self.mmax, self.resolution = lmax, mmax, tuple(resolution)
        to_grid, from_grid = grid_matrices(
            lmax, mmax, self.resolution, order_major, normalization, rescale
        )
        self.register_buffer("to_grid", to_grid.clone(), persistent=False)
        self.register_buffer("from_grid", from_grid.clone(), persistent=False)

    def sample(self, x: Tensor) -> Tensor:
        """[M, K, C] -> [P, M, C] (points first: one matrix product for all M features)."""
        m, k, c = x.shape
        to_grid = self.to_grid.to(x.dtype)
        return (to_grid @ x.transpose(0, 1).reshape(k, m * c)).view(-1, m, c)

    def project(self, grid: Tensor, skip: int = 0) -> Tensor:
        """[P, M, C] -> [M, K - skip, C]: coefficients from index ``skip`` on."""
        p, m, c = grid.shape
        from_grid = self.from_grid[skip:].to(grid.dtype)
        return (from_grid @ grid.reshape(p, m * c)).view(-1, m, c).transpose(0, 1)

    def silu(self, x: Tensor, skip: int = 0) -> Tensor:
        """project(SiLU(sample(x)), skip): [M, K, C] -> [M, K - skip, C], the S2 activation.

        Computed in blocks of columns small enough for the cache, and the grid values are
        recomputed in the backward pass instead of stored: the [P, M, C] grid never exists
        (memory traffic, not arithmetic, bounds this step). First derivatives only."""
        m, k, c = x.shape
        columns = x.transpose(0, 1).reshape(k, m * c)
        out = GridSiLU.apply(columns, self.to_grid.to(x.dtype), self.from_grid[skip:].to(x.dtype))
        return out.view(-1, m, c).transpose(0, 1)

    def extra_repr(self) -> str:
        return f"lmax={self.lmax}, mmax={self.mmax}, resolution={self.resolution}"


class GridSiLU(torch.autograd.Function):
    """x: [K, n] -> from_grid @ SiLU(to_grid @ x): [K', n], in column blocks (``_blocks``);
    the backward pass recomputes each block's grid values."""

    @staticmethod
    def forward(ctx, x: Tensor, to_grid: Tensor, from_grid: Tensor) -> Tensor:
        ctx.save_for_backward(x, to_grid, from_grid)
        out = x.new_empty(from_grid.shape[0], x.shape[1])
        for block in _blocks(x.shape[1], to_grid.shape[0], x.device):
            out[:, block] = from_grid @ F.silu(to_grid @ x[:, block])
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:
        x, to_grid, from_grid = ctx.saved_tensors
        grad_x = torch.empty_like(x)
        from_grid_t, to_grid_t = from_grid.T, to_grid.T
        for block in _blocks(x.shape[1], to_grid.shape[0], x.device):
            grid = to_grid @ x[:, block]
            grad_grid = torch.ops.aten.silu_backward(from_grid_t @ grad_out[:, block], grid)
            grad_x[:, block] = to_grid_t @ grad_grid
        return grad_x, None, None


def _blocks(columns: int, points: int, device: torch.device) -> list[slice]:
    """Column blocks of ~2^20 grid values (4 MB in float32: cache-sized, and few enough that
    two CPU threads on a busy machine do not wait at hundreds of small parallel regions); on a
    GPU, blocks of up to 2^26 values (usually one)."""
    values = 2**26 if device.type == "cuda" else 2**20
    size = max(1, values // points)
    return [slice(start, min(start + size, columns)) for start in range(0, columns, size)]
