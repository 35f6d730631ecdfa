"""mini-OC20 and mini-OC22: adsorbate + metal-slab relaxations and MD computed with ASE's EMT.

The embedded scales (smoke, mini) stand in for the Open Catalyst data with systems built and
computed on the machine, in the layout of the paper's data (one folder of aselmdb shards per
split, here one shard each; rows as fairchem's AseDBDataset reads them):

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
    From each relaxed train system, Langevin MD (dens.data.catalyst_sampling ``MD``: 400 K, 1 fs,
    friction 0.02/fs) for ``md_steps`` steps, a frame every ``md_stride`` steps,
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

Modules: dens.data.catalyst_systems builds a system (families, slabs, adsorbates),
dens.data.catalyst_sampling relaxes it and runs its MD (and the reference energies) on a pool of
workers, and this module turns the settings into tasks and writes the splits and provenance.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from dens.data.catalyst_sampling import (
    References,
    compute_systems,
    sampling_provenance,
)
from dens.data.catalyst_systems import (
    FAMILIES,
    Family,
    systems_provenance,
)
from dens.data.validation import check_frames
from dens.layout import DatasetDirectory

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
    start = time.perf_counter()
    family = FAMILIES[family_name]
    sizes = _sizes(settings)
    splits = _requested_splits(settings, family)
    md = family_name == "oc20" and _with_md(settings) and "train" in splits
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    DatasetDirectory(out_dir).provenance.unlink(missing_ok=True)

    tasks = _system_tasks(family_name, settings, sizes, splits, md)
    results, references = compute_systems(family_name, tasks, sizes, processes)
    counts = _write_splits(family, splits, tasks, results, references, out_dir, md)
    provenance = _provenance(family_name, settings, sizes, counts, md, references, processes)
    provenance["wall_time_s"] = time.perf_counter() - start
    DatasetDirectory(out_dir).provenance.write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def _system_tasks(
    family_name: str,
    settings: Mapping[str, Any],
    sizes: dict[str, int],
    splits: list[str],
    md: bool,
) -> list[dict[str, Any]]:
    """One task (what _system_task computes) per system of every requested split, in order."""
    from dens.errors import ConfigError

    family = FAMILIES[family_name]
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
    return tasks


def _write_splits(
    family: Family,
    splits: list[str],
    tasks: list[dict[str, Any]],
    results: list[dict[str, Any]],
    references: References,
    out_dir: Path,
    md: bool,
) -> dict[str, dict[str, int]]:
    """Write each split as a folder of one aselmdb shard (every frame checked first); its counts
    per split."""
    from dens.data.aselmdb import write_aselmdb

    split_order = list(family.splits)
    reference = references.reference
    counts: dict[str, dict[str, int]] = {}
    for split in splits:
        spec = family.splits[split]
        position = split_order.index(split) + 1
        systems = [(t, r) for t, r in zip(tasks, results, strict=True) if t["split"] == split]
        use_md = md and split == "train"

        path = DatasetDirectory(out_dir).shard(split, 0)

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
    return counts


def _provenance(
    family_name: str,
    settings: Mapping[str, Any],
    sizes: dict[str, int],
    counts: dict[str, dict[str, int]],
    md: bool,
    references: References,
    processes: int,
) -> dict[str, Any]:
    """provenance.json's content but its wall time (module notes)."""
    family = FAMILIES[family_name]
    return {
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
        **sampling_provenance(sizes, md),
        "systems": systems_provenance(family, sizes),
        "energy": references.provenance(),
        "units": {"energy": "eV", "forces": "eV/Angstrom", "positions": "Angstrom"},
        "processes": processes,
        "versions": {package: version(package) for package in ("ase", "numpy")},
    }


def prepare_oc20_generated(settings: Mapping[str, Any], out_dir: Path, processes: int) -> None:
    """mini-OC20 from EMT (module notes)."""
    generate_catalysts("oc20", settings, out_dir, processes)


def prepare_oc22_generated(settings: Mapping[str, Any], out_dir: Path, processes: int) -> None:
    """mini-OC22 from EMT (module notes)."""
    generate_catalysts("oc22", settings, out_dir, processes)
