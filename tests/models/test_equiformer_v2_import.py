"""Importing fairchem 1.x EquiformerV2 / EquiformerV2-DeNS checkpoints (import_fairchem.py)."""

from __future__ import annotations

from pathlib import Path

import ase.io
import pytest
import torch
from ase.build import add_adsorbate, fcc111

from dens.data.batch import Batch
from dens.data.structures import atoms_to_data
from dens.models.equiformer_v2 import EquiformerV2, EquiformerV2Settings
from dens.models.equiformer_v2.import_fairchem import (
    CheckpointImportError,
    load_fairchem_checkpoint,
)
from dens.models.graph import edge_vectors, periodic_neighbors
from dens.models.so2.edge_frame import edge_frame, random_helper

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny ops: threads only contend
SMALL = dict(
    num_layers=1,
    lmax=2,
    mmax=1,
    sphere_channels=8,
    attn_hidden_channels=8,
    num_heads=2,
    attn_alpha_channels=4,
    attn_value_channels=4,
    ffn_hidden_channels=8,
    edge_channels=8,
    grid_resolution=8,
    cutoff=6.0,
    max_neighbors=12,
    weight_init="uniform",
)


def reference_config(name: str) -> dict:
    """config['model'] of a fairchem 1.x run with the SMALL architecture."""
    settings = {
        "num_layers": 1,
        "lmax_list": [2],
        "mmax_list": [1],
        "sphere_channels": 8,
        "attn_hidden_channels": 8,
        "num_heads": 2,
        "attn_alpha_channels": 4,
        "attn_value_channels": 4,
        "ffn_hidden_channels": 8,
        "edge_channels": 8,
        "grid_resolution": 8,
        "max_radius": 6.0,
        "max_neighbors": 12,
        "norm_type": "layer_norm_sh",
        "use_grid_mlp": True,
        "weight_init": "uniform",
        "num_distance_basis": 512,
    }
    if name == "hydra":
        return {
            "name": "hydra",
            "backbone": {"model": "equiformer_v2_dens_backbone", **settings},
            "heads": {
                "energy": {"module": "eqV2_DeNS_scalar_head"},
                "forces": {"module": "eqV2_DeNS_vector_head"},
            },
        }
    return {"name": name, **settings}


def fairchem_checkpoint(model: EquiformerV2, name: str) -> dict:
    """A checkpoint laid out like fairchem 1.x BaseTrainer.save from a DDP-wrapped model,
    reference constant buffers included."""
    state = {}
    for key, value in model.state_dict().items():
        if name == "hydra":
            head = {"energy_block": "output_heads.energy.scalar_block"}
            head.update(
                force_block="output_heads.forces.vector_block",
                denoising_pos_block="output_heads.forces.denoising_pos_block",
            )
            first, rest = key.split(".", 1)
            key = f"{head[first]}.{rest}" if first in head else f"backbone.{key}"
        state["module." + key] = value.clone()
    prefix = "module.backbone." if name == "hydra" else "module."
    state[prefix + "distance_expansion.offset"] = model.distance_expansion.offset.clone()
    state[prefix + "blocks.0.ffn.so3_linear_1.expand_index"] = torch.zeros(9, dtype=torch.long)
    return {
        "state_dict": state,
        "config": {"model": reference_config(name)},
        "normalizers": {"energy": {"mean": torch.tensor(-0.75), "rmsd": torch.tensor(2.9)}},
    }


def batch() -> Batch:
    atoms = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    add_adsorbate(atoms, "O", 1.2, "fcc")
    atoms.pbc = True
    atoms.rattle(0.05, seed=0)
    return Batch.from_data_list([atoms_to_data(atoms)])


