"""The aselmdb format (ASE databases stored in LMDB) and its rows as `Data` (dens.data.batch).

aselmdb is the format fairchem-core 2.24's `fairchem.core.datasets.AseDBDataset` reads.
`ase.db.connect` (ASE 3.29) opens every path ending in `.aselmdb` with
`ase_db_backends.aselmdb.LMDBDatabase` (package `ase-db-backends`, installed with
fairchem-core), so `ase db FILE` lists the rows as well. One row is one structure:
positions (Å), atomic numbers, cell and pbc, constraints (`FixAtoms` marks fixed atoms) and,
as single-point results, the total energy (eV) and the forces (eV/Å). Row key-value pairs
carry per-structure flags such as `md_split`; the row's `data["sid"]` is the system id that
fairchem's AseDBDataset puts into `atoms.info`.

`check_aselmdb` checks a file's integrity with plain file I/O before LMDB maps it into memory
(reading a page beyond the end of a truncated file kills the process with SIGBUS): both LMDB
meta pages must be intact and the file must hold every page the newer one counts. A damaged
or missing file raises dens.errors.DataError naming it and how to rebuild it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dens import paths
from dens.data.batch import Batch, Data
from dens.data.structures import fixed_mask, structure_data
from dens.errors import DataError, InvalidDataError, MissingDataError

if TYPE_CHECKING:
    from ase import Atoms

SUFFIX = ".aselmdb"


def _check_suffix(path: Path) -> None:
    if path.suffix != SUFFIX:
        raise InvalidDataError(
            f"aselmdb path must end in {SUFFIX!r} (ase.db picks the backend by it): {path}"
        )


# -- integrity -----------------------------------------------------------------------------------
# LMDB (lmdb.h / mdb.c, data version 1, 64-bit build): pages 0 and 1 are meta pages. Each starts
# with a 16-byte page header (mp_pgno u64, mp_pad u16, mp_flags u16, lower u16, upper u16), then
# MDB_meta: mm_magic u32, mm_version u32, mm_address u64, mm_mapsize u64, mm_dbs[2] (FREE_DBI,
# MAIN_DBI; MDB_db = md_pad u32, md_flags u16, md_depth u16, md_branch_pages, md_leaf_pages,
# md_overflow_pages, md_entries, md_root: u64 each = 48 bytes), mm_last_pg u64, mm_txnid u64.
# FREE_DBI's md_pad holds the page size. LMDB uses the meta page with the larger txnid; the file
# holds pages 0..mm_last_pg of that transaction.
_PAGE_HEADER = struct.Struct("<QHHHH")
_DB = "IHHQQQQQ"
_META = struct.Struct("<IIQQ" + _DB + _DB + "QQ")
_META_SIZE = _PAGE_HEADER.size + _META.size  # 152 bytes
_META_MAGIC = 0xBEEFC0DE
_DATA_VERSION = 1
_P_META = 0x08


def _read_meta(raw: bytes) -> tuple[int, int, int] | str:
    """(page size, last page, txnid) of one meta page, or what is wrong with it."""
    _pgno, _pad, flags, _lower, _upper = _PAGE_HEADER.unpack_from(raw)
    fields = _META.unpack_from(raw, _PAGE_HEADER.size)
    magic, version, page_size = fields[0], fields[1], fields[4]
    last_page, txnid = fields[-2], fields[-1]
    if magic != _META_MAGIC:
        return "no LMDB meta page"
    if version != _DATA_VERSION or not flags & _P_META:
        return f"LMDB meta page of data version {version}, flags {flags:#x}"
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return f"LMDB meta page with page size {page_size}"
    return page_size, last_page, txnid


def _relative_layout(path: Path) -> tuple[str, str, str] | None:
    """(scale, dataset, split) when `path` is a prepared split in the pipeline's layout
    (dens.paths.split_file), else None."""
    parts = PurePosixPath(path.as_posix()).parts
    if len(parts) < 5:
        return None
    scale, dataset, split = parts[-4], parts[-2], PurePosixPath(parts[-1]).stem
    if PurePosixPath(*parts[-5:]) != paths.split_file(scale, dataset, split):
        return None
    return scale, dataset, split


def rebuild_hint(path: Path) -> str:
    """How to rebuild an aselmdb file: its dataset's Snakemake job when it is a prepared split."""
    layout = _relative_layout(Path(path))
    if layout is None:
        return "rebuild it (delete it and rerun the job that wrote it, e.g. `dens data prepare`)"
    scale, dataset, _ = layout
    return (
        f"rebuild it: delete {Path(path).parent}/ and rerun snakemake "
        f"(or `snakemake --force {paths.provenance_file(scale, dataset)}`)"
    )


