"""Importing fairchem 1.x EquiformerV2 / EquiformerV2-DeNS checkpoints (import_fairchem.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import ase.io
import pytest
import torch
from ase.build import add_adsorbate, fcc111

from dens.data.batch import Batch
from dens.data.structures import atoms_to_data
from dens.models.equiformer_v2 import EquiformerV2, network
from dens.models.equiformer_v2.import_fairchem import (
    CheckpointImportError,
    load_fairchem_checkpoint,
)

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
    model = EquiformerV2(**SMALL, force_encoding=True, noise_head=True).eval()
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
    with pytest.raises(pickle.UnpicklingError):
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


def use_reference_frames(monkeypatch: pytest.MonkeyPatch, reference: dict, dtype_name: str) -> None:
    """Make the model rotate each edge with the frame the reference drew (same roll), found
    by (target, edge vector) since our graph lists the same edges in another order."""
    graph = reference["graph"]
    frames = graph["edge_rot_mat"][dtype_name]
    key = {
        (int(dst), *torch.round(vec * 1e5).long().tolist()): e
        for e, (dst, vec) in enumerate(
            zip(graph["edge_index"][1], graph["edge_distance_vec"], strict=True)
        )
    }
    seen: dict = {}

    def periodic_graph(*args, **kwargs):
        src, dst, vec = network.periodic_graph.__wrapped__(*args, **kwargs)
        seen["dst"] = dst
        return src, dst, vec

    def edge_frame(vec: torch.Tensor) -> torch.Tensor:
        rows = [
            key[(int(d), *torch.round(v.double() * 1e5).long().tolist())]
            for d, v in zip(seen["dst"], vec, strict=True)
        ]
        return frames[rows].to(vec.dtype)

    periodic_graph.__wrapped__ = network.periodic_graph
    monkeypatch.setattr(network, "periodic_graph", periodic_graph)
    monkeypatch.setattr(network, "edge_frame", edge_frame)


def runs(reference: dict, dtype: torch.dtype):
    """(name, force input, reference outputs key) of the DeNS forwards in the fixture."""
    forces = reference["dens_inputs"]["forces"].to(dtype)
    mask = reference["dens_inputs"]["noise_mask"]
    return [("plain", None), ("denoise_masked", forces * mask[:, None]), ("denoise_all", forces)]


@pytest.mark.parametrize(("config", "kind"), CHECKPOINTS)
@pytest.mark.parametrize(
    ("dtype", "frames", "atol"),
    [
        (torch.float32, "ours", 1e-4),  # our graph and edge frames
        (torch.float64, "ours", 3e-8),  # the roll changes the S2 grids' aliasing (README: ~1e-8)
        (torch.float64, "reference", 1e-12),  # the reference's frames: round-off
    ],
)
def test_fixture_outputs_are_reproduced(
    reference: dict,
    monkeypatch: pytest.MonkeyPatch,
    config: str,
    kind: str,
    dtype: torch.dtype,
    frames: str,
    atol: float,
) -> None:
    dtype_name = str(dtype).removeprefix("torch.")
    if frames == "reference":
        use_reference_frames(monkeypatch, reference, dtype_name)
    model, info = load_fairchem_checkpoint(FIXTURE / f"checkpoint_{config}_{kind}.pt", dtype=dtype)
    assert info["normalizers"]["energy"] == pytest.approx(
        {"mean": -0.7554450631141663, "std": 2.887317180633545}
    )
    data = fixture_batch(dtype)
    expected = reference[config][kind][dtype_name]
    with torch.no_grad():
        if kind == "equiformer_v2":
            assert not info["hyperparameters"]["noise_head"] and info["ema"]
            out = model(data)
            torch.testing.assert_close(out["energy"], expected["energy"], atol=atol, rtol=0)
            torch.testing.assert_close(out["forces"], expected["forces"], atol=atol, rtol=0)
            return
        for run, force_input in runs(reference, dtype):
            out = model(data, force_input, predict_noise=True)
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
