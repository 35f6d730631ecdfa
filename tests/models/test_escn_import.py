"""Importing fairchem 1.x eSCN / DeNS eSCN checkpoints (dens/models/escn/import_fairchem.py) and
parity with the reference (tests/fixtures/escn, see its README)."""

from __future__ import annotations

from pathlib import Path

import ase.io
import pytest
import torch

from dens.data.batch import Batch
from dens.data.structures import atoms_to_data
from dens.models.escn import network
from dens.models.escn.import_fairchem import CheckpointImportError, load_fairchem_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny ops: threads only contend
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE = FIXTURES / "escn"
STRUCTURES = FIXTURES / "equiformer_v2"  # the same three slabs, graph and DeNS inputs


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE / "reference_outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def structures_reference() -> dict:
    return torch.load(STRUCTURES / "reference_outputs.pt", weights_only=True)


def fixture_batch(dtype: torch.dtype) -> Batch:
    structures = ase.io.read(STRUCTURES / "structures.extxyz", index=":")
    return Batch.from_data_list([atoms_to_data(atoms, dtype) for atoms in structures])


def use_reference_frames(
    monkeypatch: pytest.MonkeyPatch, graph: dict, frames: torch.Tensor
) -> None:
    """Make the model rotate each edge with the frame the reference drew (same roll): our graph
    lists the same edges in another order, so each of ours takes the reference edge of the same
    target with the nearest edge vector (exact in float64, float32 round-off otherwise)."""
    ref_dst, ref_vec = graph["edge_index"][1], graph["edge_distance_vec"]
    seen: dict = {}

    def periodic_graph(*args, **kwargs):
        src, dst, vec = network.periodic_graph.__wrapped__(*args, **kwargs)
        seen["dst"] = dst
        return src, dst, vec

    def edge_frame(vec: torch.Tensor) -> torch.Tensor:
        same_target = seen["dst"].unsqueeze(1) == ref_dst.unsqueeze(0)  # [E, E_ref]
        distance = torch.cdist(vec.double(), ref_vec).masked_fill(~same_target, float("inf"))
        nearest = distance.min(dim=1)
        assert float(nearest.values.max()) < 1e-4, "an edge the reference does not have"
        return frames[nearest.indices].to(vec.dtype)

    periodic_graph.__wrapped__ = network.periodic_graph
    monkeypatch.setattr(network, "periodic_graph", periodic_graph)
    monkeypatch.setattr(network, "edge_frame", edge_frame)


def outputs(model, data, reference, structures_reference, kind, dtype_name):
    """(ours, theirs) per output of the fixture's forwards."""
    dtype = data.pos.dtype
    if kind == "escn":
        with torch.no_grad():
            out = model(data)
        want = reference["escn"][dtype_name]
        return [(out[k], want[k]) for k in ("energy", "forces")]
    forces = structures_reference["dens_inputs"]["forces"].to(dtype)
    mask = structures_reference["dens_inputs"]["noise_mask"]
    pairs = []
    for run, force_input in (
        ("plain", None),
        ("denoise_masked", forces * mask[:, None]),
        ("denoise_all", forces),
    ):
        with torch.no_grad():
            out = model(data, force_input, predict_noise=True)
        want = reference["escn_dens"][dtype_name][run]
        pairs += [(out["energy"], want["energy"]), (out["forces"], want["force_head"])]
        pairs += [(out["noise"], want["noise_head"])]
    return pairs


