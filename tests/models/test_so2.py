"""The SO(2) mathematics shared by EquiformerV2 and eSCN (dens.models.so2)."""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3

from dens.models.so2 import (
    EdgeWigner,
    SO2Convolution,
    SphereGrid,
    degree_order,
    edge_frame,
    num_kept,
    order_major_index,
    truncation_rescale,
)
from dens.models.so2.edge_frame import (
    EDGE_ROLLS,
    check_edge_roll,
    least_aligned,
    random_helper,
    rolls,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny ops: threads only contend
F64 = torch.float64


def full_wigner(rotation: torch.Tensor, lmax: int) -> torch.Tensor:
    """[E, 3, 3] -> block-diagonal D(R): [E, (lmax+1)^2, (lmax+1)^2] (all orders kept)."""
    wigner = EdgeWigner(lmax, lmax).to(rotation.dtype)
    rows = order_major_index(lmax, lmax)
    d = torch.zeros(rotation.shape[0], (lmax + 1) ** 2, (lmax + 1) ** 2, dtype=rotation.dtype)
    d[:, rows] = wigner(rotation)
    return d


def sh(vectors: torch.Tensor, lmax: int) -> torch.Tensor:
    return o3.spherical_harmonics(
        list(range(lmax + 1)), vectors, normalize=True, normalization="component"
    )


def test_order_major_index_is_the_kept_orders_in_m_primary_order() -> None:
    degree, order = degree_order(3)
    index = order_major_index(3, 2)
    assert index.shape == (num_kept(3, 2),) == (4 + 2 * 3 + 2 * 2,)
    assert sorted(index.tolist()) == torch.nonzero(order.abs() <= 2).squeeze(-1).tolist()
    assert order[index].tolist() == [0, 0, 0, 0, 1, 1, 1, -1, -1, -1, 2, 2, -2, -2]
    assert degree[index].tolist() == [0, 1, 2, 3, 1, 2, 3, 1, 2, 3, 2, 3, 2, 3]
    rescale = truncation_rescale(3, 2)
    assert torch.allclose(rescale[degree[index] == 3], torch.tensor(math.sqrt(7 / 5), dtype=F64))
    assert bool((rescale[degree[index] <= 2] == 1).all())


def test_wigner_d_is_a_representation_in_float64() -> None:
    torch.manual_seed(0)
    r1, r2 = o3.rand_matrix(4, dtype=F64), o3.rand_matrix(4, dtype=F64)
    d1, d2, d12 = full_wigner(r1, 6), full_wigner(r2, 6), full_wigner(r1 @ r2, 6)
    assert torch.allclose(d12, d1 @ d2, atol=1e-12)
    assert torch.allclose(
        d1 @ d1.transpose(1, 2), torch.eye(49, dtype=F64).expand(4, 49, 49), atol=1e-12
    )


def test_wigner_d_rotates_spherical_harmonics_and_agrees_with_e3nn() -> None:
    torch.manual_seed(1)
    rotation = o3.rand_matrix(3, dtype=F64)
    vectors = torch.randn(5, 3, dtype=F64)
    d = full_wigner(rotation, 6)
    for e in range(3):
        assert torch.allclose(sh(vectors @ rotation[e].T, 6), sh(vectors, 6) @ d[e].T, atol=1e-12)
    alpha, beta, gamma = o3.matrix_to_angles(rotation)
    e3nn_d = torch.block_diag(*[o3.wigner_D(deg, alpha[0], beta[0], gamma[0]) for deg in range(7)])
    assert torch.allclose(d[0], e3nn_d, atol=1e-5)  # e3nn 0.6 builds D from float32 generators


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_edge_frame_maps_the_edge_onto_the_polar_axis(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    vec = torch.cat([torch.randn(20, 3, dtype=dtype), torch.eye(3, dtype=dtype) * 2.5])
    frame = edge_frame(vec)
    unit = vec / vec.norm(dim=-1, keepdim=True)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    assert torch.allclose(torch.linalg.det(frame), torch.ones(23, dtype=dtype), atol=tol)
    assert torch.allclose(
        torch.einsum("eij,ej->ei", frame, unit),
        torch.tensor([0, 1.0, 0], dtype=dtype).expand(23, 3),
        atol=tol,
    )
    # in the frame the edge's spherical harmonics have order 0 only
    lmax, mmax = 4, 2
    kept = torch.einsum("ekj,ej->ek", EdgeWigner(lmax, mmax).to(dtype)(frame), sh(vec, lmax))
    assert torch.allclose(kept[:, lmax + 1 :], torch.zeros_like(kept[:, lmax + 1 :]), atol=10 * tol)
    assert torch.allclose(
        kept[:, : lmax + 1],
        torch.sqrt(2 * torch.arange(lmax + 1, dtype=dtype) + 1).expand(23, -1),
        atol=10 * tol,
    )


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_random_rolls_give_frames_of_the_edge(dtype: torch.dtype) -> None:
    """The official random helper (torch.rand_like - 0.5), also parallel to the edge (the
    90-degree rotated fall-backs): proper rotations taking the edge onto y, differing from the
    deterministic frame by a roll about y only."""
    torch.manual_seed(4)
    vec = torch.cat([torch.randn(20, 3, dtype=dtype), torch.eye(3, dtype=dtype)])
    helpers = [random_helper(vec), vec.clone(), -2.0 * vec]  # random, parallel, antiparallel
    unit = vec / vec.norm(dim=-1, keepdim=True)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    fixed = edge_frame(vec)
    for helper in helpers:
        frame = edge_frame(vec, helper)
        assert torch.allclose(torch.linalg.det(frame), torch.ones(23, dtype=dtype), atol=tol)
        on_y = torch.einsum("eij,ej->ei", frame, unit)
        assert torch.allclose(on_y, torch.tensor([0, 1.0, 0], dtype=dtype).expand(23, 3), atol=tol)
        roll = frame @ fixed.transpose(1, 2)  # a rotation about y: y stays, x-z plane turns
        assert torch.allclose(
            roll[:, 1], torch.tensor([0, 1.0, 0], dtype=dtype).expand(23, 3), atol=10 * tol
        )
    helper = random_helper(vec)
    assert helper.dtype == dtype and bool((helper.abs() <= 0.5).all())
    assert not torch.allclose(edge_frame(vec, helper), fixed, atol=1e-2)


def test_the_helper_fall_backs_are_the_officials() -> None:
    """u, then u turned 90 degrees about z, (-u_y, u_x, u_z), then about x, (u_x, -u_z, u_y): a
    later candidate replaces the kept one where strictly less aligned with the edge
    (fairchem 1.x edge_rot_mat.py:20-35)."""
    edge = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0.6, 0.8, 0]], dtype=F64)
    helper = torch.tensor([[2.0, 0, 0], [0, 0, 3.0], [0.0, 0, 1.0]], dtype=F64)
    expected = torch.tensor([[0, 1.0, 0], [0, -1.0, 0], [0, 0, 1.0]], dtype=F64)
    assert torch.equal(least_aligned(helper, edge), expected)


