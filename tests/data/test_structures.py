"""One conversion from ASE Atoms to model input, shared by training data and the calculator."""

from __future__ import annotations

import ase.build
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms, FixBondLength, FixCom

from dens.data.aselmdb import AseLmdbDataset, write_aselmdb
from dens.data.structures import atoms_to_batch, atoms_to_data


def slab() -> ase.Atoms:
    atoms = ase.build.fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    ase.build.add_adsorbate(atoms, "O", 1.5, "fcc")
    atoms.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    return atoms


def test_periodic_slab_fixed_atoms_tags_and_flags() -> None:
    atoms = slab()
    atoms.info["md_split"] = True
    data = atoms_to_data(atoms)
    assert data.fixed.tolist() == [True] * 4 + [False] * 9
    assert data.tags.tolist() == atoms.get_tags().tolist() and data.tags.dtype == torch.long
    assert data.cell.shape == (1, 3, 3) and data.pbc.tolist() == [[True, True, False]]
    assert data.md_split.tolist() == [True]
    assert "energy" not in data


def test_molecule_without_constraints_or_labels() -> None:
    water = ase.build.molecule("H2O")
    data = atoms_to_data(water, torch.float64)
    assert data.pos.dtype == torch.float64 and not data.fixed.any()
    assert "cell" not in data and "tags" not in data and data.md_split.tolist() == [False]
    batch = atoms_to_batch(water)
    assert batch.batch.tolist() == [0, 0, 0] and batch.pos.dtype == torch.float32


def test_constraints_fixcom_is_accepted_others_refused() -> None:
    water = ase.build.molecule("H2O")
    water.set_constraint(FixCom())
    assert not atoms_to_data(water).fixed.any()
    water.set_constraint(FixBondLength(0, 1))
    with pytest.raises(ValueError, match="unsupported constraint FixBondLength"):
        atoms_to_data(water)


def test_labels_keep_total_energies_in_float64(tmp_path) -> None:
    """A paper-scale MD17 total energy (about -17,600 eV) survives to the meV and below: the
    float32 spacing there is 2 meV, so a float32 label would lose it before normalisation."""
    molecules = []
    energies = [-17613.123456, -17613.124321]  # 0.865 meV apart
    for energy in energies:
        atoms = ase.build.molecule("CH4")
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((5, 3)))
        molecules.append(atoms)
    path = tmp_path / "big.aselmdb"
    write_aselmdb(path, molecules)
    dataset = AseLmdbDataset(path)
    read = [dataset[i].energy for i in range(2)]
    assert all(e.dtype == torch.float64 for e in read)
    assert [float(e) for e in read] == energies
    assert abs(float(read[0] - read[1]) * 1000 - 0.865) < 1e-6


def test_labels_need_energy_and_forces() -> None:
    water = ase.build.molecule("H2O")
    water.calc = SinglePointCalculator(water, energy=-1.0)
    with pytest.raises(ValueError, match="no forces label"):
        atoms_to_data(water, labels=True)


def test_dataset_knows_its_elements(tmp_path) -> None:
    molecules = []
    for name in ("CH4", "H2O"):
        atoms = ase.build.molecule(name)
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((len(atoms), 3)))
        molecules.append(atoms)
    write_aselmdb(tmp_path / "two.aselmdb", molecules)
    assert AseLmdbDataset(tmp_path / "two.aselmdb").elements == [1, 6, 8]
