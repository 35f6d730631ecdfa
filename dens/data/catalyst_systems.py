"""The systems of mini-OC20 and mini-OC22 (dens.data.catalysts): the two families' metals,
adsorbates, facets and splits, and one system built from its random stream: an fcc slab
(tags 0/1 by layer, the lower layers fixed in mini-OC20) with one or two adsorbates on random
sites, rotated, shifted and rattled (dens.data.catalysts' module notes, "System").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc100, fcc110, fcc111
from ase.constraints import FixAtoms

VACUUM_A = 7.0
FREE_LAYERS = 2
"""Top layers tagged 1 (surface); the layers below are tagged 0 and, in mini-OC20, fixed."""
RATTLE_A = 0.03
HEIGHT_RANGE_A = (1.2, 2.0)
SHIFT_A = 0.3
BUILDERS = {"fcc111": fcc111, "fcc100": fcc100, "fcc110": fcc110}

# Adsorbates with the binding atom first (at the origin) and the rest above it (+z), Å.
ADSORBATES: dict[str, tuple[str, list[tuple[float, float, float]]]] = {
    "H": ("H", [(0, 0, 0)]),
    "O": ("O", [(0, 0, 0)]),
    "N": ("N", [(0, 0, 0)]),
    "C": ("C", [(0, 0, 0)]),
    "OH": ("OH", [(0, 0, 0), (0, 0, 0.97)]),
    "CO": ("CO", [(0, 0, 0), (0, 0, 1.15)]),
    "CH": ("CH", [(0, 0, 0), (0, 0, 1.09)]),
    "NH": ("NH", [(0, 0, 0), (0, 0, 1.02)]),
    "NO": ("NO", [(0, 0, 0), (0, 0, 1.15)]),
    "CH2": ("CH2", [(0, 0, 0), (0.89, 0, 0.63), (-0.89, 0, 0.63)]),
    "NH2": ("NH2", [(0, 0, 0), (0.81, 0, 0.59), (-0.81, 0, 0.59)]),
    "H2O": ("OH2", [(0, 0, 0), (0.76, 0, 0.59), (-0.76, 0, 0.59)]),
    "CH3": ("CH3", [(0, 0, 0), (1.03, 0, 0.36), (-0.51, 0.89, 0.36), (-0.51, -0.89, 0.36)]),
}

CATEGORIES = ("id", "ood_ads", "ood_cat", "ood_both")


@dataclass(frozen=True)
class Split:
    """A split: its role's size key, whether it holds IS2RE rows, and the categories its systems
    cycle through."""

    size_key: str
    is2re: bool
    categories: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    label: str
    facets: tuple[str, ...]
    metals: tuple[str, ...]
    ood_metals: tuple[str, ...]
    adsorbates: tuple[str, ...]
    ood_adsorbates: tuple[str, ...]
    fixed_layers: bool
    referenced: bool
    two_adsorbate_fraction: float
    splits: dict[str, Split]


OC20 = Family(
    label="mini-OC20",
    facets=("fcc111", "fcc100"),
    metals=("Al", "Cu", "Ag", "Ni", "Pd"),
    ood_metals=("Au", "Pt"),
    adsorbates=("H", "O", "N", "C", "OH", "CO", "CH", "CH3"),
    ood_adsorbates=("NH", "NO", "CH2", "NH2"),
    fixed_layers=True,
    referenced=True,
    two_adsorbate_fraction=0.0,
    splits={
        "train": Split("train_systems", False, ("id",)),
        "val_id": Split("val_systems", False, ("id",)),
        "val_ood_ads": Split("val_systems", False, ("ood_ads",)),
        "val_ood_cat": Split("val_systems", False, ("ood_cat",)),
        "val_ood_both": Split("val_systems", False, ("ood_both",)),
        "s2ef_test": Split("test_systems", False, CATEGORIES),
        "is2re_test": Split("relax_systems", True, CATEGORIES),
        # IS2RE validation (role relax_val), after the splits above: their sids and streams
        # leave every split before them as it was
        "is2re_val_id": Split("relax_val_systems", True, ("id",)),
        "is2re_val_ood_ads": Split("relax_val_systems", True, ("ood_ads",)),
        "is2re_val_ood_cat": Split("relax_val_systems", True, ("ood_cat",)),
        "is2re_val_ood_both": Split("relax_val_systems", True, ("ood_both",)),
    },
)

OC22 = Family(
    label="mini-OC22",
    facets=("fcc110", "fcc100"),
    metals=("Al", "Ag", "Au", "Ni", "Pt"),
    ood_metals=("Cu", "Pd"),
    adsorbates=("H", "O", "C", "OH", "CO", "H2O", "NO"),
    ood_adsorbates=("N", "CH", "NH2"),
    fixed_layers=False,
    referenced=False,
    two_adsorbate_fraction=1 / 3,
    splits={
        "train": Split("train_systems", False, ("id",)),
        "val_id": Split("val_systems", False, ("id",)),
        "val_ood": Split("val_systems", False, CATEGORIES[1:]),
        "s2ef_test_id": Split("test_systems", False, ("id",)),
        "s2ef_test_ood": Split("test_systems", False, CATEGORIES[1:]),
        "is2re_test_id": Split("relax_systems", True, ("id",)),
        "is2re_test_ood": Split("relax_systems", True, CATEGORIES[1:]),
        "is2re_val_id": Split("relax_val_systems", True, ("id",)),
        "is2re_val_ood": Split("relax_val_systems", True, CATEGORIES[1:]),
    },
)

FAMILIES = {"oc20": OC20, "oc22": OC22}


def _molecule(spec: tuple[str, list[tuple[float, float, float]]]) -> Atoms:
    symbols, positions = spec
    return Atoms(symbols, positions=positions)


def _slab(family: Family, metal: str, facet: str, cell: int, layers: int) -> Atoms:
    """The clean slab: periodic in x, y, z, tags 0/1 by layer, FixAtoms on the tag-0 layers
    when the family fixes them."""
    slab = BUILDERS[facet](metal, (cell, cell, layers), vacuum=VACUUM_A)
    slab.pbc = True
    layer = slab.get_tags()  # ase.build: 1 = top layer
    slab.set_tags(np.where(layer <= FREE_LAYERS, 1, 0))
    if family.fixed_layers:
        slab.set_constraint(FixAtoms(mask=layer > FREE_LAYERS))
    return slab


def _choose(family: Family, category: str, rng: np.random.Generator) -> tuple[str, list[str]]:
    """Metal and adsorbates of one system of `category`."""
    ood_cat = category in ("ood_cat", "ood_both")
    ood_ads = category in ("ood_ads", "ood_both")
    metal = str(rng.choice(family.ood_metals if ood_cat else family.metals))
    n_ads = 2 if rng.random() < family.two_adsorbate_fraction else 1
    if ood_ads:
        # at least one held-out adsorbate; a second one may come from either pool
        names = [str(rng.choice(family.ood_adsorbates))]
        if n_ads == 2:
            names.append(str(rng.choice(family.adsorbates + family.ood_adsorbates)))
    else:
        names = [str(rng.choice(family.adsorbates)) for _ in range(n_ads)]
    return metal, names


def _rotate(adsorbate: Atoms, rng: np.random.Generator) -> Atoms:
    adsorbate.rotate(float(rng.uniform(0.0, 360.0)), "z")
    adsorbate.rotate(float(rng.uniform(0.0, 15.0)), "x")
    return adsorbate


def _build_system(
    family: Family, category: str, cell: int, layers: int, rng: np.random.Generator
) -> tuple[Atoms, dict[str, Any]]:
    metal, names = _choose(family, category, rng)
    facet = str(rng.choice(family.facets))
    slab = _slab(family, metal, facet, cell, layers)
    free = slab.get_tags() == 1
    slab.positions[free] += rng.normal(0.0, RATTLE_A, size=(int(free.sum()), 3))
    site_names = sorted(slab.info["adsorbate_info"]["sites"])
    sites = []
    n_slab = len(slab)
    for k, name in enumerate(names):
        site = str(rng.choice(site_names))
        sites.append(site)
        adsorbate = _rotate(_molecule(ADSORBATES[name]), rng)
        offset = (0, 0) if k == 0 else (cell // 2, cell // 2)
        start = len(slab)
        add_adsorbate(
            slab, adsorbate, float(rng.uniform(*HEIGHT_RANGE_A)), site, offset=offset, mol_index=0
        )
        shift = rng.uniform(-SHIFT_A, SHIFT_A, size=2)
        slab.positions[start:, :2] += shift
    tags = slab.get_tags()
    tags[n_slab:] = 2
    slab.set_tags(tags)
    slab.info = {}
    description = {
        "metal": metal,
        "facet": facet,
        "adsorbate": "+".join(names),
        "site": "+".join(sites),
        "category": category,
    }
    return slab, description


def systems_provenance(family: Family, sizes: dict[str, int]) -> dict[str, Any]:
    """How a family's systems are built, for provenance.json."""
    return {
        "facets": list(family.facets),
        "surface_cell": sizes["surface_cell"],
        "layers": sizes["layers"],
        "free_layers": FREE_LAYERS,
        "fixed": "layers below the top FREE_LAYERS (tag 0)" if family.fixed_layers else None,
        "vacuum_A": VACUUM_A,
        "rattle_A": RATTLE_A,
        "adsorbate_height_A": list(HEIGHT_RANGE_A),
        "adsorbate_shift_A": SHIFT_A,
        "two_adsorbate_fraction": family.two_adsorbate_fraction,
        "metals": list(family.metals),
        "ood_metals": list(family.ood_metals),
        "adsorbates": list(family.adsorbates),
        "ood_adsorbates": list(family.ood_adsorbates),
    }