def test_edge_roll_settings() -> None:
    """ "random": every forward pass (the official code); "training": training mode only;
    "fixed": never."""
    table = {(roll, mode): rolls(roll, mode) for roll in EDGE_ROLLS for mode in (True, False)}
    assert table == {
        ("random", True): True,
        ("random", False): True,
        ("training", True): True,
        ("training", False): False,
        ("fixed", True): False,
        ("fixed", False): False,
    }
    assert check_edge_roll("training") == "training"
    with pytest.raises(ValueError, match="edge_roll must be one of"):
        check_edge_roll("always")


def test_sphere_grid_round_trip() -> None:
    torch.manual_seed(3)
    grid = SphereGrid(6, 6, 18)
    x = torch.randn(5, 49, 4)
    assert grid.sample(x).shape == (324, 5, 4)
    assert torch.allclose(grid.project(grid.sample(x)), x, atol=1e-5)
    assert torch.allclose(grid.project(grid.sample(x), skip=1), x[:, 1:], atol=1e-5)
    # truncated, m-primary: both matrices carry sqrt((2l+1)/(2 mmax+1)) for l > mmax
    truncated = SphereGrid(6, 2, 18, order_major=True)
    y = torch.randn(5, num_kept(6, 2), 4)
    scale = truncation_rescale(6, 2).to(torch.float32).view(1, -1, 1)
    assert torch.allclose(truncated.project(truncated.sample(y)), y * scale**2, atol=1e-4)


