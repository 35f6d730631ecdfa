"""ASE ``Atoms`` -> the model input every dens model reads (a ``Data``, dens.data.batch).

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

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dens.data.batch import Batch, Data

if TYPE_CHECKING:  # ase.atoms is imported by whoever makes Atoms; ase.constraints costs 0.25 s
    from ase import Atoms


def fixed_mask(constraints: Iterable[Any], n_atoms: int, where: str) -> np.ndarray:
    """bool [N]: True for atoms held by a FixAtoms constraint. ``constraints``: ASE constraint
    objects or their dicts (``{"name": "FixAtoms", "kwargs": {"indices": [...]}}``, as ase.db
    stores them); FixCom is ignored, any other constraint refused (ValueError naming ``where``)."""
    fixed = np.zeros(n_atoms, dtype=bool)
    for constraint in constraints:
        if isinstance(constraint, dict):
            name, indices = constraint.get("name"), constraint.get("kwargs", {}).get("indices")
        else:
            name = type(constraint).__name__
            indices = constraint.index if name == "FixAtoms" else None
        if name == "FixAtoms":
            fixed[np.asarray(indices, dtype=int)] = True
        elif name != "FixCom":
            raise ValueError(
                f"unsupported constraint {name} on {where} "
                "(only FixAtoms marks fixed atoms; FixCom is ignored)"
            )
    return fixed


def structure_data(
    positions: np.ndarray,
    numbers: np.ndarray,
    fixed: np.ndarray,
    *,
    md_split: bool = False,
    cell: np.ndarray | None = None,
    pbc: np.ndarray | None = None,
    tags: np.ndarray | None = None,
    energy: float | None = None,
    forces: np.ndarray | None = None,
    dtype: torch.dtype = torch.float32,
) -> Data:
    """One structure as model input (fields in the module notes) from its arrays: positions
    [N, 3] (Å), numbers [N], fixed [N] bool; cell [3, 3], pbc [3] and tags [N] (zeros when None)
    are kept when some direction is periodic; energy (eV) and forces [N, 3] (eV/Å) when given."""
    n = len(numbers)
    fields = {
        "pos": torch.tensor(np.asarray(positions), dtype=dtype),
        "atomic_numbers": torch.tensor(np.asarray(numbers), dtype=torch.long),
        "natoms": torch.tensor([n], dtype=torch.long),
        "fixed": torch.from_numpy(np.asarray(fixed, dtype=bool)),
        "md_split": torch.tensor([bool(md_split)]),
    }
    if pbc is not None and np.any(pbc):
        tags = np.zeros(n, dtype=np.int64) if tags is None else np.asarray(tags)
        fields["cell"] = torch.tensor(np.asarray(cell), dtype=dtype).view(1, 3, 3)
        fields["pbc"] = torch.tensor(np.asarray(pbc), dtype=torch.bool).view(1, 3)
        fields["tags"] = torch.tensor(tags, dtype=torch.long)
    if energy is not None:
        fields["energy"] = torch.tensor([float(energy)], dtype=torch.float64)
    if forces is not None:
        fields["forces"] = torch.tensor(np.asarray(forces), dtype=torch.float32)
    return Data(**fields)


def atoms_to_data(atoms: Atoms, dtype: torch.dtype = torch.float32, labels: bool = False) -> Data:
    """One structure as model input (fields in the module notes); ``labels`` adds energy and
    forces, which ``atoms.calc`` must hold (e.g. a SinglePointCalculator)."""
    labelled: dict[str, Any] = {}
    if labels:
        results = atoms.calc.results if atoms.calc is not None else {}
        missing = [key for key in ("energy", "forces") if key not in results]
        if missing:
            raise ValueError(f"{atoms.get_chemical_formula()} has no {' and '.join(missing)} label")
        labelled = {"energy": results["energy"], "forces": results["forces"]}
    return structure_data(
        atoms.positions,
        atoms.numbers,
        fixed_mask(atoms.constraints, len(atoms), atoms.get_chemical_formula()),
        md_split=bool(atoms.info.get("md_split", False)),
        cell=np.asarray(atoms.cell),
        pbc=atoms.pbc,
        tags=atoms.get_tags(),
        dtype=dtype,
        **labelled,
    )


def atoms_to_batch(
    atoms: Atoms, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Batch:
    """One structure as a batch of one (with ``batch`` [N]), no labels, on ``device``."""
    return Batch.from_data_list([atoms_to_data(atoms, dtype)]).to(device)
