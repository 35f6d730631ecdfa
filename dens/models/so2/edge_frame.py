"""The frame of an edge: a rotation taking the edge direction onto e3nn's polar axis y.

In that frame the spherical harmonics of the edge vanish for every order m != 0, which is what
makes an SO(2) convolution equal to a full SO(3) tensor product (Passaro & Zitnick, "Reducing
SO(3) convolutions to SO(2)", ICML 2023; EquiformerV2, Liao et al., ICLR 2024, Sec. 3.1).

The frame is fixed up to a roll about the edge. fairchem 1.x (equiformer_v2/edge_rot_mat.py)
picks the roll from a random helper vector; we pick, deterministically, the lab axis on which the
edge direction has the smallest component. Outputs depend on the roll only through the sampling
grid of the S2 activation in the edge frame (the SO(2) convolution commutes with rolls exactly),
an aliasing error that vanishes as the grid is refined.
"""

from __future__ import annotations

import torch
from torch import Tensor


def edge_frame(edge_vec: Tensor) -> Tensor:
    """edge_vec: [E, 3] (non-zero) -> proper rotations R: [E, 3, 3] with R @ edge_vec/|edge_vec| =
    (0, 1, 0).

    Rows of R, as in fairchem 1.x ``init_edge_rot_mat``: (n_z, n_x, -n_y) with n_x the edge
    direction, n_z = n_x x u / |n_x x u| for the helper axis u, n_y = n_x x n_z.
    """
    n_x = edge_vec / edge_vec.norm(dim=-1, keepdim=True)
    helper = torch.zeros_like(n_x).scatter_(-1, n_x.abs().argmin(dim=-1, keepdim=True), 1.0)
    n_z = torch.linalg.cross(n_x, helper, dim=-1)
    n_z = n_z / n_z.norm(dim=-1, keepdim=True)
    n_y = torch.linalg.cross(n_x, n_z, dim=-1)
    return torch.stack((n_z, n_x, -n_y), dim=1)
