"""Tests of dens.calculator: de-normalised model energy/forces through ASE, conservative forces
(finite differences in float64), a short relaxation, and the batch built from ase.Atoms."""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest
import torch
from ase.constraints import FixAtoms
from ase.optimize import BFGS
from torch_geometric.data import Batch
from toy_model import build_toy_model, toy_experiment, train_toy_run

from dens.calculator import DeNSCalculator
from dens.data.structures import atoms_to_batch

EXPERIMENT = toy_experiment(dens=True, epochs=2, lr=3e-2, energy_reference="linear")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, train_toy_run(run_dir, EXPERIMENT, 44, seed=2)


def to_atoms(data) -> ase.Atoms:
    return ase.Atoms(numbers=data.atomic_numbers.numpy(), positions=data.pos.double().numpy())


def test_calculator_returns_the_models_denormalised_energy_and_forces(run):
    run_dir, structures = run
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    model = build_toy_model(EXPERIMENT)
    model.load_state_dict(best["model"])
    model.eval()
    std, mean = best["normalizer"]["std"], best["normalizer"]["mean"]
    calc = DeNSCalculator(run_dir, build_toy_model)
    for data in structures:
        out = model(Batch.from_data_list([data]))  # no force input, no noise
        out = {key: value.detach() for key, value in out.items()}
        refs = float(best["normalizer"]["element_references"][data.atomic_numbers].sum())
        atoms = to_atoms(data)
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(
            float(out["energy"]) * std + mean + refs, rel=1e-9, abs=1e-9
        )
        np.testing.assert_allclose(
            atoms.get_forces(), out["forces"].double().numpy() * std, rtol=1e-6, atol=1e-7
        )


def test_forces_are_minus_the_energy_gradient_by_finite_differences(run):
    run_dir, structures = run
    atoms = to_atoms(structures[0])
    atoms.calc = DeNSCalculator(
        run_dir / "checkpoints" / "best.pt", build_toy_model, dtype=torch.float64
    )
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 0.05  # a non-trivial check
    h = 1e-4
    for atom in range(len(atoms)):
        for axis in range(3):
            shifted = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.calc = atoms.calc
                moved.positions[atom, axis] += sign * h
                shifted.append(moved.get_potential_energy())
            numeric = -(shifted[0] - shifted[1]) / (2 * h)
            assert numeric == pytest.approx(forces[atom, axis], abs=1e-6)


def test_relaxation_lowers_the_energy(run):
    run_dir, structures = run
    atoms = to_atoms(structures[1])
    atoms.calc = DeNSCalculator(
        run_dir / "checkpoints" / "last.pt", build_toy_model, dtype=torch.float64
    )
    start = atoms.get_potential_energy()
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=10)
    assert atoms.get_potential_energy() < start


def test_atoms_to_batch_marks_fixed_atoms_and_periodic_fields():
    slab = ase.build.fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    batch = atoms_to_batch(slab, torch.float32, "cpu")
    assert batch.fixed.tolist() == [True] * 4 + [False] * 8
    assert batch.natoms.tolist() == [12] and batch.batch.tolist() == [0] * 12
    assert batch.md_split.tolist() == [False]
    assert batch.cell.shape == (1, 3, 3) and batch.pbc.tolist() == [[True, True, False]]
    assert batch.tags.tolist() == slab.get_tags().tolist()
    molecule = atoms_to_batch(
        ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]]), torch.float64, "cpu"
    )
    assert molecule.pos.dtype == torch.float64 and "cell" not in molecule
