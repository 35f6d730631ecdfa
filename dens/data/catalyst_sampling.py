"""How mini-OC20 and mini-OC22 (dens.data.catalysts) sample a system: LBFGS relaxation frames
and Langevin MD frames with EMT, the gas-phase and clean-slab reference energies, and the pool of
spawned single-threaded worker processes that computes them.
"""

from __future__ import annotations

import multiprocessing
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.md.velocitydistribution import thermalize_momenta
from ase.optimize import LBFGS

from dens.data.calculators import EMTCalculator, LangevinMD
from dens.data.catalyst_systems import FAMILIES, _build_system, _molecule, _slab
from dens.scoped import entries_set

FMAX_EV_PER_A = 0.05
MAX_STEP_A = 0.2
"""LBFGS's cap on an atom's displacement per step."""
GAS_FMAX_EV_PER_A = 0.01
MD = LangevinMD(temperature_K=400.0, timestep_fs=1.0, friction_per_fs=0.02)

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


def _code(name: str) -> int:
    """A stable integer for a name, for random streams."""
    return zlib.crc32(name.encode())


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
        thermalize_momenta(md_atoms, temperature_K=MD.temperature_K, rng=md_rng)
        dynamics = MD.dynamics(md_atoms, md_rng)

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
    with entries_set(os.environ, {key: "1" for key in keys}):
        yield


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


@dataclass
class References:
    """The reference energies (eV) of a generated family: the EMT energies of the relaxed clean
    slabs and gas molecules, the per-element gas references (all empty where the family is not
    referenced, mini-OC22)."""

    referenced: bool
    slab_energies: dict[str, float] = field(default_factory=dict)
    slab_converged: dict[str, bool] = field(default_factory=dict)
    element_references: dict[str, float] = field(default_factory=dict)
    molecule_energies: dict[str, float] = field(default_factory=dict)

    def reference(self, system: dict[str, Any]) -> float:
        """What a system's label subtracts from its total energy: clean slab + gas references
        of its adsorbate atoms (0 where the family is not referenced)."""
        if not self.referenced:
            return 0.0
        slab = self.slab_energies[f"{system['metal']}-{system['facet']}"]
        n_slab = int((system["tags"] != 2).sum())
        adsorbate = system["numbers"][n_slab:]
        symbols = Atoms(numbers=adsorbate).get_chemical_symbols()
        return slab + float(sum(self.element_references[s] for s in symbols))

    def provenance(self) -> dict[str, Any]:
        """How the labels are referenced, with the energies, for provenance.json."""
        return (
            {
                "label": "E_total - E_clean_slab - sum of gas references of the adsorbate atoms",
                "gas_reference_scheme": GAS_REFERENCE_SCHEME,
                "gas_molecule_energies_eV": self.molecule_energies,
                "element_references_eV": self.element_references,
                "clean_slab_energies_eV": self.slab_energies,
                "clean_slabs_converged": self.slab_converged,
            }
            if self.referenced
            else {"label": "E_total (no reference)"}
        )


def compute_systems(
    family_name: str, tasks: list[dict[str, Any]], sizes: dict[str, int], processes: int
) -> tuple[list[dict[str, Any]], References]:
    """Every task's system (_system_task, the longest ones first on one pool of up to
    ``processes`` workers) in task order, then the references on the same pool."""
    family = FAMILIES[family_name]
    # the longest jobs (MD) first, so that the pool's processes finish together
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i]["md_steps"])
    results: list[dict[str, Any]] = [{}] * len(tasks)
    references = References(family.referenced)
    with _mapper(processes, len(tasks)) as map_tasks:
        for i, result in zip(
            order, map_tasks(_system_task, [tasks[i] for i in order]), strict=True
        ):
            results[i] = result
        if family.referenced:
            references.element_references, references.molecule_energies = gas_references()
            needed = sorted({(r["metal"], r["facet"]) for r in results})
            slab_tasks = [
                (family_name, metal, facet, sizes["surface_cell"], sizes["layers"], 500)
                for metal, facet in needed
            ]
            for key, energy, converged in map_tasks(_clean_slab_task, slab_tasks):
                references.slab_energies[key] = energy
                references.slab_converged[key] = converged
    return results, references


def sampling_provenance(sizes: dict[str, int], md: bool) -> dict[str, Any]:
    """How the frames were sampled (relaxation, MD), for provenance.json."""
    return {
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
                **MD.provenance(),
                "steps": sizes["md_steps"],
                "stride": sizes["md_stride"],
                "flag": "md_split = True, train split only",
            }
            if md
            else None
        ),
    }
