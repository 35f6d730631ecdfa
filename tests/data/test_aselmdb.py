"""Integrity of aselmdb files: a truncated, empty, foreign, damaged or missing file is one
DataError that names it and how to rebuild it, found with plain file I/O before LMDB maps the file
(a truncated file, or a page reference or node size that points past the file's end, read
through LMDB's memory map kills the process with SIGBUS), checked against the manifest written at
preparation (size, sha256, row count) or page by page."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import ase
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from dens.data import aselmdb_integrity
from dens.data.aselmdb import AseLmdbDataset, write_aselmdb
from dens.data.aselmdb_integrity import (
    check_aselmdb,
    check_pages,
    manifest_path,
    read_manifest,
    write_manifest,
)
from dens.errors import DataError, DensError, MissingDataError

REPO = Path(__file__).resolve().parents[2]
SPLIT_DIR = Path("results/smoke/data/md17-ethanol/test")
SPLIT = SPLIT_DIR / "shard-000000.aselmdb"  # the one shard of a prepared split folder


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
@pytest.mark.usefixtures("pipeline_remedies")
def test_truncated_file_is_one_error_naming_it_and_the_rebuild(
    tmp_path: Path, original: bytes, size: int, reason: str
) -> None:
    path = damaged_copy(tmp_path, original, size if size >= 0 else len(original) + size)
    with pytest.raises(DataError, match=reason) as error:
        check_aselmdb(path)
    message = str(error.value)
    assert message.startswith(f"{path} is damaged (") and "\n" not in message
    assert f"delete {path.parent.parent}/ and rerun snakemake" in message
    assert "`snakemake --force results/smoke/data/md17-ethanol/provenance.json`" in message


def test_foreign_file_is_not_an_lmdb_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.aselmdb"
    path.write_bytes(b"x" * 9000)
    with pytest.raises(DataError, match=r"notes\.aselmdb is damaged \(not an LMDB file"):
        AseLmdbDataset(path)
    # Outside the pipeline's layout the hint is generic.
    with pytest.raises(DataError, match=r"rebuild it \(delete it and rerun the job"):
        check_aselmdb(path)


def test_missing_file_names_it_and_its_snakemake_target(
    tmp_path: Path, pipeline_remedies: None
) -> None:
    with pytest.raises(MissingDataError) as error:
        AseLmdbDataset(tmp_path / SPLIT_DIR)
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, DensError)
    assert str(error.value) == (
        f"split folder not found: {tmp_path / SPLIT_DIR}; make it with `snakemake {SPLIT_DIR}`"
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
        cwd=tmp_path,  # the job's pipeline directory: its dataset's splits are under results/
        env={**os.environ, "PYTHONPATH": str(REPO)},
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


# -- damage inside the file: manifest, page walk, row decoding, last-resort fault handler ---------
def prepared_copy(root: Path, original: bytes, manifest: bool = True) -> Path:
    """An intact copy of the 60-row split in the pipeline's layout, with its manifest."""
    path = damaged_copy(root, original, len(original))
    if manifest:
        write_manifest(path)
    return path


def row_spans(path: Path) -> list[tuple[int, int]]:
    """(offset, length) in the file of each row's compressed value."""
    import lmdb

    raw = path.read_bytes()
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        spans = [(raw.find(value), len(value)) for key, value in txn.cursor() if key.isdigit()]
    env.close()
    assert len(spans) == 60 and all(offset > 0 for offset, _ in spans)
    return spans


