"""How the tests exercise each model family (dens.models.FAMILIES): a tiny float64 model, its
inputs, its equivariance tolerances, its presets' parameter counts and the fairchem checkpoints
its importer maps. tests/models/test_model_contract.py checks every family's contract with them;
a family's own tests reuse its tiny model and inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ase.build import add_adsorbate, fcc100, fcc111

from dens.data.batch import Batch, Data
from dens.data.structures import atoms_to_data

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def molecules(dtype: torch.dtype = torch.float64) -> Batch:
    """Two random H/C/N/O structures in a 4 Å cube, no cell."""
    gen = torch.Generator().manual_seed(0)
    data = []
    for n in (6, 5):
        z = torch.tensor([1, 6, 7, 8])[torch.randint(0, 4, (n,), generator=gen)]
        pos = (4.0 * torch.rand(n, 3, generator=gen, dtype=torch.float64)).to(dtype)
        data.append(Data(pos=pos, atomic_numbers=z, natoms=torch.tensor([n])))
    return Batch.from_data_list(data)


def slabs(dtype: torch.dtype = torch.float64) -> Batch:
    """Two rattled periodic adsorbate+slab structures, one with a skewed cell."""
    a = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    add_adsorbate(a, "O", 1.2, "fcc")
    b = fcc100("Pt", size=(2, 2, 2), vacuum=5.0)
    add_adsorbate(b, "C", 1.9, "ontop")
    out = []
    for seed, atoms in enumerate((a, b)):
        atoms.pbc = True
        atoms.rattle(0.1, seed=seed)
        out.append(atoms_to_data(atoms, dtype))
    return Batch.from_data_list(out)


def scale_matrices(model: torch.nn.Module) -> None:
    """eSCN's own initialisation gives forces of ~1e-4, too small for equivariance errors to
    mean anything: its matrices x 2.5."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(2.5)


ESCN_TINY = dict(
    num_layers=2,
    lmax=2,
    mmax=1,
    sphere_channels=8,
    hidden_channels=8,
    edge_channels=8,
    num_sphere_samples=32,
    cutoff=6.0,
    max_neighbors=12,
)
# eSCN is equivariant only up to two discretisations of the sphere: the fixed points of the
# output heads (num_sphere_samples) and the grids of the S2 activations, whose aliasing makes
# the outputs depend on the edge frames' roll. Both vanish as they are refined
# (tests/models/test_escn.py measures it):
ESCN_FINE = dict(grid_resolution=16, num_sphere_samples=1024)


def eqv2_counts() -> dict[tuple[str, bool], int]:
    """fairchem 1.x's trainable parameters with the official configs (count_reference_parameters
    .py) of the paper presets."""
    counts = json.loads(
        (FIXTURES / "equiformer_v2" / "reference_parameter_counts.json").read_text()
    )
    keys = {
        ("eqv2-83m", False): "83M",
        ("eqv2-83m", True): "89M (DeNS)",
        ("eqv2-153m", False): "153M",
        ("eqv2-153m", True): "160M (DeNS)",
        ("eqv2-122m", False): "122M (OC22)",
        ("eqv2-122m", True): "127M (OC22 DeNS)",
        ("eqv2-31m", False): "31M",
    }
    return {case: counts["models"][key]["trainable_parameters"] for case, key in keys.items()}


def escn_counts() -> dict[tuple[str, bool], int]:
    """The reference's trainable parameters: fairchem 1.x eSCN-L6-M2-Lay12 and the DeNS eSCN."""
    counts = json.loads((FIXTURES / "escn" / "reference_parameter_counts.json").read_text())
    return {
        ("escn-52m", False): counts["52M"]["trainable_parameters"],
        ("escn-52m", True): counts["52M (DeNS)"]["trainable_parameters"],
    }


