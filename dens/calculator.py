"""An ASE calculator backed by a trained dens run, for relaxations and molecular dynamics.

The run is loaded through dens.inference (inference weights, normalisation; no noise head, no
force input) and each structure becomes model input through dens.data.structures, the same
conversion training data goes through (FixAtoms marks fixed atoms; periodic structures carry
cell, pbc and tags).
"""

from __future__ import annotations

from pathlib import Path

import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from dens.data.structures import atoms_to_batch
from dens.inference import BuildModel, load_trained_model
from dens.models import build_model as build_registered_model


class DeNSCalculator(Calculator):
    """ASE calculator of a trained run.

    Args:
        checkpoint: a run directory (uses checkpoints/best.pt) or a checkpoint file.
        build_model: builds the network from the stored experiment (default: dens.models).
        device: torch device to run the model on.
        dtype: model and position precision; torch.float64 for finite-difference checks or
            tight relaxations.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        checkpoint: Path,
        build_model: BuildModel = build_registered_model,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.trained = load_trained_model(checkpoint, build_model, device, dtype)
        self.experiment = self.trained.experiment
        self.device = device
        self.dtype = dtype

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        energy, forces = self.trained.predict(atoms_to_batch(self.atoms, self.dtype, self.device))
        self.results["energy"] = float(energy[0])
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = forces.to(torch.float64).cpu().numpy()
