"""Index tables of real spherical-harmonic coefficients and of the orders SO(2) convolutions keep.

A feature of degree <= lmax stores (lmax + 1)^2 coefficients per channel, **l-primary** as in e3nn:
coefficient ``l^2 + l + m`` has degree l and order m = -l..l (for l = 1 the components are x, y, z;
y is e3nn's polar axis). In an edge frame (``edge_frame.py``) an SO(2) convolution keeps the orders
|m| <= mmax and arranges them **m-primary** (order-major), as fairchem 1.x
``CoefficientMappingModule.to_m`` does (equiformer_v2/so3.py)::

    m = 0:  l = 0..lmax                      (real)
    m = 1:  (l, +1) for l = 1..lmax, then (l, -1) for l = 1..lmax
    ...
    m = mmax: (l, +mmax), then (l, -mmax), l = mmax..lmax

so the +m ("real") and -m ("imaginary") coefficients of one order are two contiguous runs. The
number of kept coefficients is K = sum_m (2 - [m = 0]) (lmax - m + 1).
"""

from __future__ import annotations

import torch
from torch import Tensor


def degree_order(lmax: int) -> tuple[Tensor, Tensor]:
    """Degree l and order m of each l-primary coefficient: two long tensors [(lmax + 1)^2]."""
    degree = torch.cat([torch.full((2 * deg + 1,), deg, device="cpu") for deg in range(lmax + 1)])
    order = torch.cat([torch.arange(-deg, deg + 1, device="cpu") for deg in range(lmax + 1)])
    return degree, order


def order_sizes(lmax: int, mmax: int) -> list[int]:
    """Number of degrees carrying order m (= lmax - m + 1) for m = 0..mmax."""
    if not 0 <= mmax <= lmax:
        raise ValueError(f"need 0 <= mmax <= lmax, got lmax={lmax}, mmax={mmax}")
    return [lmax - m + 1 for m in range(mmax + 1)]


def order_major_index(lmax: int, mmax: int) -> Tensor:
    """The kept coefficients (|m| <= mmax) in m-primary order, as l-primary indices: long [K]."""
    index = []
    for m in range(mmax + 1):
        for sign in (1,) if m == 0 else (1, -1):
            index += [deg * deg + deg + sign * m for deg in range(m, lmax + 1)]
    return torch.tensor(index, dtype=torch.long, device="cpu")


def truncation_rescale(lmax: int, mmax: int) -> Tensor:
    """sqrt((2l + 1) / (2 mmax + 1)) for degrees l > mmax, else 1, per kept coefficient (m-primary):
    float64 [K]. fairchem 1.x applies it when a truncated feature leaves the edge frame
    (``get_rotate_inv_rescale``) and to the truncated grid matrices (``SO3_Grid``)."""
    degree, _ = degree_order(lmax)
    deg = degree[order_major_index(lmax, mmax)].to(torch.float64)
    scale = torch.sqrt((2 * deg + 1) / (2 * mmax + 1))
    return torch.where(deg > mmax, scale, torch.ones_like(scale))


def num_coefficients(lmax: int) -> int:
    """(lmax + 1)^2."""
    return (lmax + 1) ** 2


def num_kept(lmax: int, mmax: int) -> int:
    """K, the number of coefficients with |m| <= mmax."""
    return sum((1 if m == 0 else 2) * size for m, size in enumerate(order_sizes(lmax, mmax)))


__all__ = [
    "degree_order",
    "num_coefficients",
    "num_kept",
    "order_major_index",
    "order_sizes",
    "truncation_rescale",
]
