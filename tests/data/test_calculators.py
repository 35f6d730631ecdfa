"""The dataset calculators' exact state check (dens.data.calculators) against ASE's."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import fcc111, molecule
from ase.calculators.calculator import compare_atoms
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin

from dens.data.calculators import EMTCalculator, changed_properties


def _variants():
    base = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
    moved = base.copy()
    moved.positions[3, 2] += 1e-3
    swapped = base.copy()
    swapped.numbers[0] = 79
    strained = base.copy()
    strained.set_cell(base.cell * 1.01)
    open_z = base.copy()
    open_z.pbc = (True, True, False)
    charged = base.copy()
    charged.set_initial_charges(np.arange(len(base), dtype=float))
    magnetic = base.copy()
    magnetic.set_initial_magnetic_moments(np.ones(len(base)))
    variants = [base.copy(), moved, swapped, strained, open_z, charged, magnetic]
    return base, variants + [molecule("H2O")]


@pytest.mark.parametrize("index", range(8))
def test_changed_properties_match_ase(index: int) -> None:
    base, variants = _variants()
    other = variants[index]
    assert sorted(changed_properties(base, other)) == sorted(compare_atoms(base, other))
    assert sorted(changed_properties(other, base)) == sorted(compare_atoms(other, base))
    ignored = {"positions"}
    assert sorted(changed_properties(base, other, ignored)) == sorted(
        compare_atoms(base, other, excluded_properties=ignored)
    )


def test_no_previous_atoms_means_everything_changed() -> None:
    base, _ = _variants()
    assert sorted(changed_properties(None, base)) == sorted(compare_atoms(None, base))


def test_md_with_the_exact_check_is_bit_identical_to_ase() -> None:
    """Langevin MD with EMTCalculator gives the same trajectory, bit for bit, as with EMT."""
    trajectories = []
    for calculator in (EMT, EMTCalculator):
        atoms = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
        atoms.rattle(0.05, seed=1)
        atoms.calc = calculator()
        dynamics = Langevin(
            atoms,
            timestep=2 * units.fs,
            temperature_K=600,
            friction=0.01 / units.fs,
            rng=np.random.default_rng(0),
        )
        frames = []
        for _ in range(15):
            dynamics.run(2)
            energy = atoms.get_potential_energy()
            frames.append((atoms.positions.copy(), atoms.get_forces(), energy))
        trajectories.append(frames)
    for (pos_a, f_a, e_a), (pos_b, f_b, e_b) in zip(*trajectories, strict=True):
        assert np.array_equal(pos_a, pos_b) and np.array_equal(f_a, f_b) and e_a == e_b