def check_aselmdb(path: Path) -> None:
    """Raise DataError naming `path` unless it exists and is a complete LMDB file: both meta
    pages intact and at least (last page + 1) * page size bytes, as the newer meta page counts.

    Reads at most the two meta pages with plain file I/O, never mapping the file, so a truncated
    file gives an error instead of SIGBUS when LMDB touches a page past its end."""
    path = Path(path)
    if not path.is_file():
        layout = _relative_layout(path)
        make = "" if layout is None else f"; make it with `snakemake {paths.split_file(*layout)}`"
        raise MissingDataError(f"aselmdb file not found: {path}{make}")

    def damaged(reason: str) -> DataError:
        return DataError(f"{path} is damaged ({reason}); {rebuild_hint(path)}")

    size = path.stat().st_size
    if size == 0:
        raise damaged("empty: 0 bytes")
    with open(path, "rb") as handle:
        first = handle.read(_META_SIZE)
        magic = first[_PAGE_HEADER.size : _PAGE_HEADER.size + 4]
        if len(magic) == 4 and magic != struct.pack("<I", _META_MAGIC):
            raise damaged("not an LMDB file: no LMDB meta page at its start")
        if len(first) < _META_SIZE:
            raise damaged(
                f"truncated or not an LMDB file: {size} bytes, less than one LMDB meta page"
            )
        meta = _read_meta(first)
        if isinstance(meta, str):
            raise damaged(f"page 0: {meta}")
        page_size = meta[0]
        if size < 2 * page_size:
            raise damaged(f"truncated: {size} of at least {2 * page_size} bytes")
        handle.seek(page_size)
        second = _read_meta(handle.read(_META_SIZE))
    if isinstance(second, str):
        raise damaged(f"page 1: {second}")
    _, last_page, _ = max(meta, second, key=lambda m: m[2])
    needed = (last_page + 1) * page_size
    if size < needed:
        raise damaged(f"truncated: {size} of {needed} bytes")


def write_aselmdb(
    path: Path,
    structures: Iterable[Atoms],
    metadata: Mapping[str, Any] | None = None,
    required_results: Sequence[str] = ("energy", "forces"),
) -> int:
    """Write `structures` as a new aselmdb file at `path` (an existing file is replaced).

    Each `Atoms` must carry a calculator with the results named in `required_results`
    (default: `energy` (eV) and `forces` (eV/Å)), e.g. an
    `ase.calculators.singlepoint.SinglePointCalculator`; pass `("energy",)` to write rows
    without forces, `()` for rows without labels. Scalars in `atoms.info` become the row's
    key-value pairs (`md_split`, `frame`, ...); `atoms.info["sid"]` is also stored in the row
    data, where AseDBDataset looks for the system id. `atoms.info["data"]`, a dict, is not a
    key-value pair: it is added to the row data (e.g. IS2RE's `pos_relaxed` array; fairchem's
    AseDBDataset copies the row data into `atoms.info`). `metadata` (a JSON-serialisable
    dict) is stored once per file (`ase.db.connect(path).metadata`).
    All rows are written in one LMDB transaction; LMDB's `-lock` file beside `path` is
    removed afterwards. Returns the number of rows written.
    """
    path = Path(path)
    _check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + "-lock")):
        stale.unlink(missing_ok=True)
    import ase.db

    db = ase.db.connect(path)
    n_rows = 0
    with db:
        for atoms in structures:
            results = atoms.calc.results if atoms.calc is not None else {}
            missing = [key for key in required_results if key not in results]
            if missing:
                raise ValueError(
                    f"structure {n_rows} written to {path} has no {' and '.join(missing)} result; "
                    f"attach a SinglePointCalculator with {' and '.join(required_results)}"
                )
            info = dict(atoms.info)
            data = {"sid": info["sid"]} if "sid" in info else {}
            data.update(info.pop("data", None) or {})
            db.write(atoms, key_value_pairs=info, data=data or None)
            n_rows += 1
        if metadata:
            db.metadata = dict(metadata)
    # LMDB's reader-lock file is only needed while the file is open for writing.
    path.with_name(path.name + "-lock").unlink(missing_ok=True)
    return n_rows


