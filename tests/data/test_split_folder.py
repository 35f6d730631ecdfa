"""A split as a folder of aselmdb shards (dens.data.split_folder): dens and fairchem-core read a
multi-shard folder as the same rows in the same order, a damaged or unrecorded shard is refused
naming it, and a manifest's row total differing from the published count is an error."""

from __future__ import annotations

import json
from pathlib import Path

import ase
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from dens.data.aselmdb import AseLmdbDataset, write_aselmdb
from dens.data.split_folder import (
    check_split,
    read_split_manifest,
    split_rows,
    write_split_manifest,
)
from dens.errors import DataError, MissingDataError
from dens.layout import DatasetDirectory

SIZES = (3, 1, 4)  # rows per shard


def slabs(n: int, first_sid: int):
    rng = np.random.default_rng(first_sid)
    for index in range(n):
        atoms = ase.Atoms(
            "Cu4CO",
            positions=rng.uniform(0.5, 4.5, size=(6, 3)),
            cell=np.eye(3) * 6.0,
            pbc=True,
        )
        atoms.set_constraint(FixAtoms(indices=[0, 1]))
        atoms.calc = SinglePointCalculator(
            atoms, energy=-float(first_sid + index), forces=rng.normal(size=(6, 3))
        )
        atoms.info = {"sid": first_sid + index}
        yield atoms


@pytest.fixture
def split(tmp_path: Path) -> Path:
    """A split folder of three shards (3, 1 and 4 rows, sids 0..7 in order) and its manifest."""
    directory = DatasetDirectory(tmp_path / "data")
    first = 0
    for index, n in enumerate(SIZES):
        write_aselmdb(directory.shard("val_id", index), slabs(n, first))
        first += n
    write_split_manifest(directory.split("val_id"))
    return directory.split("val_id")


def test_dens_and_fairchem_read_the_same_rows_in_the_same_order(split: Path) -> None:
    from fairchem.core.datasets import AseDBDataset

    manifest = read_split_manifest(split)
    assert manifest["rows"] == 8 and [s["rows"] for s in manifest["shards"]] == list(SIZES)
    assert [s["file"] for s in manifest["shards"]] == [p.name for p in sorted(split.iterdir())]
    ours = AseLmdbDataset(split)
    theirs = AseDBDataset({"src": str(split)})
    assert len(ours) == len(theirs) == 8
    for index in range(8):
        atoms = theirs.get_atoms(index)
        assert atoms.info["sid"] == index
        assert float(ours[index].energy) == pytest.approx(atoms.get_potential_energy())
        np.testing.assert_allclose(ours[index].pos.numpy(), atoms.positions, atol=1e-6)
    assert [row.key_value_pairs["sid"] for _, row in split_rows(split)] == list(range(8))
    assert [shard.name for shard, _ in split_rows(split, limit=4)][-1] == "shard-000001.aselmdb"


def test_a_damaged_shard_is_refused_naming_it(split: Path) -> None:
    shard = split / "shard-000001.aselmdb"
    raw = bytearray(shard.read_bytes())
    raw[-100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"^{shard} is damaged \(its sha256"):
        AseLmdbDataset(split)
    shard.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match=rf"^{shard} is damaged \(.*bytes"):
        check_split(split)


def test_shards_missing_or_not_recorded_and_other_files_are_refused(split: Path) -> None:
    extra = split / "shard-000003.aselmdb"
    extra.write_bytes((split / "shard-000000.aselmdb").read_bytes())
    with pytest.raises(DataError, match=r"not recorded in val_id\.manifest\.json: shard-000003"):
        AseLmdbDataset(split)
    extra.unlink()
    (split / "shard-000002.aselmdb").unlink()
    with pytest.raises(DataError, match=r"shards missing: shard-000002\.aselmdb"):
        check_split(split)
    (split / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"holds notes\.txt besides its \*\.aselmdb shards"):
        check_split(split)
    with pytest.raises(MissingDataError, match="split folder not found"):
        AseLmdbDataset(split.with_name("val_ood"))


def test_a_row_total_differing_from_the_published_one_is_an_error(split: Path) -> None:
    manifest = split.with_name("val_id.manifest.json")
    before = manifest.read_text()
    with pytest.raises(DataError) as error:
        write_split_manifest(split, 9, "config/archives.yaml frames of x")
    message = str(error.value)
    assert "split val_id" in message and "9 rows expected" in message and "8 found" in message
    assert manifest.read_text() == before  # nothing written
    assert json.loads(before)["rows"] == write_split_manifest(split, 8)["rows"] == 8


def test_a_single_aselmdb_file_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "mine.aselmdb"
    write_aselmdb(path, slabs(2, 5))
    assert len(AseLmdbDataset(path)) == 2 and check_split(path) == [path]
