"""Importing fairchem 1.x EquiformerV2 / EquiformerV2-DeNS checkpoints (import_fairchem.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from ase.build import add_adsorbate, fcc111
from torch_geometric.data import Batch

from dens.data.structures import atoms_to_data
from dens.models.equiformer_v2 import EquiformerV2
from dens.models.equiformer_v2.import_fairchem import (
    CheckpointImportError,
    load_fairchem_checkpoint,
)

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