def dens_model() -> EquiformerV2:
    torch.manual_seed(0)
    model = EquiformerV2(EquiformerV2Settings(**SMALL, force_encoding=True, noise_head=True)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # biases and norms away from their init
    return model


@pytest.mark.parametrize("name", ["equiformer_v2_dens", "hydra"])
def test_a_checkpoint_of_the_same_model_reproduces_it(tmp_path: Path, name: str) -> None:
    model = dens_model()
    path = tmp_path / "checkpoint.pt"
    torch.save(fairchem_checkpoint(model, name), path)
    loaded, info = load_fairchem_checkpoint(path)
    assert info["normalizers"]["energy"] == pytest.approx({"mean": -0.75, "std": 2.9})
    assert info["hyperparameters"]["force_encoding"] and info["hyperparameters"]["noise_head"]
    data, forces = batch(), torch.randn(batch().pos.shape[0], 3)
    with torch.no_grad():
        want = model(data, forces, predict_noise=True)
        got = loaded(data, forces, predict_noise=True)
    for key in want:  # equal up to BLAS summation order
        assert torch.allclose(got[key], want[key], rtol=1e-5, atol=1e-7), key


def test_ema_weights_replace_the_parameters(tmp_path: Path) -> None:
    model = dens_model()
    checkpoint = fairchem_checkpoint(model, "equiformer_v2_dens")
    params = [k for k in checkpoint["state_dict"] if not k.endswith(("offset", "expand_index"))]
    checkpoint["ema"] = {
        "shadow_params": [torch.zeros_like(checkpoint["state_dict"][k]) for k in params]
    }
    torch.save(checkpoint, tmp_path / "ema.pt")
    loaded, info = load_fairchem_checkpoint(tmp_path / "ema.pt")
    assert info["ema"] and all(float(p.abs().max()) == 0 for p in loaded.parameters())
    loaded, info = load_fairchem_checkpoint(tmp_path / "ema.pt", use_ema=False)
    assert not info["ema"] and torch.equal(
        loaded.sphere_embedding.weight, model.sphere_embedding.weight
    )


def test_per_element_energy_references_are_returned_not_loaded(tmp_path: Path) -> None:
    """fairchem's OC22 EquiformerV2 holds frozen E_ref / E_std per element (load_energy_lin_ref),
    which the EMA does not track."""
    model = dens_model()
    checkpoint = fairchem_checkpoint(model, "equiformer_v2_dens")
    params = [k for k in checkpoint["state_dict"] if not k.endswith(("offset", "expand_index"))]
    checkpoint["ema"] = {"shadow_params": [checkpoint["state_dict"][k] for k in params]}
    checkpoint["state_dict"]["module.energy_lin_ref"] = torch.arange(90.0)
    checkpoint["config"]["model"].update(load_energy_lin_ref=True, use_energy_lin_ref=True)
    torch.save(checkpoint, tmp_path / "oc22.pt")
    _, info = load_fairchem_checkpoint(tmp_path / "oc22.pt")
    assert info["ema"] and info["use_energy_lin_ref"]
    assert torch.equal(info["energy_lin_ref"], torch.arange(90.0))


def test_unmatched_missing_and_misshapen_keys_are_named(tmp_path: Path) -> None:
    model = dens_model()
    checkpoint = fairchem_checkpoint(model, "equiformer_v2_dens")
    state = checkpoint["state_dict"]
    state["module.blocks.0.ga.extra_gate.weight"] = torch.zeros(3)
    del state["module.force_block.alpha_dot"]
    state["module.norm.affine_weight"] = torch.zeros(5, 8)
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(CheckpointImportError) as error:
        load_fairchem_checkpoint(tmp_path / "bad.pt")
    message = str(error.value)
    assert "unmatched checkpoint keys: blocks.0.ga.extra_gate.weight" in message
    assert "missing keys: force_block.alpha_dot" in message
    assert "norm.affine_weight: (5, 8) vs (2, 8)" in message


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"norm_type": "rms_norm_sh"}, "norm_type"),
        ({"use_grid_mlp": False}, "use_grid_mlp"),
        ({"lmax_list": [2, 2], "mmax_list": [1, 1]}, "several resolutions"),
        ({"grid_resolution": None}, "grid_resolution None"),
    ],
)
def test_settings_without_a_counterpart_are_refused(
    tmp_path: Path, change: dict, named: str
) -> None:
    checkpoint = fairchem_checkpoint(dens_model(), "equiformer_v2_dens")
    checkpoint["config"]["model"].update(change)
    torch.save(checkpoint, tmp_path / "c.pt")
    with pytest.raises(CheckpointImportError, match=named):
        load_fairchem_checkpoint(tmp_path / "c.pt")


