"""mini-MD17, generated here without downloads (dens.data.md17 writes the splits): the molecule
from SMILES (RDKit, hydrogens added, 3D embedding with a fixed seed), pre-relaxed with GFN2-xTB
(tblite), then Langevin MD at 500 K with a 0.5 fs step (the MD17 temperature and step), one
frame every `stride` steps after `equilibration_steps`, energy and forces of every frame from
GFN2-xTB. Deterministic for a given seed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.optimize import BFGS
from rdkit import Chem
from rdkit.Chem import AllChem
from tqdm import tqdm

from dens.data.calculators import GFN2xTBCalculator, LangevinMD
from dens.data.md17 import (
    MD17_SMILES,
    SPLITS,
    _check_molecule,
    _versions,
    _write_split_files,
    split_indices,
)
from dens.data.validation import check_frames
from dens.layout import DatasetDirectory

EMBEDDING_SEED = 42
RELAX_FMAX_EV_PER_A = 0.01
RELAX_MAX_STEPS = 1000
MD = LangevinMD(temperature_K=500.0, timestep_fs=0.5, friction_per_fs=0.01)
# tblite's default accuracy (1.0) leaves MD-step forces (SCC restarted from the previous
# step) ~2e-4 eV/Å away from a fresh evaluation at the same positions; 0.1 brings that to
# ~3e-5 eV/Å at no measurable cost for these molecules.
TBLITE_ACCURACY = 0.1


@contextmanager
def _openmp_threads(n_threads: int) -> Iterator[int | None]:
    """Pin the OpenMP runtime (libgomp) that tblite uses to `n_threads` while inside.

    tblite evaluates GFN2-xTB with OpenMP; the summation order, hence the last bits of the
    energies and forces, depends on the thread count, and a chaotic MD trajectory turns that
    into different frames within a few hundred steps (seen for aspirin with 1 vs 2 threads).
    One thread makes the data independent of the machine's cores (two threads gain only
    ~15% for 21 atoms) and leaves the other cores to the other molecules' jobs. Yields the
    pinned count, or None where no libgomp is found (then the count is not pinned).
    """
    library = ctypes.util.find_library("gomp")
    if library is None:
        yield None
        return
    gomp = ctypes.CDLL(library)
    previous = gomp.omp_get_max_threads()
    gomp.omp_set_num_threads(n_threads)
    try:
        yield n_threads
    finally:
        gomp.omp_set_num_threads(previous)


def _embed(molecule: str) -> Atoms:
    """The molecule from its SMILES with hydrogens, 3D-embedded by RDKit (ETKDG, fixed seed)."""
    mol = Chem.AddHs(Chem.MolFromSmiles(MD17_SMILES[molecule]))
    if AllChem.EmbedMolecule(mol, randomSeed=EMBEDDING_SEED) != 0:
        raise RuntimeError(f"RDKit could not embed {molecule} ({MD17_SMILES[molecule]})")
    numbers = [atom.GetAtomicNum() for atom in mol.GetAtoms()]
    return Atoms(numbers=numbers, positions=mol.GetConformer().GetPositions())


def generate_md17(
    molecule: str,
    out_dir: Path,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
    stride: int,
    equilibration_steps: int,
    progress: bool = True,
) -> dict[str, Path]:
    """Generate mini-MD17 for `molecule` with GFN2-xTB Langevin MD and write its splits.

    After the pre-relaxation (BFGS to fmax 0.01 eV/Å), velocities are drawn from the
    Maxwell-Boltzmann distribution at 500 K (no net momentum or rotation); the centre of mass
    is held fixed (FixCom) and the Langevin thermostat (friction 0.01/fs) runs
    `equilibration_steps` steps, then records `n_train + n_val + n_test` frames, one every
    `stride` steps. Stored forces are GFN2-xTB's, without the FixCom projection. The frames
    are split at random (`split_indices` with `seed`). `seed` fixes the velocities and the
    thermostat noise, so the same arguments give the same frames; OpenMP is pinned to one
    thread for that (see `_openmp_threads`). Returns {split: path of its aselmdb}.
    """
    _check_generate_arguments(molecule, (n_train, n_val, n_test), seed, stride, equilibration_steps)
    start = time.perf_counter()
    n_frames = n_train + n_val + n_test
    md = _run_md(molecule, n_frames, seed, stride, equilibration_steps, progress)
    out_dir = Path(out_dir)
    check_frames(
        md.numbers,
        md.positions,
        f"{out_dir}: GFN2-xTB MD of {molecule}",
        energies=md.energies,
        forces=md.forces,
    )
    split = split_indices(n_frames, n_train, n_val, n_test, seed)
    metadata = {"dataset": "mini-MD17", "molecule": molecule, "method": "GFN2-xTB"}
    paths = _write_split_files(
        out_dir,
        md.numbers,
        md.positions,
        md.energies,
        md.forces,
        split,
        seed,
        metadata,
        "gfn2-xtb",
    )
    provenance = _provenance(molecule, md, stride, equilibration_steps, seed, split)
    provenance["wall_time_s"] = time.perf_counter() - start
    DatasetDirectory(out_dir).provenance.write_text(json.dumps(provenance, indent=2) + "\n")
    return paths


def _check_generate_arguments(
    molecule: str, sizes: tuple[int, int, int], seed: int, stride: int, equilibration_steps: int
) -> None:
    """Refuse an unknown molecule, negative split sizes (``sizes``: train, val, test; no train
    frame), a stride below 1 and a seed numpy's SeedSequence would not take as one 32-bit word."""
    _check_molecule(molecule)
    n_train, n_val, n_test = sizes
    if n_train < 1 or n_val < 0 or n_test < 0:
        raise ValueError(
            f"need n_train >= 1, n_val >= 0, n_test >= 0: {n_train}, {n_val}, {n_test}"
        )
    if stride < 1 or equilibration_steps < 0:
        raise ValueError(
            f"need stride >= 1 and equilibration_steps >= 0: {stride}, {equilibration_steps}"
        )
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32): {seed}")


