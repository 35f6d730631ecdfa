"""The reference calculators that generate the mini datasets, with a cheaper state check.

ASE's ``Calculator.check_state`` (ase.calculators.calculator.compare_atoms) compares the atoms
with the last calculated ones by ``numpy.allclose`` per property: about 0.15 ms per call, and MD
and relaxations call it several times per step. It was 20% of the CPU time of generating
mini-OC20 with MD (9 of 47 s, measured with cProfile) and 3 of 13 s of mini-MD17 ethanol. Here
the same properties are compared for exact equality. The two checks differ only for changes
smaller than their tolerance, 1e-15 Å (below one unit in the last place of a coordinate above
1 Å), which no MD or optimiser step makes, so the generated data are unchanged
(tests/data/test_calculators.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from tblite.ase import TBLite


def changed_properties(
    previous: Atoms | None, atoms: Atoms, ignored: Iterable[str] = ()
) -> list[str]:
    """The properties of ``all_changes`` (positions, numbers, cell, pbc, initial_charges,
    initial_magmoms) in which ``atoms`` differs from ``previous`` (all of them when there is no
    previous), leaving out ``ignored``: ASE's compare_atoms with exact equality."""
    checked = set(all_changes) - set(ignored)
    if previous is None:
        return [name for name in all_changes if name in checked]
    changes = []
    for name in ("cell", "pbc"):
        if name in checked and not np.array_equal(
            np.asarray(getattr(previous, name)), np.asarray(getattr(atoms, name))
        ):
            changes.append(name)
    arrays, before = atoms.arrays, previous.arrays
    for name in sorted(checked - {"cell", "pbc"}):
        if (name in arrays) != (name in before):
            changes.append(name)
        elif name in arrays and not np.array_equal(arrays[name], before[name]):
            changes.append(name)
    return changes


class ExactStateCheck:
    """Mixin for an ASE calculator: ``check_state`` by `changed_properties`."""

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        return changed_properties(self.atoms, atoms, self.ignored_changes)


class EMTCalculator(ExactStateCheck, EMT):
    """ASE's EMT (mini-OC20, mini-OC22) with the exact state check."""


class GFN2xTBCalculator(ExactStateCheck, TBLite):
    """tblite's ASE calculator (GFN2-xTB for mini-MD17) with the exact state check."""


@dataclass(frozen=True)
class LangevinMD:
    """The Langevin dynamics (ase.md.langevin) that samples a generated dataset's MD frames:
    temperature_K (K), timestep_fs (fs) and friction_per_fs (1/fs)."""

    temperature_K: float
    timestep_fs: float
    friction_per_fs: float

    def dynamics(self, atoms: Atoms, rng: np.random.Generator) -> Langevin:
        """The dynamics of ``atoms``, random forces drawn from ``rng``; the centre of mass is not
        held by the thermostat (fixcm=False: a FixCom constraint does that where wanted)."""
        return Langevin(
            atoms,
            timestep=self.timestep_fs * units.fs,
            temperature_K=self.temperature_K,
            friction=self.friction_per_fs / units.fs,
            fixcm=False,
            rng=rng,
        )

    def provenance(self) -> dict[str, Any]:
        """The settings as provenance.json records them."""
        return asdict(self)
