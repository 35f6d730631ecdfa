"""Layout of SO(3)-equivariant features as lists of per-degree tensors.

A feature with irreps ``C_0x0e + C_1x1e + ... + C_Lx{L}e`` is held as a list ``x`` of
per-degree tensors, ``x[l]`` of shape [..., 2l+1, C_l] ("component-major": the 2l+1
components of a type-l vector first, the C_l channels last). Every channel-mixing map is then
one matmul on the last axis and every rotation acts on axis -2 as ``D^l(R) @ x[l]``, where
D^l is e3nn's real Wigner matrix. ``from_e3nn`` converts from e3nn's flat channel-major
layout.

Equiformer's MD17 models (Liao & Smidt, ICLR 2023) label every irrep with even parity
("SE(3)" variant): they are equivariant to rotations and translations, not to reflections.
Irreps strings here follow that convention and only even-parity labels are accepted.
"""

from __future__ import annotations

from e3nn import o3
from torch import Tensor

Channels = tuple[int, ...]
"""Channels per degree: ``(C_0, C_1, ..., C_L)`` for irreps C_0x0e + ... + C_Lx{L}e."""


def parse_irreps(spec: str) -> Channels:
    """Channels per degree of an e3nn irreps string with even parity, e.g. '128x0e+64x1e'."""
    try:
        irreps = o3.Irreps(spec)
    except (ValueError, AssertionError) as err:
        raise ValueError(f"invalid irreps string {spec!r}: {err}") from err
    if len(irreps) == 0:
        raise ValueError(f"irreps string {spec!r} is empty")
    channels = [0] * (irreps.lmax + 1)
    for mul, ir in irreps:
        if ir.p != 1:
            raise ValueError(
                f"irreps {spec!r} has odd parity ({mul}x{ir}); this SE(3) Equiformer uses "
                "even-parity labels only, as the official MD17 configs"
            )
        channels[ir.l] += mul
    return tuple(channels)


def format_irreps(channels: Channels) -> str:
    """Inverse of ``parse_irreps`` (degrees with zero channels are left out)."""
    return "+".join(f"{c}x{deg}e" for deg, c in enumerate(channels) if c > 0)


def feature_dim(channels: Channels) -> int:
    """Total dimension sum_l C_l (2l+1)."""
    return sum(c * (2 * deg + 1) for deg, c in enumerate(channels))


def add_features(a: list[Tensor], b: list[Tensor]) -> list[Tensor]:
    """Degree-wise sum of two features of equal channels."""
    if len(a) != len(b):
        raise ValueError(f"cannot add features of {len(a)} and {len(b)} degrees")
    return [x + y for x, y in zip(a, b, strict=True)]


def scatter_sum(x: list[Tensor], index: Tensor, num_nodes: int) -> list[Tensor]:
    """Sum of edge features x[l]: [E, 2l+1, C] into nodes ``index`` -> [num_nodes, 2l+1, C]."""
    return [xl.new_zeros(num_nodes, *xl.shape[1:]).index_add(0, index, xl) for xl in x]


def from_e3nn(x: Tensor, channels: Channels) -> list[Tensor]:
    """e3nn flat layout [N, dim] -> list of [N, 2l+1, C_l]."""
    if x.shape[-1] != feature_dim(channels):
        raise ValueError(
            f"feature of dim {x.shape[-1]} does not match irreps {format_irreps(channels)}"
        )
    out = []
    start = 0
    for deg, c in enumerate(channels):
        d = 2 * deg + 1
        out.append(x[:, start : start + c * d].reshape(-1, c, d).transpose(1, 2))
        start += c * d
    return out