class RunsCode:
    """Unpickling this would call Path.touch(marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_whose_pickle_runs_code_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, path)
    with pytest.raises(CheckpointImportError, match="needs the global getattr"):
        load_fairchem_checkpoint(path)
    assert not marker.exists()


# -- parity with fairchem 1.x (tests/fixtures/equiformer_v2, see its README) ----------------------
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "equiformer_v2"
CHECKPOINTS = [
    ("l4m2", "equiformer_v2"),
    ("l4m2", "equiformer_v2_dens"),
    ("l6m3", "equiformer_v2_dens"),
]


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE / "reference_outputs.pt", weights_only=True)


def fixture_batch(dtype: torch.dtype) -> Batch:
    structures = ase.io.read(FIXTURE / "structures.extxyz", index=":")
    return Batch.from_data_list([atoms_to_data(atoms, dtype) for atoms in structures])


def seeded(model: EquiformerV2, data: Batch, seed: int, *args, **kwargs) -> dict:
    """One forward after torch.manual_seed(seed), no gradient: with ``edge_roll="random"`` the
    edge frames are then the ones the reference drew after the same seed (the roll is the first
    draw of a forward in both, over the same edges in the same order)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(data, *args, **kwargs)


def test_the_random_roll_draws_the_reference_frames(reference: dict) -> None:
    """Same generator state, same edges in the same order: our helper vectors and frames are the
    reference's (fairchem 1.x edge_rot_mat.py init_edge_rot_mat) to float64 round-off."""
    data = fixture_batch(torch.float64)
    src, dst, offset = periodic_neighbors(data, data.pos, 12.0, 20)
    vec = edge_vectors(data, data.pos, src, dst, offset)
    graph = reference["graph"]
    assert torch.equal(torch.stack([src, dst]), graph["edge_index"])
    torch.manual_seed(reference["meta"]["roll_seed"])
    frames = edge_frame(vec, random_helper(vec))
    torch.testing.assert_close(frames, graph["edge_rot_mat"]["float64"], atol=1e-13, rtol=0)


def runs(reference: dict, dtype: torch.dtype):
    """(name, force input, reference outputs key) of the DeNS forwards in the fixture."""
    forces = reference["dens_inputs"]["forces"].to(dtype)
    mask = reference["dens_inputs"]["noise_mask"]
    return [("plain", None), ("denoise_masked", forces * mask[:, None]), ("denoise_all", forces)]


@pytest.mark.parametrize(("config", "kind"), CHECKPOINTS)
@pytest.mark.parametrize(
    ("dtype", "frames", "atol"),
    [
        (torch.float32, "ours", 1e-4),  # our graph and (eval mode) deterministic edge frames
        (torch.float64, "ours", 3e-8),  # the roll changes the S2 grids' aliasing (README: ~1e-8)
        (torch.float32, "reference", 1e-4),  # the reference's roll, drawn by ours
        (torch.float64, "reference", 1e-12),  # the reference's frames: round-off
    ],
)
def test_fixture_outputs_are_reproduced(
    reference: dict,
    config: str,
    kind: str,
    dtype: torch.dtype,
    frames: str,
    atol: float,
) -> None:
    dtype_name = str(dtype).removeprefix("torch.")
    model, info = load_fairchem_checkpoint(FIXTURE / f"checkpoint_{config}_{kind}.pt", dtype=dtype)
    if frames == "reference":
        model.edge_roll = "random"  # with the reference's seed before every forward
    assert info["normalizers"]["energy"] == pytest.approx(
        {"mean": -0.7554450631141663, "std": 2.887317180633545}
    )
    data = fixture_batch(dtype)
    expected = reference[config][kind][dtype_name]
    seed = reference["meta"]["roll_seed"]
    if kind == "equiformer_v2":
        assert not info["hyperparameters"]["noise_head"] and info["ema"]
        out = seeded(model, data, seed)
        torch.testing.assert_close(out["energy"], expected["energy"], atol=atol, rtol=0)
        torch.testing.assert_close(out["forces"], expected["forces"], atol=atol, rtol=0)
        return
    for run, force_input in runs(reference, dtype):
        out = seeded(model, data, seed, force_input, predict_noise=True)
        want = expected[run]
        torch.testing.assert_close(out["energy"], want["energy"], atol=atol, rtol=0)
        torch.testing.assert_close(out["forces"], want["force_head"], atol=atol, rtol=0)
        torch.testing.assert_close(out["noise"], want["noise_head"], atol=atol, rtol=0)


