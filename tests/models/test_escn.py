"""eSCN (+ DeNS), what only this family has: an equivariance error that is the discretisation of
the sphere, the Table 5 switches it refuses, gradients in training mode. The contract of every
family (equivariance of every head, DeNS switches, presets and parameter counts, checkpoint
import) is tests/models/test_model_contract.py."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from model_cases import ESCN_FINE, ESCN_TINY, scale_matrices, slabs

from dens.data.batch import Batch
from dens.models.escn import ESCN, ESCNSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny ops: threads only contend
TINY, FINE = ESCN_TINY, ESCN_FINE  # fairchem's sphere grids, 32 head points; fine ones


def model(dtype: torch.dtype, force_encoding: bool, noise_head: bool, **kw) -> ESCN:
    """TINY with its matrices x 2.5 (model_cases.scale_matrices)."""
    torch.manual_seed(0)
    switches = {"force_encoding": force_encoding, "noise_head": noise_head}
    net = ESCN(ESCNSettings(**{**TINY, **kw, **switches}))
    scale_matrices(net)
    return net.to(dtype).eval()


def run(net: ESCN, data: Batch, forces: torch.Tensor | None) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return net(data, forces, predict_noise=net.denoising_pos_block is not None)


def rotation_errors(net: ESCN, dtype: torch.dtype, seed: int) -> dict[str, float]:
    """Largest |out(R x) - R out(x)| / max |out(x)| per output for a random rotation R (cell and
    force input rotated too)."""
    data = slabs(dtype)
    torch.manual_seed(seed)
    forces = torch.randn(data.pos.shape[0], 3, dtype=dtype) if net.force_embedding else None
    rotation = o3.rand_matrix(dtype=dtype)
    rotated = data.clone()
    rotated.pos, rotated.cell = data.pos @ rotation.T, data.cell @ rotation.T
    out = run(net, data, forces)
    out_rot = run(net, rotated, None if forces is None else forces @ rotation.T)
    assert float(out["forces"].abs().max()) > 0.05  # not trivially zero
    errors = {"energy": out_rot["energy"] - out["energy"]}
    for key in ("forces", "noise"):
        if key in out:
            errors[key] = out_rot[key] - out[key] @ rotation.T
    return {k: float(e.abs().max() / out[k].abs().max()) for k, e in errors.items()}


def test_the_equivariance_error_is_the_discretisation_of_the_sphere() -> None:
    """The reference's own discretisation (fairchem's grids, 32 head points here) is
    equivariant to a few % only; refining it shrinks the error by > 30x. A wrong Wigner-D or
    edge frame would leave O(1) errors at any resolution."""
    coarse = rotation_errors(model(torch.float64, True, True), torch.float64, seed=3)
    fine = rotation_errors(model(torch.float64, True, True, **FINE), torch.float64, seed=3)
    assert 1e-3 < coarse["forces"] < 0.1, coarse
    for key in ("forces", "noise"):
        assert fine[key] < coarse[key] / 30, (key, coarse, fine)


def test_table5_switches_are_refused_and_training_mode_backpropagates() -> None:
    for switch in ("attention", "layer_norm"):
        with pytest.raises(ValueError, match="eSCN has no attention"):
            ESCNSettings(**TINY, **{switch: False})
    data = slabs(torch.float32)
    dens = model(torch.float32, True, True).train()
    out = dens(data, torch.randn(data.pos.shape[0], 3), predict_noise=True)
    (out["energy"].sum() + out["forces"].pow(2).sum() + out["noise"].pow(2).sum()).backward()
    grads = {n: p.grad for n, p in dens.named_parameters()}
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads.values())
