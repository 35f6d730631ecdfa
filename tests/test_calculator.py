"""Tests of dens.calculator: de-normalised model energy/forces through ASE, conservative forces
(finite differences in float64), a short relaxation, the batch built from ase.Atoms, and the
structures it refuses (elements absent from training, atoms too close)."""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest
import torch
from ase.constraints import FixAtoms
from ase.optimize import BFGS
from toy_model import build_toy_model, toy_experiment, train_toy_run

from dens.calculator import DeNSCalculator
from dens.checkpoint import FORMAT_VERSION, save_checkpoint
from dens.data.batch import Batch
from dens.data.structures import atoms_to_batch
from dens.errors import CheckpointError, DensError, UnsupportedStructureError
from dens.normalization import NUM_ELEMENTS, Normalizer

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


# -- structures the model cannot answer for ------------------------------------------------------
def cluster(symbols: str, seed: int = 0) -> ase.Atoms:
    """A rattled fcc fragment with the given symbols (atoms at least ~2.2 Å apart)."""
    base = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms = ase.Atoms(symbols, positions=base.positions[: len(ase.Atoms(symbols))])
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_training_elements_are_stored_in_the_checkpoint(run):
    run_dir, _ = run
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["normalizer"]["elements"] == [29, 79]  # the toy data: Cu/Au clusters
    assert DeNSCalculator(run_dir, build_toy_model).elements == (29, 79)


@pytest.mark.parametrize(
    ("symbols", "message"),
    [
        ("Cu5Ag", r"^AgCu5: element Ag not in the training data of toy/pair-dens"),
        ("Cu4AgPt", r"elements Ag, Pt not in the training data of toy/pair-dens"),
    ],
)
def test_elements_absent_from_training_are_refused(run, symbols, message):
    run_dir, _ = run
    atoms = cluster(symbols)
    atoms.calc = DeNSCalculator(run_dir, build_toy_model)
    with pytest.raises(UnsupportedStructureError, match=message) as error:
        atoms.get_potential_energy()
    assert "(trained on Cu, Au)" in str(error.value)
    assert isinstance(error.value, DensError)


def test_atoms_closer_than_min_distance_are_refused_and_the_pair_named(run):
    run_dir, _ = run
    atoms = cluster("Cu5Au")
    atoms.positions[5] = atoms.positions[2] + [0.0, 0.3, 0.0]
    atoms.calc = DeNSCalculator(run_dir, build_toy_model)
    with pytest.raises(
        UnsupportedStructureError,
        match=r"atoms 2 \(Cu\) and 5 \(Au\) are 0\.300 Å apart, closer than min_distance 0\.5 Å",
    ):
        atoms.get_forces()
    for min_distance in (0.25, 0.0):  # configurable; 0 turns the check off
        atoms.calc = DeNSCalculator(run_dir, build_toy_model, min_distance=min_distance)
        assert np.isfinite(atoms.get_potential_energy())


def test_periodic_structures_use_minimum_image_distances(run):
    run_dir, _ = run
    crystal = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True)
    calc = DeNSCalculator(run_dir, build_toy_model)
    calc.check_structure(crystal)  # nearest neighbours 2.55 Å apart
    crystal.positions[1] = crystal.positions[0] + crystal.cell[0] - [0.2, 0.0, 0.0]
    assert crystal.get_distance(0, 1) > 3.0  # far apart in the cell, 0.2 Å across its boundary
    with pytest.raises(UnsupportedStructureError, match=r"atoms 0 \(Cu\) and 1 \(Cu\) are 0\.200"):
        calc.check_structure(crystal)


def test_checkpoint_without_training_elements_skips_the_element_check(run, tmp_path):
    run_dir, _ = run
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    del best["normalizer"]["elements"]  # a checkpoint written before dens stored them
    save_checkpoint(best, tmp_path / "checkpoints" / "best.pt")
    calc = DeNSCalculator(tmp_path, build_toy_model)
    assert calc.elements is None
    atoms = cluster("Cu5Ag")
    atoms.calc = calc
    assert np.isfinite(atoms.get_potential_energy())


