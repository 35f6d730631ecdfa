"""The frame of an edge: a rotation taking the edge direction onto e3nn's polar axis y.

In that frame the spherical harmonics of the edge vanish for every order m != 0, which is what
makes an SO(2) convolution equal to a full SO(3) tensor product (Passaro & Zitnick, "Reducing
SO(3) convolutions to SO(2)", ICML 2023; EquiformerV2, Liao et al., ICLR 2024, Sec. 3.1).

The frame is fixed up to a roll about the edge, set by a helper vector u: the frame's first
axis is n_x x u. The official code (fairchem 1.x 31c0963, equiformer_v2/edge_rot_mat.py:19-35
``init_edge_rot_mat`` and escn/escn.py:385-400 ``_init_edge_rot_mat``; the DeNS repository
calls the same functions) draws u = ``torch.rand_like(edge_vec) - 0.5``, uniform in a cube, anew
in every forward pass, in training and in evaluation alike; ``random_helper`` and
``least_aligned`` do the same (same distribution, same draws from torch's global generator, so
the same frames for the same generator state and edge order). Without a helper, ``edge_frame``
takes the lab axis on which the edge direction has the smallest component: a deterministic
roll. Outputs depend on the roll only through the sampling grids of the S2 activations in the
edge frame (the SO(2) convolution commutes with rolls exactly): an aliasing error, which the
random roll turns into an augmentation in training.

``EDGE_ROLLS`` names the models' setting (``edge_roll``): "random" rolls in every forward pass,
as the official code; "training" rolls in training mode only and takes the deterministic frame
in evaluation; "fixed" never rolls.

The presets (config/models.yaml) and the constructors' default are "training": training gets
the official augmentation, and evaluation, validation and relaxations are deterministic, so a
checkpoint gives the same numbers on every run and the equivariance tests stay strict. How much
the roll moves eval outputs (float64, one Cu(111)+O slab of tests/fixtures/neighbor_ties, four
rolls; largest force change / largest force, energy change / energy): at the presets' own
initialisation 2.4e-8, 2.6e-8, 5.0e-7 (eqv2-31m, eqv2-83m, eqv2-153m; energies <= 1e-9) and
1e-9 (escn-52m, whose initial forces are ~1e-6); with every weight matrix x 2.5 (activations of
order 1, as after training) 9.0e-3 / 2.1e-3 (eqv2-83m, 18 x 18 grid) and 2.9e-2 / 5.7e-4
(escn-52m: its edge grid has 2 mmax + 1 = 5 points in the roll angle). These are per-atom
aliasing errors of a model trained to be roll-blind; a fixed roll is one draw of them, as each
random roll is, so metrics averaged over a test set agree in expectation while single outputs
move by up to that much. "random" reproduces the official evaluation draw for draw (with
torch's generator in the same state: tests/models/test_equiformer_v2_import.py).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

EdgeRoll = Literal["random", "training", "fixed"]
EDGE_ROLLS: tuple[str, ...] = get_args(EdgeRoll)


def check_edge_roll(edge_roll: str) -> str:
    """``edge_roll`` if it names a setting of ``EDGE_ROLLS``, else ValueError."""
    if edge_roll not in EDGE_ROLLS:
        raise ValueError(f"edge_roll must be one of {EDGE_ROLLS}, got {edge_roll!r}")
    return edge_roll


def rolls(edge_roll: str, training: bool) -> bool:
    """Whether a forward pass in training mode ``training`` draws random rolls."""
    return edge_roll == "random" or (edge_roll == "training" and training)


def random_helper(edge_vec: Tensor) -> Tensor:
    """The official helper vectors: [E, 3] uniform in [-0.5, 0.5)^3, drawn with
    ``torch.rand_like(edge_vec)`` (torch's global generator of edge_vec's device, its dtype)."""
    return torch.rand_like(edge_vec) - 0.5


def least_aligned(helper: Tensor, n_x: Tensor) -> Tensor:
    """The official guard against a helper parallel to the edge (edge_rot_mat.py:20-35): of u
    (normalised), u rotated by 90 degrees about z, (-u_y, u_x, u_z), and u rotated by 90 degrees
    about x, (u_x, -u_z, u_y), the one least aligned with the unit edge n_x, compared in that
    order (a later one replaces the kept one where strictly less aligned). [E, 3] -> [E, 3]."""
    u = helper / helper.norm(dim=-1, keepdim=True)
    about_z = torch.stack((-u[:, 1], u[:, 0], u[:, 2]), dim=-1)
    about_x = torch.stack((u[:, 0], -u[:, 2], u[:, 1]), dim=-1)
    for other in (about_z, about_x):
        worse = (u * n_x).sum(-1).abs() > (other * n_x).sum(-1).abs()
        u = torch.where(worse[:, None], other, u)
    return u


def edge_frame(edge_vec: Tensor, helper: Tensor | None = None) -> Tensor:
    """edge_vec: [E, 3] (non-zero) -> proper rotations R: [E, 3, 3] with R @ edge_vec/|edge_vec| =
    (0, 1, 0).

    Rows of R, as in fairchem 1.x ``init_edge_rot_mat``: (n_z, n_x, -n_y) with n_x the edge
    direction, n_z = n_x x u / |n_x x u| for the helper u, n_y = n_x x n_z. helper: [E, 3]
    (``random_helper``: the official random roll, through ``least_aligned``) or None for the
    lab axis on which n_x has the smallest component.
    """
    n_x = edge_vec / edge_vec.norm(dim=-1, keepdim=True)
    if helper is None:
        u = torch.zeros_like(n_x).scatter_(-1, n_x.abs().argmin(dim=-1, keepdim=True), 1.0)
    else:
        u = least_aligned(helper, n_x)
    n_z = torch.linalg.cross(n_x, u, dim=-1)
    n_z = n_z / n_z.norm(dim=-1, keepdim=True)
    n_y = torch.linalg.cross(n_x, n_z, dim=-1)
    return torch.stack((n_z, n_x, -n_y), dim=1)
