"""mini-OC20 and mini-OC22: adsorbate + metal-slab relaxations and MD computed with ASE's EMT.

The embedded scales (smoke, mini) stand in for the Open Catalyst data with systems built and
computed on the machine, in the layout of the paper's data (one aselmdb per split, rows as
fairchem's AseDBDataset reads them):

System
    An fcc metal slab (``ase.build.fcc111`` / ``fcc100`` / ``fcc110``; ``surface_cell`` x
    ``surface_cell`` surface cells, ``layers`` layers, 7 Å of vacuum on each side, periodic in
    all three directions as OC20 stores it) with one or two small adsorbates (H, O, N, C, OH,
    CO, CH, NH, NO, CH2, NH2, CH3, H2O; binding atom first) placed with
    ``ase.build.add_adsorbate`` on a random site of the facet (top, bridge, hollow ...) at a
    random height (1.2-2.0 Å), rotated at random about the surface normal and shifted by up
    to 0.3 Å; the free slab atoms are rattled by 0.03 Å. Tags as in OC20: 0 sub-surface, 1
    surface (the top ``FREE_LAYERS`` layers), 2 adsorbate. Metals and adsorbates are EMT's
    (Al, Cu, Ag, Au, Ni, Pd, Pt; H, C, N, O).
S2EF frames
    The system is relaxed with EMT and ``ase.optimize.LBFGS`` (fmax 0.05 eV/Å, step cap
    ``MAX_STEP_A``, at most ``relax_steps`` steps); every frame of the trajectory (the initial
    structure is frame 0) is one row with key-value pairs ``sid`` (system id, unique over all
    splits of a family), ``fid`` (frame index), ``md_split``, ``total_energy``,
    ``reference_energy`` and the system's ``metal``, ``facet``, ``adsorbate``, ``site``,
    ``category``. Forces are EMT's on every atom (fixed ones too; as in OC20, training ignores
    fixed atoms).
MD frames (oc20-all-md's train only)
    From each relaxed train system, Langevin MD (``MD_TEMPERATURE_K``, ``MD_TIMESTEP_FS``,
    friction ``MD_FRICTION_PER_FS``) for ``md_steps`` steps, a frame every ``md_stride`` steps,
    flagged ``md_split = True`` (DeNS never corrupts them, App. B.1); their ``fid`` continues
    after the relaxation's.
IS2RE rows
    One row per system: the initial structure, its energy and forces, key-value ``y_relaxed``
    (the relaxed energy, referenced like the label) and row data ``sid`` and ``pos_relaxed``.

mini-OC20 (``prepare_oc20_generated``)
    (111) and (100) slabs; the lower ``layers - FREE_LAYERS`` layers are fixed (FixAtoms), as
    are exactly the atoms tagged 0. Energies are referenced like OC20's adsorption energies:
    label = E_total - E_clean_slab - sum over adsorbate atoms of the gas reference of the
    element, where E_clean_slab is the EMT energy of the same slab relaxed without adsorbate
    (same fixed layers) and the gas references follow OC20's scheme from EMT-relaxed
    molecules: H = E(H2)/2, O = E(H2O) - E(H2), N = E(N2)/2, C = E(CO) - E(H2O) + E(H2). Row
    key-values ``total_energy`` (E_total) and ``reference_energy`` (the subtracted sum).
    Splits (disjoint by system): train and val_id on the in-domain metals and adsorbates
    (``OC20.metals`` / ``OC20.adsorbates``), val_ood_ads on held-out adsorbates, val_ood_cat
    on held-out metals, val_ood_both on both; s2ef_test and is2re_test cycle through the four
    categories (key-value ``category``); is2re_val_id, is2re_val_ood_ads, is2re_val_ood_cat
    and is2re_val_ood_both (IS2RE validation, ``relax_val_systems`` each) one category each. A
    dataset whose name ends in ``-md`` (oc20-all-md), or
    whose settings say ``md: true``, gets the MD frames in its train split.
mini-OC22 (``prepare_oc22_generated``)
    The same machinery with other choices: every atom free (no constraint at all), total
    energies as labels (``reference_energy`` 0), (110) and (100) slabs, another split of the
    metals and adsorbates into in-domain and held-out (``OC22``), a third of the systems with
    two adsorbates, and its own random streams. Splits: train, val_id, s2ef_test_id,
    is2re_test_id, is2re_val_id in domain; val_ood, s2ef_test_ood, is2re_test_ood,
    is2re_val_ood cycling through held-out adsorbate, held-out metal and both.

Sizes (the scale's ``data.oc20`` / ``data.oc22``, validated by workflow/schemas/scale.schema.yaml
``oc_data``): systems per split by role (``train_systems``, ``val_systems``, ``test_systems``,
``relax_systems``; ``relax_val_systems`` for the IS2RE validation splits, needed only where a
dataset has them), ``relax_steps``, ``md_steps``, ``md_stride``, ``surface_cell``, ``layers``
and ``seed``. Each system draws its composition and geometry from its own random stream,
numpy's ``default_rng([seed, family, split, index])``, so a split is the same whichever other
splits a dataset has (oc20-2m's train equals oc20-all-md's relaxation frames) and the data do
not depend on the number of processes. EMT is numpy-only and LBFGS uses no multithreaded BLAS
call, so the same seed gives identical energies and positions; worker processes (spawned) run
with one BLAS/OpenMP thread all the same. ``provenance.json`` (method, optimiser, MD settings,
references, counts per split, versions) is written last.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.build import add_adsorbate, fcc100, fcc110, fcc111
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.optimize import LBFGS

from dens.data.calculators import EMTCalculator
from dens.data.validation import check_frames
from dens.layout import DatasetDirectory

FMAX_EV_PER_A = 0.05
MAX_STEP_A = 0.2
"""LBFGS's cap on an atom's displacement per step."""
VACUUM_A = 7.0
FREE_LAYERS = 2
"""Top layers tagged 1 (surface); the layers below are tagged 0 and, in mini-OC20, fixed."""
RATTLE_A = 0.03
HEIGHT_RANGE_A = (1.2, 2.0)
SHIFT_A = 0.3
GAS_FMAX_EV_PER_A = 0.01
MD_TEMPERATURE_K = 400.0
MD_TIMESTEP_FS = 1.0
MD_FRICTION_PER_FS = 0.02
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

# OC20's gas-phase reference scheme: element -> {molecule: coefficient} (energies from EMT).
GAS_REFERENCE_SCHEME = {
    "H": {"H2": 0.5},
    "O": {"H2O": 1.0, "H2": -1.0},
    "N": {"N2": 0.5},
    "C": {"CO": 1.0, "H2O": -1.0, "H2": 1.0},
}
GAS_MOLECULES = {
    "H2": ("H2", [(0, 0, 0), (0, 0, 0.74)]),
    "N2": ("N2", [(0, 0, 0), (0, 0, 1.10)]),
    "CO": ("CO", [(0, 0, 0), (0, 0, 1.13)]),
    "H2O": ("OH2", [(0, 0, 0), (0.76, 0, 0.59), (-0.76, 0, 0.59)]),
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
SIZE_KEYS = (
    "train_systems",
    "val_systems",
    "test_systems",
    "relax_systems",
    "relax_steps",
    "md_steps",
    "md_stride",
    "surface_cell",
    "layers",
    "seed",
)
OPTIONAL_SIZE_KEYS = ("relax_val_systems",)
"""Sizes only the splits that use them need (the IS2RE validation splits)."""
SID_STRIDE = 1_000_000
"""sid = (position of the split in the family's table + 1) * SID_STRIDE + system index."""


def _code(name: str) -> int:
    """A stable integer for a name, for random streams."""
    return zlib.crc32(name.encode())


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


def _relax(atoms: Atoms, fmax: float, steps: int) -> tuple[list[tuple], bool, int]:
    """Relax `atoms` (with a calculator) in place with LBFGS; every frame (initial one
    included) as (positions, energy, forces without the constraint projection)."""
    frames: list[tuple] = []

    def record() -> None:
        frames.append(
            (
                atoms.get_positions(),
                float(atoms.get_potential_energy()),
                atoms.get_forces(apply_constraint=False),
            )
        )

    optimizer = LBFGS(atoms, maxstep=MAX_STEP_A, logfile=None)
    optimizer.attach(record, interval=1)
    converged = bool(optimizer.run(fmax=fmax, steps=steps))
    return frames, converged, optimizer.nsteps


def _gas_energies() -> dict[str, float]:
    """EMT energies (eV) of the relaxed gas molecules of the reference scheme."""
    energies = {}
    for name, spec in GAS_MOLECULES.items():
        molecule = _molecule(spec)
        molecule.calc = EMTCalculator()
        _, converged, _ = _relax(molecule, GAS_FMAX_EV_PER_A, 500)
        if not converged:
            raise RuntimeError(f"EMT relaxation of gas-phase {name} did not converge")
        energies[name] = float(molecule.get_potential_energy())
    return energies


def gas_references() -> tuple[dict[str, float], dict[str, float]]:
    """(per-element gas references, molecule energies), eV: OC20's scheme
    (``GAS_REFERENCE_SCHEME``) with EMT energies of the relaxed molecules."""
    molecules = _gas_energies()
    per_element = {
        element: float(sum(c * molecules[m] for m, c in combination.items()))
        for element, combination in GAS_REFERENCE_SCHEME.items()
    }
    return per_element, molecules


def _clean_slab_task(task: tuple[str, str, str, int, int, int]) -> tuple[str, float, bool]:
    family_name, metal, facet, cell, layers, steps = task
    slab = _slab(FAMILIES[family_name], metal, facet, cell, layers)
    slab.calc = EMTCalculator()
    _, converged, _ = _relax(slab, FMAX_EV_PER_A, steps)
    return f"{metal}-{facet}", float(slab.get_potential_energy()), converged


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


def _system_task(task: dict[str, Any]) -> dict[str, Any]:
    """Build, relax (and run MD on) one system; plain arrays for the parent to write."""
    family = FAMILIES[task["family"]]
    rng = np.random.default_rng(
        [task["seed"], _code(task["family"]), _code(task["split"]), task["index"]]
    )
    atoms, description = _build_system(
        family, task["category"], task["surface_cell"], task["layers"], rng
    )
    atoms.calc = EMTCalculator()
    frames, converged, steps = _relax(atoms, FMAX_EV_PER_A, task["relax_steps"])
    md_frames: list[tuple] = []
    if task["md_steps"] > 0:
        md_rng = np.random.default_rng(
            [task["seed"], _code(task["family"]), _code(task["split"]), task["index"], 1]
        )
        md_atoms = atoms.copy()
        md_atoms.calc = EMTCalculator()
        thermalize_momenta(md_atoms, temperature_K=MD_TEMPERATURE_K, rng=md_rng)
        dynamics = Langevin(
            md_atoms,
            timestep=MD_TIMESTEP_FS * units.fs,
            temperature_K=MD_TEMPERATURE_K,
            friction=MD_FRICTION_PER_FS / units.fs,
            fixcm=False,
            rng=md_rng,
        )

        def record() -> None:
            if dynamics.nsteps > 0:
                md_frames.append(
                    (
                        md_atoms.get_positions(),
                        float(md_atoms.get_potential_energy()),
                        md_atoms.get_forces(apply_constraint=False),
                    )
                )

        dynamics.attach(record, interval=task["md_stride"])
        dynamics.run(task["md_steps"])
    fixed = [int(i) for c in atoms.constraints for i in c.get_indices()]
    return {
        **description,
        "numbers": atoms.numbers.copy(),
        "cell": np.asarray(atoms.cell).copy(),
        "tags": atoms.get_tags(),
        "fixed": sorted(fixed),
        "frames": frames,
        "md_frames": md_frames,
        "converged": converged,
        "relax_steps": steps,
    }


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    """One BLAS/OpenMP thread in the worker processes spawned while inside."""
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    previous = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: "1" for key in keys})
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _mapper(processes: int, n_tasks: int) -> Iterator[Any]:
    """A map (function, tasks) -> results in order, over one pool of up to `processes`
    spawned worker processes kept for every map inside (in this process when one)."""
    processes = min(processes, n_tasks)
    if processes <= 1:
        yield lambda function, tasks: [function(task) for task in tasks]
        return
    context = multiprocessing.get_context("spawn")
    with _single_threaded_children(), context.Pool(processes) as pool:
        yield lambda function, tasks: pool.map(function, tasks, chunksize=1)


