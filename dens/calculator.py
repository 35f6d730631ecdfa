"""An ASE calculator backed by a trained dens run, for relaxations and molecular dynamics.

Energy (eV) and forces (eV/Å) are de-normalised with the training statistics stored in the
checkpoint; the model runs with no noise head and no force input (DESIGN.md item 7), on the
inference weights (best.pt: the EMA weights of the best-validation epoch when EMA is on).
Atoms held by an ase.constraints.FixAtoms constraint are marked `fixed`; periodic structures
also carry `cell`, `pbc` and the atoms' `tags`, as in the training data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixAtoms
from torch_geometric.data import Batch, Data

from dens.evaluate import BuildModel, load_trained_model, predict


def atoms_to_batch(atoms: Atoms, dtype: torch.dtype, device: str | torch.device) -> Batch:
    """One structure as a batch of the shared convention (no labels): pos [N,3] (Å, `dtype`),
    atomic_numbers [N], natoms [1], fixed bool [N], md_split [1] (False), batch [N]; with any
    periodic direction also cell [1,3,3], pbc [1,3] and tags [N]."""
    n = len(atoms)
    fixed = np.zeros(n, dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            fixed[constraint.index] = True
    fields = {
        "pos": torch.tensor(atoms.positions, dtype=dtype),
        "atomic_numbers": torch.tensor(atoms.numbers, dtype=torch.long),
        "natoms": torch.tensor([n], dtype=torch.long),
        "fixed": torch.from_numpy(fixed),
        "md_split": torch.tensor([False]),
    }
    if atoms.pbc.any():
        fields["cell"] = torch.tensor(np.asarray(atoms.cell), dtype=dtype).view(1, 3, 3)
        fields["pbc"] = torch.tensor(atoms.pbc, dtype=torch.bool).view(1, 3)
        fields["tags"] = torch.tensor(atoms.get_tags(), dtype=torch.long)
    return Batch.from_data_list([Data(**fields)]).to(device)


class DeNSCalculator(Calculator):
    """ASE calculator of a trained run.

    Args:
        checkpoint: a run directory (uses checkpoints/best.pt) or a checkpoint file.
        build_model: the model registry (the same callable training used).
        device: torch device to run the model on.
        dtype: model and position precision; torch.float64 for finite-difference checks or
            tight relaxations.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        checkpoint: Path,
        build_model: BuildModel,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        trained = load_trained_model(checkpoint, build_model, device, dtype)
        self.model = trained.model
        self.normalizer = trained.normalizer
        self.experiment = trained.checkpoint["experiment"]
        self.device = device
        self.dtype = dtype

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        batch = atoms_to_batch(self.atoms, self.dtype, self.device)
        energy, forces = predict(self.model, batch, self.normalizer)
        self.results["energy"] = float(energy[0])
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = forces.to(torch.float64).cpu().numpy()