@pytest.mark.parametrize("kind", ["escn", "escn_dens"])
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-4), (torch.float64, 1e-12)])
def test_fixture_outputs_are_reproduced_with_the_reference_frames(
    reference: dict,
    structures_reference: dict,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    dtype: torch.dtype,
    atol: float,
) -> None:
    """Same weights, graph and edge frames: the reference's float32 outputs to 1e-4 (forces
    0.2-1.5 in normalised units); float64 to round-off."""
    dtype_name = str(dtype).removeprefix("torch.")
    frames = reference["edge_rot_mat"][dtype_name]
    use_reference_frames(monkeypatch, structures_reference["graph"], frames)
    model, info = load_fairchem_checkpoint(FIXTURE / f"checkpoint_{kind}.pt", dtype=dtype)
    assert info["ema"] == (kind == "escn")
    assert info["hyperparameters"]["noise_head"] == (kind == "escn_dens")
    assert info["normalizers"]["energy"] == pytest.approx(
        {"mean": -0.7554450631141663, "std": 2.887317180633545}
    )
    for ours, theirs in outputs(
        model, fixture_batch(dtype), reference, structures_reference, kind, dtype_name
    ):
        torch.testing.assert_close(ours, theirs.to(dtype), atol=atol, rtol=0)


def test_our_own_frames_differ_only_by_the_roll(
    reference: dict, structures_reference: dict
) -> None:
    """With our deterministic frames the outputs differ from the reference's by at most what
    another random roll changes in the reference itself (README: roll sensitivity)."""
    model, _ = load_fairchem_checkpoint(FIXTURE / "checkpoint_escn.pt", dtype=torch.float64)
    roll = reference["roll_sensitivity"]["float64"]
    (energy, want_energy), (forces, want_forces) = outputs(
        model, fixture_batch(torch.float64), reference, structures_reference, "escn", "float64"
    )
    assert float((energy - want_energy).abs().max()) < 10 * roll["energy"]
    assert float((forces - want_forces).abs().max()) < 3 * roll["forces"]


def test_unmatched_missing_and_misshapen_keys_are_named(tmp_path: Path) -> None:
    checkpoint = torch.load(FIXTURE / "checkpoint_escn_dens.pt", weights_only=True)
    state = checkpoint["state_dict"]
    state["module.layer_blocks.0.message_block.extra_gate.weight"] = torch.zeros(3)
    del state["module.force_block.fc3.weight"]
    state["module.energy_block.fc1.bias"] = torch.zeros(5)
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(CheckpointImportError) as error:
        load_fairchem_checkpoint(tmp_path / "bad.pt")
    message = str(error.value)
    assert "unmatched checkpoint keys: layer_blocks.0.message_block.extra_gate.weight" in message
    assert "missing keys: force_block.fc3.weight" in message
    assert "energy_block.fc1.bias: (5,) vs (8,)" in message


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"name": "scn"}, "model 'scn'"),
        ({"distance_function": "sigmoid"}, "distance_function"),
        ({"lmax_list": [4, 4], "mmax_list": [2, 2]}, "several resolutions"),
        ({"cutoff": 8.0}, "distance_expansion.offset differs"),
        ({"num_sphere_samples": 64}, "sphere_points differs"),
    ],
)
def test_settings_without_a_counterpart_are_refused(
    tmp_path: Path, change: dict, named: str
) -> None:
    checkpoint = torch.load(FIXTURE / "checkpoint_escn.pt", weights_only=True)
    checkpoint["config"]["model"].update(change)
    torch.save(checkpoint, tmp_path / "c.pt")
    with pytest.raises(CheckpointImportError, match=named):
        load_fairchem_checkpoint(tmp_path / "c.pt")


def test_a_dens_model_without_force_encoding_folds_the_encoder_bias(tmp_path: Path) -> None:
    """use_force_encoding False: the reference still adds force_embedding's l = 0 bias."""
    checkpoint = torch.load(FIXTURE / "checkpoint_escn_dens.pt", weights_only=True)
    checkpoint["config"]["model"]["use_force_encoding"] = False
    torch.save(checkpoint, tmp_path / "c.pt")
    model, info = load_fairchem_checkpoint(tmp_path / "c.pt", dtype=torch.float64)
    assert not info["hyperparameters"]["force_encoding"] and model.force_embedding is None
    full, _ = load_fairchem_checkpoint(FIXTURE / "checkpoint_escn_dens.pt", dtype=torch.float64)
    data = fixture_batch(torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(data)["forces"], full(data)["forces"])