def test_sphere_grid_values_are_the_function_on_the_sphere() -> None:
    """sample(x) at e3nn's grid points (beta-major) is sum_lm c_l x_lm Y_lm(point), Y with
    "component" normalisation and c_l = 1 / sqrt((2l + 1)(lmax + 1)) (e3nn's ToS2Grid)."""
    grid = SphereGrid(3, 3, 8)
    betas, alphas = o3.s2_grid(8, 8, dtype=F64)
    points = o3.angles_to_xyz(alphas.view(1, -1), betas.view(-1, 1)).reshape(-1, 3)
    x = torch.randn(1, 16, 1, dtype=F64)
    degree, _ = degree_order(3)
    expected = sh(points, 3) @ (x[0, :, 0] / torch.sqrt((2 * degree + 1) * 4.0))
    assert torch.allclose(grid.double().sample(x)[:, 0, 0], expected, atol=1e-5)


def test_so2_convolution_commutes_with_rolls_about_the_edge() -> None:
    torch.manual_seed(4)
    lmax, mmax = 4, 2
    conv = SO2Convolution(3, 5, lmax, mmax, edge_channels=[6, 8], extra_m0_channels=7).double()
    x = torch.randn(10, num_kept(lmax, mmax), 3, dtype=F64)
    edge = torch.randn(10, 6, dtype=F64)
    roll = o3.matrix_y(torch.rand(10, dtype=F64) * 2 * math.pi)  # rotations about the polar axis
    d = EdgeWigner(lmax, mmax).double()(roll)[:, :, order_major_index(lmax, mmax)]  # [E, K, K]
    out, extra = conv(x, edge)
    out_rolled, extra_rolled = conv(torch.bmm(d, x), edge)
    assert torch.allclose(out_rolled, torch.bmm(d, out), atol=1e-12)
    assert torch.allclose(extra_rolled, extra, atol=1e-12)


@pytest.mark.parametrize("lmax", [2, 4, 6])
def test_the_swap_matrix_has_exact_zeros(lmax: int) -> None:
    """The least-squares fit of J gives its zeros as +-1e-17 noise that LAPACK varied from one
    process to the next, so an EquiformerV2 or eSCN run was not the same number for number when
    run twice (float32 Wigner bases differed; mini OC20: val force MAE 32.48154 against 32.48159).
    Every entry is now an exact zero or at least 1/32 in magnitude."""
    from dens.models.so2.wigner import swap_matrix

    j = swap_matrix(lmax)
    assert ((j == 0) | (j.abs() >= 1 / 32 - 1e-12)).all()
    assert torch.allclose(j @ j.T, torch.eye(j.shape[0], dtype=j.dtype), atol=1e-12)


def test_the_float32_wigner_basis_is_the_same_in_every_process() -> None:
    import subprocess
    import sys

    code = (
        "import hashlib, torch\n"
        "from dens.models.so2.wigner import EdgeWigner\n"
        "basis = EdgeWigner(6, 2).beta_basis.float().numpy().tobytes()\n"
        "print(hashlib.sha256(basis).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(3)
    }
    assert len(digests) == 1