@dataclass
class _Trajectory:
    """The recorded frames of a mini-MD17 run and how its pre-relaxation ended."""

    numbers: np.ndarray
    positions: np.ndarray
    energies: np.ndarray
    forces: np.ndarray
    temperatures: np.ndarray
    relax_steps: int = 0
    relaxed_energy: float = 0.0
    openmp_threads: int | None = None


def _run_md(
    molecule: str, n_frames: int, seed: int, stride: int, equilibration_steps: int, progress: bool
) -> _Trajectory:
    """Embed and pre-relax ``molecule``, then record ``n_frames`` frames of Langevin MD (one
    every ``stride`` steps after ``equilibration_steps``), OpenMP pinned to one thread."""
    velocity_rng, thermostat_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(2)
    )
    atoms = _embed(molecule)
    md = _Trajectory(
        numbers=atoms.numbers,
        positions=np.empty((n_frames, len(atoms), 3)),
        energies=np.empty(n_frames),
        forces=np.empty((n_frames, len(atoms), 3)),
        temperatures=np.empty(n_frames),
    )
    with _openmp_threads(1) as md.openmp_threads:
        atoms.calc = GFN2xTBCalculator(method="GFN2-xTB", accuracy=TBLITE_ACCURACY, verbosity=0)
        optimizer = BFGS(atoms, logfile=None)
        if not optimizer.run(fmax=RELAX_FMAX_EV_PER_A, steps=RELAX_MAX_STEPS):
            raise RuntimeError(f"GFN2-xTB pre-relaxation of {molecule} did not converge")
        md.relax_steps = optimizer.nsteps
        md.relaxed_energy = float(atoms.get_potential_energy())
        dynamics = _thermostat(atoms, velocity_rng, thermostat_rng)
        total_steps = equilibration_steps + n_frames * stride
        with tqdm(total=total_steps, desc=f"GFN2-xTB MD {molecule}", disable=not progress) as bar:
            dynamics.run(equilibration_steps)
            bar.update(equilibration_steps)
            for frame in range(n_frames):
                dynamics.run(stride)
                md.positions[frame] = atoms.get_positions()
                md.energies[frame] = atoms.get_potential_energy()
                md.forces[frame] = atoms.get_forces(apply_constraint=False)
                md.temperatures[frame] = atoms.get_temperature()
                bar.update(stride)
    md.numbers = atoms.numbers
    return md


def _thermostat(
    atoms: Atoms, velocity_rng: np.random.Generator, thermostat_rng: np.random.Generator
) -> Langevin:
    """Maxwell-Boltzmann velocities at 500 K without net momentum or rotation, the centre of
    mass held (FixCom), and the Langevin dynamics that runs them."""
    thermalize_momenta(atoms, temperature_K=MD.temperature_K, rng=velocity_rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    return MD.dynamics(atoms, thermostat_rng)


def _provenance(
    molecule: str,
    md: _Trajectory,
    stride: int,
    equilibration_steps: int,
    seed: int,
    split: dict[str, np.ndarray],
) -> dict[str, Any]:
    """provenance.json of a generated molecule but its wall time."""
    n_frames = len(md.energies)
    return {
        "dataset": "mini-MD17",
        "molecule": molecule,
        "smiles": MD17_SMILES[molecule],
        "n_atoms": len(md.numbers),
        "method": "GFN2-xTB",
        "calculator": "tblite.ase.TBLite (dens.data.calculators.GFN2xTBCalculator)",
        "tblite_accuracy": TBLITE_ACCURACY,
        "embedding": {"tool": "RDKit EmbedMolecule (ETKDG)", "random_seed": EMBEDDING_SEED},
        "pre_relaxation": {
            "optimizer": "ase.optimize.BFGS",
            "fmax_eV_per_A": RELAX_FMAX_EV_PER_A,
            "steps": md.relax_steps,
            "energy_eV": md.relaxed_energy,
        },
        "dynamics": "ase.md.langevin.Langevin with FixCom",
        **MD.provenance(),
        "stride_steps": stride,
        "equilibration_steps": equilibration_steps,
        "seed": seed,
        "n_frames": n_frames,
        "split_sizes": {name: len(split[name]) for name in SPLITS},
        "mean_kinetic_temperature_K": float(md.temperatures.mean()),
        "units": {"energy": "eV", "forces": "eV/Angstrom", "positions": "Angstrom"},
        "openmp_threads": md.openmp_threads,
        "versions": _versions("tblite", "ase", "rdkit", "numpy"),
    }
