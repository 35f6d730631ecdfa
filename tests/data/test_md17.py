"""MD17 data layer: mini-MD17 generation, npz conversion, aselmdb reading (dens.data)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms, FixCartesian

from dens.data.aselmdb import AseLmdbDataset, write_aselmdb
from dens.data.batch import Batch
from dens.data.md17 import (
    KCAL_PER_MOL_IN_EV,
    MD17_MOLECULES,
    convert_md17_npz,
    md17_npz_url,
    split_indices,
)
from dens.data.md17_generate import TBLITE_ACCURACY, generate_md17
from dens.errors import InvalidDataError

SMALL = {"n_train": 6, "n_val": 2, "n_test": 4, "stride": 3, "equilibration_steps": 10}


def _rows(path: Path) -> list:
    """The ase.db rows of a split folder (its shards in order)."""
    from dens.data.split_folder import split_rows

    return [row for _, row in split_rows(path)]


@pytest.fixture(scope="module")
def ethanol_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("ethanol")
    generate_md17("ethanol", out_dir, seed=0, progress=False, **SMALL)
    return out_dir


def test_unknown_molecule_names_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'ethanoll'.*aspirin, benzene.*uracil"):
        generate_md17("ethanoll", tmp_path, seed=0, progress=False, **SMALL)
    with pytest.raises(ValueError, match="'ethanoll'"):
        md17_npz_url("ethanoll")


def test_npz_urls_follow_md17_file_names() -> None:
    assert len(MD17_MOLECULES) == 8
    assert md17_npz_url("aspirin").endswith("/md17_aspirin.npz")
    assert md17_npz_url("benzene").endswith("/md17_benzene2017.npz")
    assert md17_npz_url("salicylic_acid").endswith("/md17_salicylic.npz")


def test_split_indices_is_the_equiformer_permutation_split() -> None:
    split = split_indices(20, 8, 3, None, seed=1)
    perm = np.random.default_rng(1).permutation(20)
    assert split["train"].tolist() == perm[:8].tolist()
    assert split["val"].tolist() == perm[8:11].tolist()
    assert split["test"].tolist() == perm[11:].tolist()
    assert len(split_indices(20, 8, 3, 4, seed=1)["test"]) == 4
    with pytest.raises(ValueError, match="20 frames cannot hold"):
        split_indices(20, 15, 3, 4, seed=1)


def test_generation_writes_splits_and_provenance(ethanol_dir: Path) -> None:
    split = json.loads((ethanol_dir / "split.json").read_text())
    assert split["n_frames"] == 12
    frames = split["train"] + split["val"] + split["test"]
    assert sorted(frames) == list(range(12))
    for name in ("train", "val", "test"):
        rows = _rows(ethanol_dir / name)
        assert [row.frame for row in rows] == split[name]
        assert all(row.natoms == 9 and row.formula == "C2H6O" for row in rows)
    assert not (ethanol_dir / "train.aselmdb-lock").exists()
    provenance = json.loads((ethanol_dir / "provenance.json").read_text())
    assert provenance["method"] == "GFN2-xTB"
    assert provenance["temperature_K"] == 500.0
    assert provenance["timestep_fs"] == 0.5
    assert provenance["stride_steps"] == 3
    assert provenance["equilibration_steps"] == 10
    assert provenance["n_frames"] == 12
    assert provenance["openmp_threads"] == 1
    assert set(provenance["versions"]) == {"tblite", "ase", "rdkit", "numpy"}
    assert provenance["wall_time_s"] > 0


def test_generated_labels_are_gfn2_xtb_of_the_stored_positions(ethanol_dir: Path) -> None:
    from tblite.ase import TBLite

    row = _rows(ethanol_dir / "test")[0]
    atoms = Atoms(numbers=row.numbers, positions=row.positions)
    atoms.calc = TBLite(method="GFN2-xTB", accuracy=TBLITE_ACCURACY, verbosity=0)
    np.testing.assert_allclose(atoms.get_potential_energy(), row.energy, atol=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), row.forces, atol=1e-4)
    # MD frames are off-equilibrium: the forces are far from zero
    assert np.abs(row.forces).max() > 0.1


def test_generation_is_deterministic_for_a_seed(ethanol_dir: Path, tmp_path: Path) -> None:
    generate_md17("ethanol", tmp_path / "same", seed=0, progress=False, **SMALL)
    generate_md17("ethanol", tmp_path / "other", seed=1, progress=False, **SMALL)
    reference = _rows(ethanol_dir / "train")
    same = _rows(tmp_path / "same" / "train")
    other = _rows(tmp_path / "other" / "train")
    for a, b in zip(reference, same, strict=True):
        assert a.frame == b.frame
        assert np.array_equal(a.positions, b.positions)
        assert a.energy == b.energy
        assert np.array_equal(a.forces, b.forces)
    assert [a.energy for a in reference] != [c.energy for c in other]


def test_dataset_yields_the_shared_data_convention(ethanol_dir: Path) -> None:
    dataset = AseLmdbDataset(ethanol_dir / "train")
    rows = _rows(ethanol_dir / "train")
    assert len(dataset) == SMALL["n_train"] == len(rows)
    assert dataset.metadata["molecule"] == "ethanol"
    data = dataset[2]
    assert data.pos.dtype == torch.float32 and data.pos.shape == (9, 3)
    assert data.atomic_numbers.dtype == torch.long
    assert data.atomic_numbers.tolist() == rows[2].numbers.tolist()
    assert torch.allclose(data.pos, torch.tensor(rows[2].positions, dtype=torch.float32))
    assert torch.allclose(data.forces, torch.tensor(rows[2].forces, dtype=torch.float32))
    assert data.energy.item() == pytest.approx(rows[2].energy, rel=1e-7)
    assert not data.fixed.any() and data.fixed.shape == (9,)
    assert "cell" not in data
    batch = Batch.from_data_list([dataset[0], dataset[1], dataset[2]])
    assert batch.natoms.tolist() == [9, 9, 9]
    assert batch.energy.shape == (3,) and batch.energy.dtype == torch.float64
    assert batch.md_split.tolist() == [False, False, False]
    assert batch.batch.shape == (27,) and batch.forces.shape == (27, 3)
    assert torch.equal(dataset[-1].pos, dataset[SMALL["n_train"] - 1].pos)
    with pytest.raises(IndexError, match="index 6 out of range for 6 rows"):
        dataset[6]
    dataset[0].pos += 1.0  # items are copies
    assert torch.equal(dataset[0].pos, Batch.from_data_list([dataset[0]]).pos)
    assert torch.allclose(dataset[0].pos, torch.tensor(rows[0].positions, dtype=torch.float32))


def test_dataset_reads_fixed_atoms_md_split_and_periodic_cells(tmp_path: Path) -> None:
    slab = Atoms("Cu3O", positions=np.arange(12.0).reshape(4, 3), cell=np.eye(3) * 5.0, pbc=True)
    slab.set_tags([0, 1, 1, 2])
    slab.set_constraint(FixAtoms(indices=[0, 1]))
    slab.calc = SinglePointCalculator(slab, energy=-1.5, forces=np.ones((4, 3)))
    slab.info = {"md_split": True}
    write_aselmdb(tmp_path / "slab.aselmdb", [slab])
    data = AseLmdbDataset(tmp_path / "slab.aselmdb")[0]
    assert data.fixed.tolist() == [True, True, False, False]
    assert data.md_split.tolist() == [True]
    assert data.tags.tolist() == [0, 1, 1, 2]
    assert data.cell.shape == (1, 3, 3) and data.cell[0, 1, 1].item() == 5.0
    assert data.pbc.tolist() == [[True, True, True]]

    molecule = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]])
    molecule.calc = SinglePointCalculator(molecule, energy=-1.0, forces=np.zeros((2, 3)))
    write_aselmdb(tmp_path / "mixed.aselmdb", [slab, molecule])
    with pytest.raises(ValueError, match="mixed.aselmdb: row 2 has fields"):
        AseLmdbDataset(tmp_path / "mixed.aselmdb")

    slab.set_constraint(FixCartesian([0], mask=(True, False, False)))
    write_aselmdb(tmp_path / "com.aselmdb", [slab])
    with pytest.raises(ValueError, match="com.aselmdb.*unsupported constraint FixCartesian"):
        AseLmdbDataset(tmp_path / "com.aselmdb")


def test_writer_and_reader_reject_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="structure 0 .* has no energy and forces"):
        write_aselmdb(tmp_path / "x.aselmdb", [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]])])
    with pytest.raises(ValueError, match="must end in '.aselmdb'"):
        write_aselmdb(tmp_path / "x.lmdb", [])
    with pytest.raises(FileNotFoundError, match="missing.aselmdb"):
        AseLmdbDataset(tmp_path / "missing.aselmdb")


def _write_md17_npz(path: Path, n_frames: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = {
        "R": rng.normal(size=(n_frames, 3, 3)),
        "z": np.array([8, 1, 1]),
        "E": rng.normal(-47000.0, 5.0, size=(n_frames, 1)),
        "F": rng.normal(size=(n_frames, 3, 3)) * 20.0,
        "theory": np.array("DFT: PBE+TS"),
    }
    np.savez(path, **arrays)
    return arrays


def test_convert_md17_npz_to_evs_with_the_paper_split(tmp_path: Path) -> None:
    arrays = _write_md17_npz(tmp_path / "md17_water.npz", 30)
    paths = convert_md17_npz(tmp_path / "md17_water.npz", tmp_path / "out", 10, 5, seed=1)
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    expected = split_indices(30, 10, 5, None, seed=1)
    assert {k: split[k] for k in expected} == {k: v.tolist() for k, v in expected.items()}
    assert len(split["test"]) == 15
    for name, path in paths.items():
        rows = _rows(path)
        assert [row.frame for row in rows] == split[name]
        for row in rows:
            frame = row.frame
            assert np.array_equal(row.positions, arrays["R"][frame])
            assert row.numbers.tolist() == [8, 1, 1]
            assert row.energy == pytest.approx(arrays["E"][frame, 0] * KCAL_PER_MOL_IN_EV)
            np.testing.assert_allclose(row.forces, arrays["F"][frame] * KCAL_PER_MOL_IN_EV)
    assert KCAL_PER_MOL_IN_EV == pytest.approx(0.0433641, rel=1e-5)
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["theory"] == "DFT: PBE+TS"
    assert provenance["split_sizes"] == {"train": 10, "val": 5, "test": 15}
    assert len(provenance["source_sha256"]) == 64


def test_convert_md17_npz_names_missing_keys(tmp_path: Path) -> None:
    """Before: a bare ValueError, printed as a traceback by the CLI."""
    np.savez(tmp_path / "bad.npz", R=np.zeros((2, 3, 3)), z=np.ones(3))
    with pytest.raises(
        InvalidDataError, match=r"bad.npz is not an MD17 npz: missing keys \['E', 'F'\]"
    ):
        convert_md17_npz(tmp_path / "bad.npz", tmp_path / "out")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "bad.npz").read_bytes()[:100])
    with pytest.raises(InvalidDataError, match=r"cut.npz: not a readable MD17 npz"):
        convert_md17_npz(tmp_path / "cut.npz", tmp_path / "out")


def _malformed_npz(path: Path, change: str) -> Path:
    arrays = _write_md17_npz(path, 20)
    if change == "no atom":
        arrays |= {"R": arrays["R"][:, :0], "z": arrays["z"][:0], "F": arrays["F"][:, :0]}
    elif change == "one atom":
        arrays |= {"R": arrays["R"][:, :1], "z": arrays["z"][:1], "F": arrays["F"][:, :1]}
    elif change == "Z=200":
        arrays["z"][1] = 200
    elif change == "nan force":
        arrays["F"][13, 2, 1] = np.nan
    elif change == "inf energy":
        arrays["E"][4] = np.inf
    elif change == "far atom":
        arrays["R"][7, 0] = [0.0, 0.0, 2e4]
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no atom", r"frame 0: 0 atom\(s\); a molecule needs at least 2"),
        ("one atom", r"frame 0: 1 atom\(s\); a molecule needs at least 2"),
        ("Z=200", r"frame 0: atom 1 has atomic number 200 \(Z=200\), outside the supported"),
        ("nan force", r"frame 13: atom 2 \(H\) has force \[.*, nan, .*\] eV/Å, not finite$"),
        ("inf energy", r"frame 4: energy inf eV is not finite$"),
        ("far atom", r"frame 7: atom 0 \(O\) has position \[0, 0, 20000\] Å, beyond"),
    ],
)
def test_convert_md17_npz_refuses_malformed_molecules_naming_the_frame(
    tmp_path: Path, change: str, message: str
) -> None:
    """Before: 0-atom molecules and Z = 200 were converted."""
    path = _malformed_npz(tmp_path / "md17_x.npz", change)
    with pytest.raises(InvalidDataError, match=r"md17_x\.npz: " + message):
        convert_md17_npz(path, tmp_path / "out", 10, 5)
    assert not (tmp_path / "out").exists()


def test_fairchem_and_ase_db_read_the_files(ethanol_dir: Path) -> None:
    from fairchem.core.datasets import AseDBDataset

    path = ethanol_dir / "val"
    rows = _rows(path)
    dataset = AseDBDataset({"src": str(path)})
    assert len(dataset) == len(rows) == SMALL["n_val"]
    for i, row in enumerate(rows):
        atoms = dataset.get_atoms(i)
        assert np.array_equal(atoms.get_positions(), row.positions)
        assert atoms.get_potential_energy() == row.energy
        assert atoms.info["sid"] == row.frame
        item = dataset[i]
        assert item.energy.item() == pytest.approx(row.energy, rel=1e-7)
        assert torch.allclose(item.forces, torch.tensor(row.forces, dtype=torch.float32))

    listing = subprocess.run(
        [sys.executable, "-m", "ase", "db", str(path / "shard-000000.aselmdb")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # `ase db` reads one file: the split's one shard
    assert "Rows: 2" in listing
    assert listing.count("C2H6O") == 2 and "gfn2-xtb" in listing
