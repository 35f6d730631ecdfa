"""ASE ``Atoms`` -> the model input every dens model reads (a torch_geometric ``Data``).

The one conversion that training data (dens.data.aselmdb), the ASE calculator, relaxations and
simulations share, so that fixed atoms, tags and flags mean the same everywhere:

    pos             float [N, 3] (Å), the requested dtype (float32 for training)
    atomic_numbers  long [N]
    natoms          long [1]
    fixed           bool [N]: atoms held by an ase.constraints.FixAtoms; DeNS never corrupts
                    them and they carry no force loss (OC20 ``train_on_free_atoms``)
    md_split        bool [1]: ``atoms.info["md_split"]`` (OC20 MD frames; DeNS never corrupts
                    them, App. B.1), False when absent
    cell, pbc, tags with any periodic direction: float [1, 3, 3] (Å), bool [1, 3], long [N]
                    (OC20 tags: 0 sub-surface, 1 surface, 2 adsorbate; 0 when absent)
    energy, forces  with labels=True: float64 [1] (eV, total energy) and float32 [N, 3] (eV/Å)
                    from ``atoms.calc.results``; the energy stays float64 so that the
                    normalisation (dens.normalization) subtracts its reference before the
                    value becomes float32

``FixCom`` is accepted (it constrains the dynamics, not which atoms the model sees as fixed);
any other constraint is refused, since it would be unclear which atoms it fixes.
"""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.constraints import FixAtoms, FixCom

from dens.data.batch import Batch, Data


def fixed_mask(atoms: Atoms) -> np.ndarray:
    """bool [N]: True for atoms held by a FixAtoms constraint."""
    fixed = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            fixed[constraint.index] = True
        elif not isinstance(constraint, FixCom):
            name = type(constraint).__name__
            raise ValueError(
                f"unsupported constraint {name} on {atoms.get_chemical_formula()} "
                "(only FixAtoms marks fixed atoms; FixCom is ignored)"
            )
    return fixed


def atoms_to_data(atoms: Atoms, dtype: torch.dtype = torch.float32, labels: bool = False) -> Data:
    """One structure as model input (fields in the module notes); ``labels`` adds energy and
    forces, which ``atoms.calc`` must hold (e.g. a SinglePointCalculator)."""
    n = len(atoms)
    fields = {
        "pos": torch.tensor(atoms.positions, dtype=dtype),
        "atomic_numbers": torch.tensor(atoms.numbers, dtype=torch.long),
        "natoms": torch.tensor([n], dtype=torch.long),
        "fixed": torch.from_numpy(fixed_mask(atoms)),
        "md_split": torch.tensor([bool(atoms.info.get("md_split", False))]),
    }
    if atoms.pbc.any():
        fields["cell"] = torch.tensor(np.asarray(atoms.cell), dtype=dtype).view(1, 3, 3)
        fields["pbc"] = torch.tensor(atoms.pbc, dtype=torch.bool).view(1, 3)
        fields["tags"] = torch.tensor(atoms.get_tags(), dtype=torch.long)
    if labels:
        results = atoms.calc.results if atoms.calc is not None else {}
        missing = [key for key in ("energy", "forces") if key not in results]
        if missing:
            raise ValueError(f"{atoms.get_chemical_formula()} has no {' and '.join(missing)} label")
        fields["energy"] = torch.tensor([float(results["energy"])], dtype=torch.float64)
        fields["forces"] = torch.tensor(np.asarray(results["forces"]), dtype=torch.float32)
    return Data(**fields)


def atoms_to_batch(
    atoms: Atoms, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Batch:
    """One structure as a batch of one (with ``batch`` [N]), no labels, on ``device``."""
    return Batch.from_data_list([atoms_to_data(atoms, dtype)]).to(device)
