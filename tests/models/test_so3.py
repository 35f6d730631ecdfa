"""What EquiformerV2 and eSCN share on features as one array (dens.models.so3): the DeNS force
encoding of the input stage."""

from __future__ import annotations

import torch

from dens.models.so3.input_stage import encode_forces
from dens.models.so3.so3_linear import SO3Linear


def test_force_encoding_is_the_force_at_l1_and_its_bias_at_l0() -> None:
    """Eq. 5: the l = 1 part of ||f|| Y(f / ||f||) / sqrt(3) is linear in f (encode(2f) -
    encode(0) = 2 (encode(f) - encode(0))); a zero row gives the l = 0 bias only."""
    torch.manual_seed(0)
    linear = SO3Linear(1, 4, lmax=3).double()
    with torch.no_grad():
        linear.bias.normal_()
    forces = torch.randn(5, 3, dtype=torch.float64)
    forces[1] = 0.0
    zero = encode_forces(linear, torch.zeros_like(forces), 3)
    once = encode_forces(linear, forces, 3)
    twice = encode_forces(linear, 2 * forces, 3)
    torch.testing.assert_close(twice[:, 1:4] - zero[:, 1:4], 2 * (once[:, 1:4] - zero[:, 1:4]))
    assert torch.equal(once[1, 0], linear.bias) and not once[1, 1:].any()
    assert torch.equal(zero[:, 1:], torch.zeros_like(zero[:, 1:]))