def test_damaged_checkpoint_is_named(run, tmp_path):
    run_dir, _ = run
    raw = (run_dir / "checkpoints" / "best.pt").read_bytes()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=r"best\.pt is damaged"):
        DeNSCalculator(tmp_path, build_toy_model)


def test_normalizer_carries_the_training_elements():
    counts = torch.zeros(3, NUM_ELEMENTS)
    counts[:, 6], counts[:, 1], counts[:, 8] = 2, 6, 1
    normalizer = Normalizer.fit(torch.tensor([-1.0, -2.0, -4.0]), counts, "linear")
    assert normalizer.elements == (1, 6, 8)
    state = normalizer.to_dict()
    assert state["elements"] == [1, 6, 8]
    assert Normalizer.from_dict(state).elements == (1, 6, 8)
    del state["elements"]
    assert Normalizer.from_dict(state).elements is None  # older checkpoints: unknown
    # A subset's counts with the whole training set's elements (subsampled statistics).
    subset = Normalizer.fit(torch.tensor([-1.0, -2.0]), counts[:2], "mean", elements=[8, 1, 6, 17])
    assert subset.elements == (1, 6, 8, 17)


def test_calculator_of_a_run_directory_needs_no_other_argument(tmp_path):
    """An ethanol run of the registered Equiformer (smoke preset, untrained weights): built from
    its directory alone; it answers for ethanol and refuses CH3Cl and Si2H6."""
    from dens.models import build_model
    from dens.pipeline.registry import load_registry

    experiment = load_registry({"scale": "smoke"}).resolve("md17-ethanol/equiformer-l2")
    model = build_model(experiment)
    ethanol = ase.build.molecule("CH3CH2OH")
    counts = torch.zeros(2, NUM_ELEMENTS)
    counts[:, 6], counts[:, 1], counts[:, 8] = 2, 6, 1
    normalizer = Normalizer.fit(torch.tensor([-970.0, -971.0], dtype=torch.float64), counts, "mean")
    best = {
        "format_version": FORMAT_VERSION,
        "kind": "best",
        "experiment": experiment,
        "epoch": 1,
        "step": 1,
        "normalizer": normalizer.to_dict(),
        "num_parameters": 1,
        "model": model.state_dict(),
        "weights": "model",
        "val": {"energy_mae_meV": 0.0, "forces_mae_meV_per_A": 0.0},
    }
    save_checkpoint(best, tmp_path / "checkpoints" / "best.pt")
    calc = DeNSCalculator(tmp_path)
    ethanol.calc = calc
    assert np.isfinite(ethanol.get_potential_energy())
    for formula, element in (("CH3Cl", "Cl"), ("Si2H6", "Si")):
        molecule = ase.build.molecule(formula)
        molecule.calc = calc
        with pytest.raises(UnsupportedStructureError, match=f"element {element} not in the"):
            molecule.get_potential_energy()