def _requested_splits(settings: Mapping[str, Any], family: Family) -> list[str]:
    from dens.errors import ConfigError

    names: list[str] = []
    for value in settings["splits"].values():
        for name in [value] if isinstance(value, str) else value:
            if name not in family.splits:
                raise ConfigError(
                    f"dataset {settings['name']}: split {name!r} is not one {family.label} "
                    f"generates ({', '.join(family.splits)})"
                )
            if name not in names:
                names.append(name)
    return names


def _with_md(settings: Mapping[str, Any]) -> bool:
    """Whether the train split gets the MD frames: settings ``md``, else a name ending in -md."""
    return bool(settings.get("md", str(settings["name"]).endswith("-md")))


def _atoms(system: dict[str, Any], positions: np.ndarray, energy: float, forces: np.ndarray):
    atoms = Atoms(numbers=system["numbers"], positions=positions, cell=system["cell"], pbc=True)
    atoms.set_tags(system["tags"])
    if system["fixed"]:
        atoms.set_constraint(FixAtoms(indices=system["fixed"]))
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def _check_system(system: dict[str, Any], reference: float, where: str) -> None:
    """Every frame of a generated system (relaxation, then MD; frame k is fid k) within
    dens.data.validation's bounds as labelled (energy minus ``reference``), in one pass
    (check_frames); a refusal names ``where`` and the frame."""
    frames = system["frames"] + system["md_frames"]
    check_frames(
        system["numbers"],
        np.stack([positions for positions, _, _ in frames]),
        where,
        energies=np.array([energy - reference for _, energy, _ in frames]),
        forces=np.stack([forces for _, _, forces in frames]),
        cell=np.asarray(system["cell"]),
        pbc=np.ones(3, dtype=bool),
    )