@dataclass(frozen=True)
class FamilyCase:
    """How the contract exercises one family.

    tiny: hyper-parameters (settings fields) of a small float64 model; structures: its inputs
    (float64); rel: the largest relative equivariance error allowed per output; prepare: applied
    to a tiny model after construction; counts: {(preset, DeNS modules): trainable parameters};
    paper: {(preset, DeNS): the paper's millions} (within 3%); meta: build the counted presets
    on the meta device (no memory); checkpoints: fairchem checkpoints {file: DeNS} the
    family's importer maps; requires: an optional package the family needs."""

    tiny: dict[str, Any]
    structures: Callable[[], Batch]
    rel: dict[str, float]
    counts: Callable[[], dict[tuple[str, bool], int]]
    prepare: Callable[[torch.nn.Module], None] = lambda model: None
    paper: dict[tuple[str, bool], float] = field(default_factory=dict)
    meta: bool = False
    checkpoints: dict[str, bool] = field(default_factory=dict)
    requires: str | None = None


FAMILY_CASES = {
    "equiformer": FamilyCase(
        tiny=dict(
            irreps_node_embedding="8x0e+4x1e+2x2e",
            num_layers=2,
            number_of_basis=8,
            fc_neurons=[8],
            irreps_feature="16x0e",
            irreps_feature_dens="16x0e+4x1e+2x2e",
            irreps_head="4x0e+2x1e+1x2e",
            num_heads=2,
            irreps_mlp_mid="16x0e+8x1e+4x2e",
        ),
        structures=molecules,
        rel={"energy": 1e-12, "forces": 1e-10, "noise": 1e-10},
        counts=lambda: {  # the official code's counts, the force-embedding bias included
            ("l2", False): 3_496_001,
            ("l2", True): 4_000_577,
            ("l3", False): 5_500_865,
            ("l3", True): 6_354_241,
            ("shrunk", False): 119_025,
            ("shrunk", True): 156_881,
        },
        paper={("l2", False): 3.50, ("l2", True): 4.00, ("l3", False): 5.50, ("l3", True): 6.35},
    ),
    "equiformer_v2": FamilyCase(
        # a sphere grid fine enough for equivariance to show at float64 precision
        tiny=dict(
            num_layers=2,
            lmax=2,
            mmax=1,
            sphere_channels=8,
            attn_hidden_channels=8,
            num_heads=2,
            attn_alpha_channels=4,
            attn_value_channels=4,
            ffn_hidden_channels=8,
            edge_channels=8,
            num_distance_basis=32,
            grid_resolution=18,
            cutoff=6.0,
            max_neighbors=12,
            alpha_drop=0.0,
            drop_path_rate=0.0,
        ),
        structures=slabs,
        rel={"energy": 1e-7, "forces": 1e-7, "noise": 1e-7},
        counts=eqv2_counts,
        paper={
            ("eqv2-83m", False): 83,
            ("eqv2-83m", True): 89,
            ("eqv2-153m", False): 153,
            ("eqv2-153m", True): 160,
            ("eqv2-122m", False): 122,
            ("eqv2-122m", True): 127,
            ("eqv2-31m", False): 31,
        },
        meta=True,
        checkpoints={
            "equiformer_v2/checkpoint_l4m2_equiformer_v2.pt": False,
            "equiformer_v2/checkpoint_l4m2_equiformer_v2_dens.pt": True,
        },
    ),
    "escn": FamilyCase(
        # fine sphere discretisations: eSCN is equivariant only up to them
        tiny={**ESCN_TINY, **ESCN_FINE},
        structures=slabs,
        rel={"energy": 5e-5, "forces": 5e-4, "noise": 5e-4},
        prepare=scale_matrices,
        counts=escn_counts,
        paper={("escn-52m", False): 52, ("escn-52m", True): 52},
        meta=True,
        checkpoints={"escn/checkpoint_escn.pt": False, "escn/checkpoint_escn_dens.pt": True},
    ),
    "nequip": FamilyCase(
        tiny=dict(
            num_layers=2,
            l_max=2,
            num_features=[8, 4, 2],
            radial_mlp_width=16,
            avg_num_neighbors=5.0,
            model_dtype="float64",
        ),
        structures=molecules,
        rel={"energy": 1e-12, "forces": 1e-12, "noise": 1e-12},
        # the md17 baseline's 690,712 is left to `dens params` (a 6-layer build costs seconds)
        counts=lambda: {("md17", True): 704_848, ("mini", False): 8_800, ("mini", True): 10_752},
        requires="nequip",
    ),
}
