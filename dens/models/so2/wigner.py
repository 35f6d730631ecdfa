"""Wigner-D matrices of real spherical harmonics, batched, in e3nn's convention.

e3nn writes a rotation with ZYZ-like angles about its polar axis y:
D^l(alpha, beta, gamma) = Y^l(alpha) X^l(beta) Y^l(gamma), rotations about y, x, y. With J^l the
Wigner-D of a rotation exchanging the x and y axes, X^l(beta) = J^l Y^l(beta) J^l, and Y^l(theta)
acts on orders only: it mixes (l, m) with (l, -m) by cos(m theta), sin(m theta). So

    D^l(alpha, beta, gamma) = Y^l(alpha) J^l Y^l(beta) J^l Y^l(gamma)

(e3nn 0.4 ``wigner_D`` and fairchem 1.x equiformer_v2/wigner.py compute this with stored J^l,
``Jd.pt``). We derive J^l from e3nn's spherical harmonics, Y(Q r) = D(Q) Y(r) solved by least
squares in float64 (exact to rounding; e3nn 0.6's ``wigner_D`` goes through float32 generators),
and expand J Y(beta) J = sum_mu cos(mu beta) C_mu + sin(mu beta) S_mu once, so that a batch of
matrices costs one small matrix product plus element-wise order mixing: no per-degree loop.

``EdgeWigner`` returns only the rows an SO(2) convolution keeps (|m| <= mmax, m-primary, see
``coefficients.py``): W = D(R)[kept] maps l-primary lab coefficients [(L+1)^2] to kept edge-frame
coefficients [K]; W^T (times ``truncation_rescale``) maps them back, as fairchem 1.x
``SO3_Rotation.rotate`` / ``rotate_inv``.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn

from dens.models.so2.coefficients import degree_order, order_major_index

# Rotation exchanging the x and y axes (z -> -z): conjugating a rotation about y by it gives the
# same rotation about x.
_SWAP_XY = ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0))


ZERO_TOLERANCE = 1e-9
"""Entries of the fitted swap matrix below this are zeros (the fit's noise is ~1e-16)."""


def swap_matrix(lmax: int) -> Tensor:
    """Block-diagonal J = D(Q) for degrees 0..lmax, Q the x<->y exchange: float64
    [(lmax + 1)^2, (lmax + 1)^2]. Least squares on Y(Q r_i) = J Y(r_i) at fixed points r_i."""
    q = torch.tensor(_SWAP_XY, dtype=torch.float64, device="cpu")
    generator = torch.Generator().manual_seed(0)
    shape = (4 * (2 * lmax + 1) + 8, 3)
    points = torch.randn(shape, generator=generator, dtype=torch.float64, device="cpu")
    degrees = list(range(lmax + 1))
    y = o3.spherical_harmonics(degrees, points, normalize=True, normalization="component")
    y_rot = o3.spherical_harmonics(degrees, points @ q.T, normalize=True, normalization="component")
    j = torch.linalg.lstsq(y, y_rot).solution.T  # y_rot = y @ J^T
    degree, _ = degree_order(lmax)
    block = degree.unsqueeze(0) == degree.unsqueeze(1)
    # The fit's zeros come out as +-1e-17 noise that LAPACK varies from process to process (its
    # nonzero entries are >= 1/32): exact zeros keep a run's numbers the same in every process.
    exact = block & (j.abs() > ZERO_TOLERANCE)
    return torch.where(exact, j, torch.zeros_like(j))


class EdgeWigner(nn.Module):
    """Kept rows of the Wigner-D matrices of rotations: R [E, 3, 3] -> W [E, K, (lmax + 1)^2].

    Buffers (float64, cast to the rotations' dtype when used): ``beta_basis``
    [2 lmax + 1, K, (lmax + 1)^2], the rows of C_0..C_lmax, S_1..S_lmax; order tables for the
    element-wise Y(alpha), Y(gamma).
    """

    def __init__(self, lmax: int, mmax: int) -> None:
        super().__init__()
        self.lmax, self.mmax = lmax, mmax
        degree, order = degree_order(lmax)
        n = degree.shape[0]
        flip = degree * degree + degree - order  # index of (l, -m)
        j = swap_matrix(lmax)
        # J Y(beta) J, Y(beta)[k, k] = cos(m_k beta), Y(beta)[k, flip k] = -sin(m_k beta)
        basis = torch.zeros(2 * lmax + 1, n, n, dtype=torch.float64, device="cpu")
        for k in range(n):
            mu = int(order[k].abs())
            basis[mu] += torch.outer(j[:, k], j[k, :])
            if order[k] != 0:
                basis[lmax + mu] -= torch.sign(order[k]) * torch.outer(j[:, k], j[flip[k], :])
        rows = order_major_index(lmax, mmax)
        position = torch.full((n,), -1, dtype=torch.long, device="cpu")
        position[rows] = torch.arange(rows.shape[0], device="cpu")
        self.register_buffer("beta_basis", basis[:, rows, :], persistent=False)
        self.register_buffer(
            "frequencies",
            torch.arange(lmax + 1, dtype=torch.float64, device="cpu"),
            persistent=False,
        )
        self.register_buffer("row_order", order[rows].to(torch.float64), persistent=False)
        self.register_buffer("row_flip", position[flip[rows]], persistent=False)
        self.register_buffer("column_order", order.to(torch.float64), persistent=False)
        self.register_buffer("column_flip", flip, persistent=False)

    def forward(self, rotation: Tensor) -> Tensor:
        alpha, beta, gamma = o3.matrix_to_angles(rotation)
        dtype = rotation.dtype
        mu_beta = beta.unsqueeze(-1) * self.frequencies.to(dtype)
        trig = torch.cat((torch.cos(mu_beta), torch.sin(mu_beta[:, 1:])), dim=-1)  # [E, 2L+1]
        basis = self.beta_basis.to(dtype)
        w = (trig @ basis.flatten(1)).view(-1, *basis.shape[1:])
        # right factor Y(gamma): column j <- cos(m_j g) col_j + sin(m_j g) col_flip(j)
        m_gamma = gamma.unsqueeze(-1) * self.column_order.to(dtype)
        w = w * torch.cos(m_gamma).unsqueeze(1) + w[:, :, self.column_flip] * torch.sin(
            m_gamma
        ).unsqueeze(1)
        # left factor Y(alpha): row i <- cos(m_i a) row_i - sin(m_i a) row_flip(i)
        m_alpha = alpha.unsqueeze(-1) * self.row_order.to(dtype)
        return w * torch.cos(m_alpha).unsqueeze(-1) - w[:, self.row_flip, :] * torch.sin(
            m_alpha
        ).unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"lmax={self.lmax}, mmax={self.mmax}"