def _rows(
    system: dict[str, Any], sid: int, reference: float, is2re: bool, md: bool
) -> Iterator[Atoms]:
    """The rows of one system (S2EF frames, MD frames when `md`, or its IS2RE row)."""
    keys = {k: system[k] for k in ("metal", "facet", "adsorbate", "site", "category")}
    frames = system["frames"]
    if is2re:
        positions, energy, forces = frames[0]
        atoms = _atoms(system, positions, energy - reference, forces)
        atoms.info = {
            "sid": sid,
            "fid": 0,
            "total_energy": energy,
            "reference_energy": reference,
            "y_relaxed": frames[-1][1] - reference,
            "relaxed_total_energy": frames[-1][1],
            "relaxation_converged": system["converged"],
            **keys,
            "data": {"pos_relaxed": frames[-1][0]},
        }
        yield atoms
        return
    md_frames = system["md_frames"] if md else []
    for fid, (positions, energy, forces) in enumerate(frames + md_frames):
        atoms = _atoms(system, positions, energy - reference, forces)
        atoms.info = {
            "sid": sid,
            "fid": fid,
            "md_split": fid >= len(frames),
            "total_energy": energy,
            "reference_energy": reference,
            **keys,
        }
        yield atoms


def _sizes(settings: Mapping[str, Any]) -> dict[str, int]:
    from dens.errors import ConfigError

    missing = [key for key in SIZE_KEYS if key not in settings]
    if missing:
        raise ConfigError(
            f"dataset {settings['name']}: the scale's data.{settings['family']} lacks "
            f"{', '.join(missing)} (workflow/schemas/scale.schema.yaml, oc_data)"
        )
    return {key: int(settings[key]) for key in SIZE_KEYS + OPTIONAL_SIZE_KEYS if key in settings}


