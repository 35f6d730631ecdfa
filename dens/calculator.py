"""An ASE calculator backed by a trained dens run, for relaxations and molecular dynamics.

The run is loaded through dens.inference (inference weights, normalisation; no noise head, no
force input) and each structure becomes model input through dens.data.structures, the same
conversion training data goes through (FixAtoms marks fixed atoms; periodic structures carry
cell, pbc and tags).

The calculator refuses structures the model cannot answer for, with
dens.errors.UnsupportedStructureError naming what is wrong: a structure outside the bounds of
dens.data.validation (non-finite positions or cell, a lone atom of a molecule, an atomic number
beyond the model's embedding table, coordinates or cells beyond their physical bounds; raised as
its InvalidStructureError), elements absent from the run's training data (stored in the
checkpoint's normaliser, or by ``dens import-checkpoint``; checkpoints from before dens stored
them skip this check), atoms closer than ``min_distance`` (minimum-image distances for periodic
structures) and structures with no atom pair within the model's cutoff (every model family
fails on an empty edge list).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols
from ase.neighborlist import neighbor_list

from dens.data.structures import atoms_to_batch
from dens.data.validation import (
    MAX_ATOMIC_NUMBER,
    check_atoms,
    model_cutoff,
    model_max_atomic_number,
)
from dens.errors import UnsupportedStructureError
from dens.inference import BuildModel, load_trained_model
from dens.models import build_model as build_registered_model

MIN_DISTANCE = 0.5
"""Default closest distance (Å) between two atoms the calculator accepts."""


def _symbols(numbers) -> str:
    return ", ".join(chemical_symbols[int(z)] for z in numbers)


def has_pair(atoms: Atoms, cutoff: float) -> bool:
    """Whether two atoms (or an atom and a periodic image) lie within ``cutoff`` Å. Cheap first
    tries (a periodic lattice vector within the cutoff; two atoms of the cell within it, O(N^2)
    in numpy), ASE's neighbour list only when both fail: at 12 Å it takes 0.5 s for an 80-atom
    slab, the direct tests 0.1 ms."""
    periodic = np.asarray(atoms.cell)[atoms.pbc]
    if len(periodic) and np.linalg.norm(periodic, axis=1).min() <= cutoff:
        return True
    positions = atoms.positions
    for start in range(0, len(atoms), 1024):  # bounded memory: 1024 x N distances at a time
        block = positions[start : start + 1024]
        distance = np.linalg.norm(block[:, None, :] - positions[None, :, :], axis=-1)
        distance[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        if (distance <= cutoff).any():
            return True
    return bool(atoms.pbc.any()) and neighbor_list("i", atoms, cutoff).size > 0


class DeNSCalculator(Calculator):
    """ASE calculator of a trained run.

    Args:
        checkpoint: a run directory (uses checkpoints/best.pt) or a checkpoint file; nothing
            else is needed to build the calculator of a run.
        build_model: builds the network from the stored experiment (default: dens.models).
        device: torch device to run the model on.
        dtype: model and position precision; torch.float64 for finite-difference checks or
            tight relaxations.
        min_distance: structures with two atoms closer than this (Å) are refused; 0 turns the
            check off.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        checkpoint: Path,
        build_model: BuildModel = build_registered_model,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        min_distance: float = MIN_DISTANCE,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not min_distance >= 0.0:
            raise ValueError(f"min_distance must be >= 0 Å, got {min_distance}")
        self.trained = load_trained_model(checkpoint, build_model, device, dtype)
        self.experiment = self.trained.experiment
        self.elements = self.trained.normalizer.elements
        self.device = device
        self.dtype = dtype
        self.min_distance = float(min_distance)
        self.max_atomic_number = model_max_atomic_number(self.trained.model)
        self.cutoff = model_cutoff(self.trained.model)

    def check_structure(self, atoms: Atoms) -> None:
        """Raise UnsupportedStructureError if the model cannot answer for `atoms`: outside the
        bounds of dens.data.validation (InvalidStructureError), an element absent from its
        training data, two atoms closer than `min_distance`, or no pair within the cutoff."""
        name = self.experiment.get("name", "this run")
        valid = ((atoms.numbers >= 0) & (atoms.numbers <= MAX_ATOMIC_NUMBER)).all()
        formula = atoms.get_chemical_formula() if valid else f"{len(atoms)} atoms"
        check_atoms(atoms, formula, self.max_atomic_number, labels=False)
        if self.elements is not None:
            unknown = sorted(set(np.unique(atoms.numbers).tolist()) - set(self.elements))
            if unknown:
                plural = "elements" if len(unknown) > 1 else "element"
                raise UnsupportedStructureError(
                    f"{atoms.get_chemical_formula()}: {plural} {_symbols(unknown)} not in the "
                    f"training data of {name} (trained on {_symbols(self.elements)}); the model "
                    "cannot answer for it"
                )
        if self.min_distance > 0.0 and len(atoms) > 1:
            first, second, distance = neighbor_list("ijd", atoms, self.min_distance)
            if distance.size:
                closest = int(np.argmin(distance))
                i, j = sorted((int(first[closest]), int(second[closest])))
                symbols = atoms.get_chemical_symbols()
                raise UnsupportedStructureError(
                    f"{atoms.get_chemical_formula()}: atoms {i} ({symbols[i]}) and {j} "
                    f"({symbols[j]}) are {distance[closest]:.3f} Å apart, closer than "
                    f"min_distance {self.min_distance} Å (DeNSCalculator(min_distance=...))"
                )
        if self.cutoff is not None and not has_pair(atoms, self.cutoff):
            raise UnsupportedStructureError(
                f"{atoms.get_chemical_formula()}: no two atoms within the cutoff "
                f"{self.cutoff:g} Å of {name}; the model passes messages between atom pairs"
            )

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        self.check_structure(self.atoms)
        energy, forces = self.trained.predict(atoms_to_batch(self.atoms, self.dtype, self.device))
        self.results["energy"] = float(energy[0])
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = forces.to(torch.float64).cpu().numpy()