# -- malformed structures: one-line refusals, never a finite energy (issue 23) ---------------------
def _malformed(name: str) -> ase.Atoms:
    atoms = cluster("Cu5Au")
    if name == "nan position":
        atoms.positions[3, 1] = np.nan
    elif name == "inf position":
        atoms.positions[0, 0] = np.inf
    elif name == "no atom":
        atoms = ase.Atoms()
    elif name == "one atom":
        atoms = atoms[:1]
    elif name == "Z=150":
        atoms.numbers[2] = 150
    elif name == "cell scaled by 1e8":
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.set_cell(atoms.cell * 1e8)
    elif name == "atom 1e9 Å away":
        atoms.positions[4] = [1e9, 0.0, 0.0]
    elif name == "isolated pair":
        atoms = ase.Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 50.0]])
    return atoms


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nan position", r"^AuCu5: atom 3 \(Cu\) has position \[.*nan.*\] Å, not finite$"),
        ("inf position", r"^AuCu5: atom 0 \(Cu\) has position \[inf, .*not finite$"),
        ("no atom", r"^: 0 atom\(s\); a molecule needs at least 2"),
        ("one atom", r"^Cu: 1 atom\(s\); a molecule needs at least 2"),
        ("Z=150", r"^6 atoms: atom 2 has atomic number 150 \(Z=150\), outside .* 1\.\.118"),
        ("cell scaled by 1e8", r"^Cu4: cell vector 0 is 3\.61e\+08 Å long, beyond 1000 Å$"),
        ("atom 1e9 Å away", r"^AuCu5: atom 4 \(Cu\) has position \[1e\+09, 0, 0\] Å, beyond"),
        ("isolated pair", r"^Cu2: no two atoms within the cutoff 6 Å of toy/pair-dens"),
    ],
)
def test_malformed_structures_are_refused_in_one_line(run, case, message):
    """Before: a NaN or inf position gave the unmodified molecule's finite energy, 0 or 1 atoms
    'cannot reshape tensor of 0 elements', Z = 150 an IndexError, the scaled cell a MemoryError
    (617 PiB) and the far atom an empty AssertionError."""
    run_dir, _ = run
    atoms = _malformed(case)
    atoms.calc = DeNSCalculator(run_dir, build_toy_model)
    with pytest.raises(UnsupportedStructureError, match=message) as error:
        atoms.get_potential_energy()
    assert isinstance(error.value, DensError) and "\n" not in str(error.value)


def test_atomic_numbers_beyond_the_models_table_are_refused(tmp_path):
    """The registered Equiformer embeds Z < 64: Gd (64) is refused before the model indexes its
    table, whatever the training elements."""
    from dens.data.validation import model_cutoff, model_max_atomic_number
    from dens.models import build_model
    from dens.pipeline.registry import load_registry

    experiment = load_registry({"scale": "smoke"}).resolve("md17-ethanol/equiformer-l2")
    model = build_model(experiment)
    assert model_max_atomic_number(model) == 63 and model_cutoff(model) == 5.0
    best = {
        "format_version": FORMAT_VERSION,
        "kind": "best",
        "experiment": experiment,
        "epoch": 1,
        "step": 1,
        "normalizer": Normalizer.fit(
            torch.tensor([-1.0, -2.0], dtype=torch.float64), torch.zeros(2, NUM_ELEMENTS), "mean"
        ).to_dict(),
        "num_parameters": 1,
        "model": model.state_dict(),
        "weights": "model",
        "val": {"energy_mae_meV": 0.0, "forces_mae_meV_per_A": 0.0},
    }
    best["normalizer"].pop("elements", None)  # no training elements: only the table limits
    save_checkpoint(best, tmp_path / "checkpoints" / "best.pt")
    molecule = ase.Atoms("GdH", positions=[[0, 0, 0], [0, 0, 1.8]])
    molecule.calc = DeNSCalculator(tmp_path)
    with pytest.raises(UnsupportedStructureError, match=r"number 64 \(Gd\), outside .*63"):
        molecule.get_potential_energy()


def test_has_pair_counts_periodic_images_and_agrees_with_ases_neighbour_list():
    from ase.neighborlist import neighbor_list

    from dens.calculator import has_pair

    cases = [
        ase.build.bulk("Cu", a=20.0),  # one atom, nearest image 14.1 Å away
        ase.build.fcc111("Cu", (2, 2, 3), vacuum=5.0, periodic=True),
        ase.Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 13.0]]),
        ase.Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 11.0]]),
        ase.Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 13.0]], cell=[14.0] * 3, pbc=True),
    ]
    for atoms in cases:
        for cutoff in (6.0, 12.0, 15.0):
            expected = neighbor_list("i", atoms, cutoff).size > 0
            assert has_pair(atoms, cutoff) == expected, (atoms, cutoff)