def damage(path: Path, rng: random.Random, kind: str, spans: list[tuple[int, int]]) -> None:
    """16 random bytes at the start of a random data page ("page"), 1 to 3 bit flips in one
    compressed row ("row"), or 16 random bytes anywhere ("any")."""
    raw = bytearray(path.read_bytes())
    if kind == "page":
        start = rng.randrange(2, len(raw) // 4096) * 4096
        raw[start : start + 16] = rng.randbytes(16)
    elif kind == "row":
        offset, length = rng.choice(spans)
        for _ in range(rng.randint(1, 3)):
            raw[offset + rng.randrange(length)] ^= 1 << rng.randrange(8)
    else:
        start = rng.randrange(len(raw) - 16)
        raw[start : start + 16] = rng.randbytes(16)
    path.write_bytes(bytes(raw))


READER = """
import json, sys
from dens.pipeline.commands import _refuse_empty
from dens.data import aselmdb, aselmdb_integrity
import argparse, os, pathlib
from dens.errors import DensError, name_remedies
from dens.pipeline.remedies import for_job
job = argparse.Namespace(scale="smoke", seed=0, experiment="md17-ethanol/equiformer-l2")
name_remedies(for_job(job))  # as `dens train` of that job does
for path, limit in json.loads(sys.argv[1]):
    os.chdir(pathlib.Path(path).parents[5])  # the case's pipeline directory
    aselmdb_integrity.SHA256_LIMIT_BYTES = 16 * 2**30 if limit is None else limit
    try:
        dataset = aselmdb.AseLmdbDataset(path)
        _refuse_empty(dataset, "validation")
        print(json.dumps([0, f"{len(dataset)}\\n"]), flush=True)
    except DensError as error:
        print(json.dumps([2, f"{error}\\n"]), flush=True)
"""


def read_in_children(cases: list[tuple[Path, int | None]]) -> list[tuple[int, str]]:
    """Open each file as `dens train` does (AseLmdbDataset with SHA256_LIMIT_BYTES = limit, then
    the empty-split refusal) in a child process; per case (0, row count) when it reads, (2, the
    DataError) when it refuses, or (-signal, "") when the child dies (then a new child takes
    the remaining cases). Another outcome (a traceback) ends the child and fails here."""
    results: list[tuple[int, str]] = []
    while len(results) < len(cases):
        todo = [(str(path), limit) for path, limit in cases[len(results) :]]
        child = subprocess.run(
            [sys.executable, "-c", READER, json.dumps(todo)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        results += [tuple(json.loads(line)) for line in child.stdout.splitlines()]
        if child.returncode < 0:
            results.append((child.returncode, ""))
        else:
            assert child.returncode == 0, child.stderr
    return results


@pytest.mark.parametrize("mode", ["sha256", "pages", "no manifest"])
def test_random_damage_is_one_line_naming_the_file(
    tmp_path: Path, original: bytes, mode: str
) -> None:
    """30 damaged copies of a 60-row split per mode: 16 random bytes at data page starts and
    anywhere, bit flips in compressed rows. Each read either refuses in one line naming the file
    and the rebuild, or (damage LMDB never reads, page walk only) gives the 60 rows: never a
    signal, a traceback or fewer rows. Before the page walk and the manifest, 60 such cases
    gave 5 SIGBUS and 24 zlib.error tracebacks naming no file. With the sha256 every case is
    refused."""
    spans = row_spans(prepared_copy(tmp_path / "spans", original))
    rng = random.Random(23)
    cases = []
    for case in range(30):
        path = prepared_copy(tmp_path / str(case), original, manifest=mode != "no manifest")
        damage(path, rng, ("page", "row", "any")[case % 3], spans)
        cases.append((path, 0 if mode == "pages" else None))
    outcomes = []
    for (path, _), (code, output) in zip(cases, read_in_children(cases), strict=True):
        assert code in (0, 2), (path, code, output)
        if code == 0:
            assert mode != "sha256" and output == "60\n", (path, output)
        else:
            assert output.startswith(f"{path} is damaged (") and output.count("\n") == 1, output
            assert f"delete {path.parent.parent}/ and rerun snakemake" in output
        outcomes.append(code)
    assert outcomes.count(2) >= (30 if mode == "sha256" else 15)


def test_manifest_records_the_split_and_a_mismatch_names_it(
    tmp_path: Path, original: bytes
) -> None:
    path = prepared_copy(tmp_path, original)
    manifest = read_manifest(path)
    assert manifest_path(path).name == "shard-000000.aselmdb.manifest.json"
    assert manifest is not None and manifest["rows"] == 60 and manifest["bytes"] == len(original)
    assert check_aselmdb(path) == manifest and check_pages(path) == 60
    # A manifest counting other rows: with the sha256 skipped, the row count refuses the file.
    manifest_path(path).write_text(json.dumps(manifest | {"rows": 61}))
    aselmdb_limit = aselmdb_integrity.SHA256_LIMIT_BYTES
    try:
        aselmdb_integrity.SHA256_LIMIT_BYTES = 0
        with pytest.raises(DataError, match=r"\(60 rows, 61 as recorded at preparation in"):
            AseLmdbDataset(path)
    finally:
        aselmdb_integrity.SHA256_LIMIT_BYTES = aselmdb_limit
    manifest_path(path).write_text(json.dumps(manifest | {"bytes": 5}))
    with pytest.raises(DataError, match=rf"{len(original)} bytes, 5 as recorded at preparation"):
        check_aselmdb(path)
    manifest_path(path).write_text("{")
    with pytest.raises(DataError, match=r"shard-000000\.aselmdb\.manifest\.json is damaged \("):
        check_aselmdb(path)
    # Rewriting the split removes its earlier manifest, which no longer describes it.
    write_aselmdb(path, structures(2))
    assert read_manifest(path) is None and len(AseLmdbDataset(path)) == 2


def test_older_meta_page_chosen_is_not_a_silent_empty_split(
    tmp_path: Path, original: bytes
) -> None:
    """A damaged txnid makes LMDB use the older meta page, an empty database: the manifest's
    sha256 and row count refuse it, and without a manifest `dens train` refuses an empty split."""
    path = prepared_copy(tmp_path, original)
    raw = bytearray(path.read_bytes())
    newer = max((0, 4096), key=lambda offset: meta(original, offset)["txnid"])
    struct.pack_into("<Q", raw, newer + 144, 0)  # its mm_txnid
    path.write_bytes(bytes(raw))
    (code, output), (code_pages, output_pages) = read_in_children([(path, None), (path, 0)])
    assert code == code_pages == 2 and output.startswith(f"{path} is damaged (its sha256"), output
    assert output_pages.startswith(f"{path} is damaged (0 rows, 60 as recorded at preparation")
    manifest_path(path).unlink()
    [(code, output)] = read_in_children([(path, None)])
    assert code == 2 and output.startswith(f"{path}: the validation split holds no structure")


def test_fault_while_lmdb_reads_is_one_line_not_a_signal(tmp_path: Path, original: bytes) -> None:
    """The last resort: read_rows called without check_aselmdb on a truncated file (LMDB maps
    past its end and dies of SIGBUS, status -7 before) prints one line naming the file and exits
    with status 2."""
    path = damaged_copy(tmp_path, original, len(original) // 2)
    code = (
        "import argparse\n"
        "from dens.errors import name_remedies\n"
        "from dens.pipeline.remedies import for_job\n"
        "from dens.data.aselmdb import read_rows\n"
        "job = argparse.Namespace(scale='smoke', seed=0, experiment='md17-ethanol/equiformer-l2')\n"
        f"name_remedies(for_job(job))\nread_rows({str(path)!r})\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,  # the pipeline directory of the job
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr == (
        f"dens: error: {path} is damaged (a memory fault while LMDB read it); rebuild it: "
        f"delete {path.parent.parent}/ and rerun snakemake "
        "(or `snakemake --force results/smoke/data/md17-ethanol/provenance.json`)\n"
    )


def test_prepare_dataset_writes_a_manifest_per_split(tmp_path: Path, monkeypatch) -> None:
    """dens data prepare records each split folder's manifest after the preparer, replacing
    stale ones."""
    from dens.data import prepare
    from dens.data.split_folder import read_split_manifest

    def preparer(settings, out_dir, inputs, processes) -> None:
        for split, n in (("train", 3), ("val", 2)):
            write_aselmdb(out_dir / split / "shard-000000.aselmdb", structures(n))

    monkeypatch.setitem(prepare.PREPARERS, "fake", preparer)
    (tmp_path / "train.manifest.json").write_text("{}")
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "shard-000007.aselmdb").write_text("stale")
    prepare.prepare_dataset(
        {"family": "fake", "splits": {"train": "train", "val": ["val"]}}, tmp_path
    )
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "train.manifest.json",
        "val.manifest.json",
    ]
    assert [read_split_manifest(tmp_path / s)["rows"] for s in ("train", "val")] == [3, 2]
    assert [p.name for p in (tmp_path / "val").iterdir()] == ["shard-000000.aselmdb"]