def read_rows(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metadata, rows) of an aselmdb file, rows as the dicts ase.db stores (numbers,
    positions, cell, pbc, tags, constraints, energy, forces, key_value_pairs, data, ...).

    Read with lmdb directly, as ase_db_backends.aselmdb stores them: under the keys "1" ...
    "nextid - 1" minus "deleted_ids", each value a zlib-compressed JSON document in
    ase.io.jsonio's encoding. This skips building an AtomsRow and Atoms per row and importing
    ase.db's dependencies (ase.constraints imports scipy): 0.5 s less per training process on
    mini-MD17 (measured), with the same values (tests/data/test_aselmdb.py)."""
    import lmdb
    from ase.io.jsonio import decode

    def value(txn: Any, key: str) -> Any:
        raw = txn.get(key.encode("ascii"))
        return None if raw is None else decode(zlib.decompress(raw).decode("utf-8"))

    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as txn:
            metadata = value(txn, "metadata") or {}
            deleted = set(value(txn, "deleted_ids") or ())
            ids = [i for i in range(1, value(txn, "nextid") or 1) if i not in deleted]
            rows = []
            for row_id in ids:
                row = value(txn, str(row_id))
                if row is None:
                    raise DataError(f"{path}: row {row_id} is missing; {rebuild_hint(path)}")
                rows.append(row | {"id": row_id})
    finally:
        env.close()
    return metadata, rows


def row_to_data(row: Mapping[str, Any], path: Path | str = "") -> Data:
    """One stored row (`read_rows`) as model input with labels (dens.data.structures):
    float32 positions and forces, float64 energy, ``md_split`` from the row key (False when
    absent). A row without energy or forces, or with a constraint other than FixAtoms/FixCom,
    raises InvalidDataError naming ``path`` and the row."""
    where = f"{path}: row {row['id']}"
    missing = [key for key in ("energy", "forces") if row.get(key) is None]
    if missing:
        raise InvalidDataError(
            f"{where} has no {' and '.join(missing)} label; training data needs energy and forces"
        )
    numbers = np.asarray(row["numbers"])
    try:
        fixed = fixed_mask(row.get("constraints", ()), len(numbers), f"row {row['id']}")
    except ValueError as err:
        raise InvalidDataError(f"{path}: {err}") from err
    return structure_data(
        np.asarray(row["positions"]),
        numbers,
        fixed,
        md_split=bool(row.get("key_value_pairs", {}).get("md_split", False)),
        cell=np.asarray(row.get("cell", np.zeros((3, 3)))),
        pbc=np.asarray(row.get("pbc", np.zeros(3, dtype=bool))),
        tags=row.get("tags"),
        energy=float(row["energy"]),
        forces=np.asarray(row["forces"]),
    )


class AseLmdbDataset(torch.utils.data.Dataset):
    """All rows of one aselmdb file as `Data` objects (see `row_to_data`), in row order.

    The rows are read into memory once, at construction (`read_rows`), and kept as one
    `Batch` (one tensor per field), about 0.7 kB per row of 21 atoms. Measured on one core: the
    mini-MD17 aspirin training split (950 rows) reads in 0.12 s, mini-OC20 All+MD's (3603 slabs
    of ~40 atoms) in 0.8 s. `dataset[i]` returns a
    copy, so callers may modify it in place. `metadata` holds the file's metadata dict (empty
    when none was written).

    A missing or damaged file raises dens.errors.DataError naming it (see `check_aselmdb`).
    """

    def __init__(self, path: Path) -> None:
        import lmdb

        path = Path(path)
        _check_suffix(path)
        check_aselmdb(path)
        self.path = path
        try:
            metadata, rows = read_rows(path)
        except lmdb.Error as err:
            raise DataError(f"{path} is damaged (LMDB: {err}); {rebuild_hint(path)}") from err
        self.metadata: dict[str, Any] = dict(metadata)
        items = [row_to_data(row, path) for row in rows]
        self._length = len(items)
        self.elements: list[int] = []
        """The atomic numbers present in the file."""
        if items:
            keys = set(items[0].keys())
            for index, item in enumerate(items):
                if set(item.keys()) != keys:
                    raise ValueError(
                        f"{path}: row {index + 1} has fields {sorted(item.keys())}, "
                        f"the first row {sorted(keys)} (periodic and molecular rows mixed?)"
                    )
            self._rows = Batch.from_data_list(items)
            self.elements = torch.unique(self._rows.atomic_numbers).tolist()

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Data:
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} rows of {self.path}")
        return self._rows.structure(index % self._length)