def generate_catalysts(
    family_name: str, settings: Mapping[str, Any], out_dir: Path, processes: int = 1
) -> dict[str, Any]:
    """Generate the splits `settings["splits"]` names of mini-OC20 (`family_name` "oc20") or
    mini-OC22 ("oc22") into `out_dir` (module notes); returns the provenance written last."""
    from dens.data.aselmdb import write_aselmdb
    from dens.errors import ConfigError

    start = time.perf_counter()
    family = FAMILIES[family_name]
    sizes = _sizes(settings)
    splits = _requested_splits(settings, family)
    md = family_name == "oc20" and _with_md(settings) and "train" in splits
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    DatasetDirectory(out_dir).provenance.unlink(missing_ok=True)

    split_order = list(family.splits)
    tasks = []
    for split in splits:
        spec = family.splits[split]
        if spec.size_key not in sizes:
            raise ConfigError(
                f"dataset {settings['name']}: split {split} needs data.{family_name}."
                f"{spec.size_key} in the scale (workflow/schemas/scale.schema.yaml, oc_data)"
            )
        for index in range(sizes[spec.size_key]):
            tasks.append(
                {
                    "family": family_name,
                    "split": split,
                    "index": index,
                    "seed": sizes["seed"],
                    "category": spec.categories[index % len(spec.categories)],
                    "surface_cell": sizes["surface_cell"],
                    "layers": sizes["layers"],
                    "relax_steps": sizes["relax_steps"],
                    "md_steps": sizes["md_steps"] if md and split == "train" else 0,
                    "md_stride": sizes["md_stride"],
                }
            )
    # the longest jobs (MD) first, so that the pool's processes finish together
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i]["md_steps"])
    results: list[dict[str, Any]] = [{}] * len(tasks)
    slab_energies: dict[str, float] = {}
    slab_converged: dict[str, bool] = {}
    element_references: dict[str, float] = {}
    molecule_energies: dict[str, float] = {}
    with _mapper(processes, len(tasks)) as map_tasks:
        for i, result in zip(
            order, map_tasks(_system_task, [tasks[i] for i in order]), strict=True
        ):
            results[i] = result
        if family.referenced:
            element_references, molecule_energies = gas_references()
            needed = sorted({(r["metal"], r["facet"]) for r in results})
            slab_tasks = [
                (family_name, metal, facet, sizes["surface_cell"], sizes["layers"], 500)
                for metal, facet in needed
            ]
            for key, energy, converged in map_tasks(_clean_slab_task, slab_tasks):
                slab_energies[key] = energy
                slab_converged[key] = converged

    def reference(system: dict[str, Any]) -> float:
        if not family.referenced:
            return 0.0
        slab = slab_energies[f"{system['metal']}-{system['facet']}"]
        n_slab = int((system["tags"] != 2).sum())
        adsorbate = system["numbers"][n_slab:]
        symbols = Atoms(numbers=adsorbate).get_chemical_symbols()
        return slab + float(sum(element_references[s] for s in symbols))

    counts: dict[str, dict[str, int]] = {}
    for split in splits:
        spec = family.splits[split]
        position = split_order.index(split) + 1
        systems = [(t, r) for t, r in zip(tasks, results, strict=True) if t["split"] == split]
        use_md = md and split == "train"

        path = out_dir / f"{split}.aselmdb"

        def rows(systems=systems, position=position, spec=spec, use_md=use_md, path=path):
            for task, system in systems:
                sid = position * SID_STRIDE + task["index"]
                _check_system(system, reference(system), f"{path}: sid {sid}")
                yield from _rows(system, sid, reference(system), spec.is2re, use_md)

        metadata = {"dataset": family.label, "split": split, "method": "EMT"}
        n_rows = write_aselmdb(path, rows(), metadata)
        counts[split] = {
            "systems": len(systems),
            "rows": n_rows,
            "md_frames": sum(len(s["md_frames"]) for _, s in systems) if use_md else 0,
            "relaxations_converged": sum(s["converged"] for _, s in systems),
        }

    provenance = {
        "dataset": family.label,
        "name": settings["name"],
        "family": family_name,
        "method": "EMT",
        "calculator": "ase.calculators.emt.EMT (dens.data.calculators.EMTCalculator)",
        "splits": counts,
        "sizes": sizes,
        "seed": sizes["seed"],
        "random_streams": "numpy default_rng([seed, crc32(family), crc32(split), index])"
        " (MD: index, 1)",
        "relaxation": {
            "optimizer": "ase.optimize.LBFGS",
            "fmax_eV_per_A": FMAX_EV_PER_A,
            "maxstep_A": MAX_STEP_A,
            "max_steps": sizes["relax_steps"],
            "frames": "every optimiser step, the initial structure as fid 0",
        },
        "md": (
            {
                "dynamics": "ase.md.langevin.Langevin from the relaxed train systems",
                "temperature_K": MD_TEMPERATURE_K,
                "timestep_fs": MD_TIMESTEP_FS,
                "friction_per_fs": MD_FRICTION_PER_FS,
                "steps": sizes["md_steps"],
                "stride": sizes["md_stride"],
                "flag": "md_split = True, train split only",
            }
            if md
            else None
        ),
        "systems": {
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
        },
        "energy": (
            {
                "label": "E_total - E_clean_slab - sum of gas references of the adsorbate atoms",
                "gas_reference_scheme": GAS_REFERENCE_SCHEME,
                "gas_molecule_energies_eV": molecule_energies,
                "element_references_eV": element_references,
                "clean_slab_energies_eV": slab_energies,
                "clean_slabs_converged": slab_converged,
            }
            if family.referenced
            else {"label": "E_total (no reference)"}
        ),
        "units": {"energy": "eV", "forces": "eV/Angstrom", "positions": "Angstrom"},
        "processes": processes,
        "versions": {package: version(package) for package in ("ase", "numpy")},
        "wall_time_s": time.perf_counter() - start,
    }
    DatasetDirectory(out_dir).provenance.write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def prepare_oc20_generated(settings: Mapping[str, Any], out_dir: Path, processes: int) -> None:
    """mini-OC20 from EMT (module notes)."""
    generate_catalysts("oc20", settings, out_dir, processes)


def prepare_oc22_generated(settings: Mapping[str, Any], out_dir: Path, processes: int) -> None:
    """mini-OC22 from EMT (module notes)."""
    generate_catalysts("oc22", settings, out_dir, processes)