def test_fixture_checkpoint_keys_all_map(tmp_path: Path) -> None:
    """An extra or a missing parameter in a real reference checkpoint is named."""
    checkpoint = torch.load(FIXTURE / "checkpoint_l4m2_equiformer_v2_dens.pt", weights_only=True)
    state = checkpoint["state_dict"]
    state["module.output_heads.forces.vector_block.gate.weight"] = torch.zeros(2)
    del state["module.backbone.blocks.1.norm_2.affine_weight"]
    torch.save(checkpoint, tmp_path / "c.pt")
    with pytest.raises(CheckpointImportError) as error:
        load_fairchem_checkpoint(tmp_path / "c.pt")
    assert "output_heads.forces.vector_block.gate.weight" in str(error.value)
    assert "missing keys: blocks.1.norm_2.affine_weight" in str(error.value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_training_mode_rolls_the_frames_at_random(tmp_path: Path, dtype: torch.dtype) -> None:
    """edge_roll="training" (the default): a new roll in every training forward (from torch's
    global generator, so a seed repeats it), the deterministic frame in eval mode; "random"
    rolls in eval mode too, as the official code. Dropout and drop path off: only the roll
    draws."""
    checkpoint = torch.load(FIXTURE / "checkpoint_l4m2_equiformer_v2.pt", weights_only=True)
    checkpoint["config"]["model"].update(alpha_drop=0.0, drop_path_rate=0.0)
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    model, _ = load_fairchem_checkpoint(tmp_path / "checkpoint.pt", dtype=dtype)
    assert model.edge_roll == "training"
    data = fixture_batch(dtype)

    def forces(seed: int, training: bool) -> torch.Tensor:
        return seeded(model.train(training), data, seed)["forces"]

    assert torch.equal(forces(1, True), forces(1, True))
    rolled = float((forces(1, True) - forces(2, True)).abs().max())
    assert 0 < rolled < 1e-4 * float(forces(1, True).abs().max())  # the S2 grids' aliasing
    assert torch.equal(forces(1, False), forces(2, False))
    model.edge_roll = "random"
    assert not torch.equal(forces(1, False), forces(2, False))


# -- neighbour ties: unrattled OC20 slabs (tests/fixtures/neighbor_ties, see its README) ---------
TIES = Path(__file__).resolve().parents[1] / "fixtures" / "neighbor_ties"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["strict", "non_strict"])
def test_unrattled_slabs_give_the_reference_outputs(
    tmp_path: Path, mode: str, dtype: torch.dtype
) -> None:
    """fairchem 1.x EquiformerV2 on slabs whose fixed atoms sit on lattice sites, strictly 20
    neighbours (OC20 configs) or with the 0.01 Å^2 tolerance (OC22 config): energies to 1e-4
    relative, forces to 1e-4 of the largest, the roll drawn as the reference drew it. Measured:
    <= 2e-7 and 1.8e-6 (float64; what is left is the reference's float32 lattice offsets),
    1.1e-6 and 1.5e-6 (float32). With the tie-breaking before the fixture, the strict forces were
    1.2 (float64) and 1.1 (float32) times the largest force away."""
    reference = torch.load(TIES / "reference_outputs.pt", weights_only=True)
    checkpoint = torch.load(FIXTURE / "checkpoint_l4m2_equiformer_v2.pt", weights_only=True)
    checkpoint["config"]["model"]["enforce_max_neighbors_strictly"] = mode == "strict"
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    model, _ = load_fairchem_checkpoint(tmp_path / "checkpoint.pt", dtype=dtype)
    model.edge_roll = "random"
    structures = ase.io.read(TIES / "structures.extxyz", index=":")
    data = Batch.from_data_list([atoms_to_data(atoms, dtype) for atoms in structures])
    out = seeded(model, data, reference["meta"]["roll_seed"])
    want = reference["equiformer_v2"][mode][str(dtype).removeprefix("torch.")]
    energy_error = (out["energy"] - want["energy"]).abs() / want["energy"].abs()
    assert float(energy_error.max()) < 1e-4
    force_error = (out["forces"] - want["forces"]).abs().max() / want["forces"].abs().max()
    assert float(force_error) < 1e-4
