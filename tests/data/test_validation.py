"""Tests of dens.data.validation: each bound refuses in one line naming where, the atom and the
value; structures inside the bounds (a slab, a molecule, the bounds themselves) pass."""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from dens.data.validation import (
    MAX_CELL_LENGTH,
    MAX_COORDINATE,
    InvalidStructureError,
    check_atoms,
    check_structure,
)
from dens.errors import DataError, DensError, UnsupportedStructureError


def slab() -> ase.Atoms:
    atoms = ase.build.fcc111("Cu", size=(2, 2, 3), vacuum=5.0, periodic=True)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.5, forces=np.zeros((len(atoms), 3)))
    return atoms


def test_valid_structures_and_the_bounds_themselves_pass():
    check_atoms(slab(), "slab")
    check_atoms(ase.build.molecule("CH3CH2OH"), "ethanol")
    check_atoms(ase.build.bulk("Cu"), "one-atom crystal")  # pairs with its images
    edge = ase.Atoms("Og2", positions=[[MAX_COORDINATE, 0, 0], [-MAX_COORDINATE, 0, 0]])
    check_atoms(edge, "edge", max_atomic_number=118)
    box = ase.Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 1]], cell=[MAX_CELL_LENGTH] * 3, pbc=True)
    check_atoms(box, "box")


def _refusal(change: str) -> tuple[ase.Atoms, int]:
    atoms, max_z = slab(), 89
    if change == "nan force":
        atoms.calc.results["forces"][7, 2] = np.nan
    elif change == "inf energy":
        atoms.calc.results["energy"] = np.inf
    elif change == "nan cell":
        atoms.cell[1, 1] = np.nan
    elif change == "singular cell":
        atoms.cell[2] = atoms.cell[0]
    elif change == "thin cell":
        atoms.set_cell(np.diag([0.5, 20.0, 20.0]))
    elif change == "spread":
        atoms.positions[0] += 11 * atoms.cell[0]
    elif change == "Og":
        atoms.numbers[5] = 118
    elif change == "Z=0":
        atoms.numbers[1] = 0
    elif change == "equiformer table":
        atoms.numbers[1], max_z = 64, 63
    elif change == "empty":
        atoms = ase.Atoms(cell=atoms.cell, pbc=True)
    return atoms, max_z


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("nan force", r"^f: atom 7 \(Cu\) has force \[0, 0, nan\] eV/Å, not finite$"),
        ("inf energy", r"^f: energy inf eV is not finite$"),
        ("nan cell", r"^f: cell .*nan.* Å is not finite$"),
        ("singular cell", r"^f: periodic cell .* is singular \(volume 0 Å\^3\)$"),
        ("thin cell", r"^f: periodic cell height 0\.5 Å along vector 0, below 1 Å$"),
        ("spread", r"^f: the atoms span 11\.\d+ cells along periodic vector 0, beyond 10"),
        ("Og", r"^f: atom 5 has atomic number 118 \(Og\), outside the supported 1\.\.89 \(Ac\)$"),
        ("Z=0", r"^f: atom 1 has atomic number 0 \(X\), outside"),
        ("equiformer table", r"^f: atom 1 has atomic number 64 \(Gd\), outside .* 1\.\.63 \(Eu\)$"),
        ("empty", r"^f: 0 atom\(s\); a periodic cell needs at least 1"),
    ],
)
def test_each_bound_refuses_in_one_line(change, message):
    atoms, max_z = _refusal(change)
    with pytest.raises(InvalidStructureError, match=message) as error:
        check_atoms(atoms, "f", max_atomic_number=max_z)
    assert isinstance(error.value, DataError | UnsupportedStructureError | DensError)


def test_arrays_of_the_wrong_shape_are_refused():
    with pytest.raises(InvalidStructureError, match=r"positions must be \[2, 3\]"):
        check_structure(np.array([1, 1]), np.zeros((2, 2)), "x")
    with pytest.raises(InvalidStructureError, match=r"forces must be \[2, 3\]"):
        check_structure(np.array([1, 1]), np.eye(2, 3), "x", forces=np.zeros((3, 3)))
    with pytest.raises(InvalidStructureError, match=r"atomic numbers must be integers"):
        check_structure(np.array([1.5, 1.0]), np.eye(2, 3), "x")


def test_a_simulation_refuses_a_malformed_start_before_writing(tmp_path):
    """dens.simulate.run_simulation checks its start first (before: a NaN position ran)."""
    from dens.simulate import SimulationSettings, run_simulation

    positions = ase.build.molecule("CH3CH2OH").positions
    numbers = ase.build.molecule("CH3CH2OH").numbers
    positions[2, 1] = np.nan
    with pytest.raises(
        InvalidStructureError, match=r"^sim 1/1: start: atom 2 \(\w+\) has position"
    ):
        run_simulation(
            None,
            numbers,
            positions,
            positions[None],
            np.zeros(1),
            SimulationSettings.__new__(SimulationSettings),
            tmp_path / "init0",
            seed=0,
            label="sim 1/1",
        )
    assert not (tmp_path / "init0").exists()
