"""Integrity of aselmdb files: a truncated, empty, foreign or missing file is one DataError that
names it and how to rebuild it, found with plain file I/O before LMDB maps the file (a truncated
file read through LMDB's memory map kills the process with SIGBUS)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import ase
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from dens.data.aselmdb import AseLmdbDataset, check_aselmdb, write_aselmdb
from dens.errors import DataError, DensError, MissingDataError

REPO = Path(__file__).resolve().parents[2]
SPLIT = Path("results/smoke/data/md17-ethanol/test.aselmdb")


def structures(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        atoms = ase.Atoms("C2H6O", positions=rng.normal(0.0, 1.5, size=(9, 3)))
        atoms.calc = SinglePointCalculator(atoms, energy=-1000.0, forces=rng.normal(size=(9, 3)))
        yield atoms


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> bytes:
    """A real split of 60 rows written by write_aselmdb (several pages), as bytes."""
    path = tmp_path_factory.mktemp("aselmdb") / "test.aselmdb"
    assert write_aselmdb(path, structures(60)) == 60
    return path.read_bytes()


def damaged_copy(root: Path, original: bytes, size: int) -> Path:
    path = root / SPLIT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(original[:size])
    return path


def meta(raw: bytes, offset: int) -> dict[str, int]:
    """The fields of one LMDB meta page this module checks (lmdb.h, 64-bit)."""
    pgno, _, flags = struct.unpack_from("<QHH", raw, offset)
    magic, version = struct.unpack_from("<II", raw, offset + 16)
    page_size = struct.unpack_from("<I", raw, offset + 40)[0]  # FREE_DBI md_pad
    last_page, txnid = struct.unpack_from("<QQ", raw, offset + 136)
    return dict(
        pgno=pgno,
        flags=flags,
        magic=magic,
        version=version,
        page_size=page_size,
        last_page=last_page,
        txnid=txnid,
    )


def test_meta_page_layout_of_a_written_file(original: bytes) -> None:
    """The layout check_aselmdb reads, on a file written by write_aselmdb: two meta pages, the
    newer one (larger txnid) counting exactly the pages of the file."""
    first = meta(original, 0)
    assert first["magic"] == 0xBEEFC0DE and first["version"] == 1 and first["flags"] & 0x08
    page_size = first["page_size"]
    assert page_size in (4096, 16384, 65536)
    second = meta(original, page_size)
    assert second["pgno"] == 1 and second["magic"] == 0xBEEFC0DE
    newer = max(first, second, key=lambda m: m["txnid"])
    assert (newer["last_page"] + 1) * page_size == len(original)
    older = min(first, second, key=lambda m: m["txnid"])
    assert (older["last_page"] + 1) * page_size < len(original)  # the check must use the newer


def test_intact_file_passes_and_loads(tmp_path: Path, original: bytes) -> None:
    path = damaged_copy(tmp_path, original, len(original))
    check_aselmdb(path)
    assert len(AseLmdbDataset(path)) == 60
    # A file longer than its pages (preallocated) is fine too.
    path.write_bytes(original + bytes(8192))
    check_aselmdb(path)


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        (0, r"empty: 0 bytes"),
        (10, r"truncated or not an LMDB file: 10 bytes"),
        (100, r"truncated or not an LMDB file: 100 bytes"),
        (4096, r"truncated: 4096 of at least 8192 bytes"),
        (6000, r"truncated: 6000 of at least 8192 bytes"),
        (8192, r"truncated: 8192 of \d+ bytes"),  # the older meta page alone would pass
        (-4096, r"truncated: \d+ of \d+ bytes"),
        (-1, r"truncated: \d+ of \d+ bytes"),
    ],
)
def test_truncated_file_is_one_error_naming_it_and_the_rebuild(
    tmp_path: Path, original: bytes, size: int, reason: str
) -> None:
    path = damaged_copy(tmp_path, original, size if size >= 0 else len(original) + size)
    with pytest.raises(DataError, match=reason) as error:
        check_aselmdb(path)
    message = str(error.value)
    assert message.startswith(f"{path} is damaged (") and "\n" not in message
    assert f"delete {path.parent}/ and rerun snakemake" in message
    assert "`snakemake --force results/smoke/data/md17-ethanol/provenance.json`" in message


def test_foreign_file_is_not_an_lmdb_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.aselmdb"
    path.write_bytes(b"x" * 9000)
    with pytest.raises(DataError, match=r"notes\.aselmdb is damaged \(not an LMDB file"):
        AseLmdbDataset(path)
    # Outside the pipeline's layout the hint is generic.
    with pytest.raises(DataError, match=r"rebuild it \(delete it and rerun the job"):
        check_aselmdb(path)


def test_missing_file_names_it_and_its_snakemake_target(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as error:
        AseLmdbDataset(tmp_path / SPLIT)
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, DensError)
    assert str(error.value) == (
        f"aselmdb file not found: {tmp_path / SPLIT}; make it with `snakemake {SPLIT}`"
    )


def test_truncated_file_through_the_library_in_a_subprocess(
    tmp_path: Path, original: bytes
) -> None:
    """AseLmdbDataset on a truncated file raises; without the check LMDB dies of SIGBUS, so the
    call runs in a child process."""
    path = damaged_copy(tmp_path, original, len(original) // 2)
    code = (
        "import sys\n"
        "from dens.data.aselmdb import AseLmdbDataset\n"
        "from dens.errors import DataError\n"
        "try:\n"
        f"    AseLmdbDataset({str(path)!r})\n"
        "except DataError as error:\n"
        "    print(error)\n"
        "    sys.exit(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith(f"{path} is damaged (truncated: ")


def test_truncated_split_through_dens_evaluate_is_one_line(tmp_path: Path, original: bytes) -> None:
    """`dens evaluate` on a truncated split: one line naming the file and the rebuild, status 2
    (today: a bus error and an empty log). Runs in a child process for the same reason."""
    path = damaged_copy(tmp_path, original, 3 * 4096)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "dens", "evaluate", "md17-ethanol/equiformer-l2"]
        + ["--scale", "smoke", "--device", "cpu", "--run-dir", str(run_dir), str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dens: error: {path} is damaged (truncated: 12288 of ")
    assert "rerun snakemake" in lines[0]


def test_rows_read_directly_equal_ase_db_rows(tmp_path: Path) -> None:
    """AseLmdbDataset reads rows with lmdb directly (dens.data.aselmdb.read_rows): the same
    structures, in the same order, as ase.db's select() through atoms_to_data, also for a
    periodic slab with fixed atoms and tags and after a row was deleted."""
    import ase.db
    from ase.build import add_adsorbate, fcc111
    from ase.constraints import FixAtoms

    from dens.data.structures import atoms_to_data

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.5)
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    rng = np.random.default_rng(3)
    slabs = []
    for k in range(4):
        atoms = slab.copy()
        atoms.rattle(0.05, seed=k)
        atoms.info = {"md_split": k % 2 == 0}
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(k) - 3.5, forces=rng.normal(size=(len(atoms), 3))
        )
        slabs.append(atoms)
    for name, items in (("molecules", list(structures(5))), ("slabs", slabs)):
        path = tmp_path / f"{name}.aselmdb"
        write_aselmdb(path, items, metadata={"name": name})
        with ase.db.connect(path) as db:
            db.delete([2])
        path.with_name(path.name + "-lock").unlink(missing_ok=True)
        dataset = AseLmdbDataset(path)
        db = ase.db.connect(path, readonly=True)
        expected = []
        for row in db.select():
            atoms = row.toatoms()
            atoms.info["md_split"] = bool(row.key_value_pairs.get("md_split", False))
            expected.append(atoms_to_data(atoms, labels=True))
        assert dataset.metadata == {"name": name}
        assert len(dataset) == len(expected) == len(items) - 1
        for ours, theirs in zip((dataset[i] for i in range(len(dataset))), expected, strict=True):
            assert ours.keys() == theirs.keys()
            for key in ours.keys():
                assert torch.equal(getattr(ours, key), getattr(theirs, key)), (name, key)
    assert dataset[0].fixed.tolist()[:5] == [True, True, True, True, False]
    assert dataset[0].md_split.tolist() == [True]
    assert dataset[0].tags.tolist() == slab.get_tags().tolist()
