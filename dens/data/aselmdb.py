"""The aselmdb format (ASE databases stored in LMDB) and its rows as `Data` (dens.data.batch).

aselmdb is the format fairchem-core 2.24's `fairchem.core.datasets.AseDBDataset` reads.
`ase.db.connect` (ASE 3.29) opens every path ending in `.aselmdb` with
`ase_db_backends.aselmdb.LMDBDatabase` (package `ase-db-backends`, installed with
fairchem-core), so `ase db FILE` lists the rows as well. One row is one structure:
positions (Å), atomic numbers, cell and pbc, constraints (`FixAtoms` marks fixed atoms) and,
as single-point results, the total energy (eV) and the forces (eV/Å). Row key-value pairs
carry per-structure flags such as `md_split`; the row's `data["sid"]` is the system id that
fairchem's AseDBDataset puts into `atoms.info`.

`check_aselmdb` checks a file with plain file I/O before LMDB maps it into memory (LMDB follows
the page numbers, node offsets and sizes it finds in the file without bounds checks; one pointing
past the file's end kills the process with SIGBUS): both LMDB meta pages intact, the file holding
every page the newer one counts, and, against the manifest written at preparation
(`write_manifest`: ``<split>.aselmdb.manifest.json`` beside the split, a separate file so the
aselmdb format stays fairchem's), its size and sha256 for files up to `SHA256_LIMIT_BYTES`;
larger files and files without a manifest get `check_pages`, a walk of the B-tree checking every
page reference and node bound LMDB would follow. `AseLmdbDataset` then checks the row count
against the manifest (a damaged file never reads as fewer rows), names the file and row when a
row does not decompress or decode, and, as a last resort, prints one line naming the file and
exits with status 2 if a bus error or segmentation fault still happens while LMDB reads it
(Python cannot continue after one). A damaged or missing file raises dens.errors.DataError naming
it and how to rebuild it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from dens.atomic_files import file_digest, write_text
from dens.data.batch import Batch, Data
from dens.data.structures import fixed_mask, structure_data
from dens.data.validation import (
    MAX_CELL_LENGTH,
    MAX_COORDINATE,
    SUPPORTED_MAX_Z,
    InvalidStructureError,
    check_structure,
)
from dens.errors import DataError, InvalidDataError, MissingDataError
from dens.layout import manifest_of

if TYPE_CHECKING:
    from ase import Atoms

SUFFIX = ".aselmdb"


def _check_suffix(path: Path) -> None:
    if path.suffix != SUFFIX:
        raise InvalidDataError(
            f"aselmdb path must end in {SUFFIX!r} (ase.db picks the backend by it): {path}"
        )


# -- integrity -----------------------------------------------------------------------------------
# LMDB (lmdb.h / mdb.c 0.9.x as bundled with py-lmdb, data version 1, 64-bit build): pages 0 and 1
# are meta pages. Every page starts with a 16-byte header (mp_pgno u64, mp_pad u16, mp_flags u16,
# then lower u16 and upper u16, or for an overflow page the page count u32); the meta pages go on
# with MDB_meta: mm_magic u32, mm_version u32, mm_address u64, mm_mapsize u64, mm_dbs[2]
# (FREE_DBI, MAIN_DBI; MDB_db = md_pad u32, md_flags u16, md_depth u16, md_branch_pages,
# md_leaf_pages, md_overflow_pages, md_entries, md_root: u64 each = 48 bytes), mm_last_pg u64,
# mm_txnid u64. FREE_DBI's md_pad holds the page size. LMDB uses the meta page with the larger
# txnid (mdb_env_pick_meta); the file holds pages 0..mm_last_pg of that transaction.
_PAGE_HEADER = struct.Struct("<QHHHH")
_DB = "IHHQQQQQ"
_META = struct.Struct("<IIQQ" + _DB + _DB + "QQ")
_META_SIZE = _PAGE_HEADER.size + _META.size  # 152 bytes
_META_MAGIC = 0xBEEFC0DE
_DATA_VERSION = 1
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_META = 0x01, 0x02, 0x04, 0x08
_P_INVALID = 2**64 - 1
# A branch or leaf page holds (lower - 16) / 2 node offsets (u16, from the page start) after its
# header; a node is mn_lo u16, mn_hi u16, mn_flags u16, mn_ksize u16, the key, then the data. A
# branch node's child page number is mn_lo | mn_hi << 16 | mn_flags << 32 (NODEPGNO); a leaf
# node's data size is mn_lo | mn_hi << 16 (NODEDSZ), and with F_BIGDATA its data is the u64
# number of the first of ceil((16 + size) / page size) overflow pages holding the value.
_NODE = struct.Struct("<HHHH")
_F_BIGDATA = 0x01
_OVERFLOW_HEADER = struct.Struct("<QHHI")

SHA256_LIMIT_BYTES = 16 * 2**30
"""Files up to this size are verified by their full sha256 against the manifest; larger ones by
their size, `check_pages` and the row count. Measured on one core of the development machine
(page cache warm): sha256 0.6 to 0.75 s per GB, `check_pages` 0.8 s per GB (rows of 60 atoms, in
overflow pages) to 2 s per GB (rows of 9 atoms, in leaf pages), `read_rows` 52 s per GB. Hashing
is thus about 1.5 % of reading the rows, and up to this limit at most about 12 s per process; above
it, each training process of a paper-scale run would read the whole split once more from disk
only to hash it, while the page walk reads only the tree and the overflow headers."""


class _Meta(NamedTuple):
    """The fields of one meta page that the checks use (MAIN_DBI's depth, entries and root)."""

    page_size: int
    last_page: int
    txnid: int
    depth: int
    entries: int
    root: int


def _read_meta(raw: bytes) -> _Meta | str:
    """The fields of one meta page that the checks use, or what is wrong with it."""
    _pgno, _pad, flags, _lower, _upper = _PAGE_HEADER.unpack_from(raw)
    fields = _META.unpack_from(raw, _PAGE_HEADER.size)
    magic, version, page_size = fields[0], fields[1], fields[4]
    main_flags, depth, entries, root = fields[13], fields[14], fields[18], fields[19]
    last_page, txnid = fields[-2], fields[-1]
    if magic != _META_MAGIC:
        return "no LMDB meta page"
    if version != _DATA_VERSION or not flags & _P_META:
        return f"LMDB meta page of data version {version}, flags {flags:#x}"
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return f"LMDB meta page with page size {page_size}"
    if main_flags != 0:
        return f"main database flags {main_flags:#x}, not an ase.db table"
    return _Meta(page_size, last_page, txnid, depth, entries, root)


REBUILD = "rebuild it (delete it and rerun the job that wrote it, e.g. `dens data prepare`)"
"""How to make a damaged aselmdb file again (the pipeline names the dataset's Snakemake target
instead: dens.pipeline.remedies)."""


def _damaged(path: Path, reason: str) -> DataError:
    return DataError(f"{path} is damaged ({reason})", path, REBUILD)


def manifest_path(path: Path) -> Path:
    """The manifest of an aselmdb file: ``<name>.aselmdb.manifest.json`` beside it."""
    return manifest_of(Path(path))


def _read_header(path: Path) -> _Meta:
    """The meta page LMDB uses, after checking that `path` exists and is a complete LMDB file:
    both meta pages intact and at least (last page + 1) * page size bytes."""
    if not path.is_file():
        raise MissingDataError(f"aselmdb file not found: {path}", path)
    size = path.stat().st_size
    if size == 0:
        raise _damaged(path, "empty: 0 bytes")
    with open(path, "rb") as handle:
        first = handle.read(_META_SIZE)
        magic = first[_PAGE_HEADER.size : _PAGE_HEADER.size + 4]
        if len(magic) == 4 and magic != struct.pack("<I", _META_MAGIC):
            raise _damaged(path, "not an LMDB file: no LMDB meta page at its start")
        if len(first) < _META_SIZE:
            raise _damaged(
                path, f"truncated or not an LMDB file: {size} bytes, less than one LMDB meta page"
            )
        meta = _read_meta(first)
        if isinstance(meta, str):
            raise _damaged(path, f"page 0: {meta}")
        page_size = meta.page_size
        if size < 2 * page_size:
            raise _damaged(path, f"truncated: {size} of at least {2 * page_size} bytes")
        handle.seek(page_size)
        second = _read_meta(handle.read(_META_SIZE))
    if isinstance(second, str):
        raise _damaged(path, f"page 1: {second}")
    newer = second if second.txnid > meta.txnid else meta  # mdb_env_pick_meta
    needed = (newer.last_page + 1) * page_size
    if size < needed:
        raise _damaged(path, f"truncated: {size} of {needed} bytes")
    return newer


def check_pages(path: Path) -> int:
    """Walk the B-tree of `path`'s main database with plain file I/O, checking every page number,
    node offset, key and data size and overflow run that LMDB follows when reading a row (mdb.c
    mdb_page_search, mdb_node_read), so that none points outside its page or past the file's
    last page; return the number of rows (keys "1", "2", ...). Raise DataError naming `path`
    at the first page that is wrong. Reads the branch and leaf pages and each overflow run's
    header (cost: `SHA256_LIMIT_BYTES`)."""
    path = Path(path)
    page_size, last_page, _, depth, entries, root = _read_header(path)
    n_pages = last_page + 1
    if root == _P_INVALID:
        if entries:
            raise _damaged(path, f"main database of {entries} entries without a root page")
        return 0
    rows = seen = 0
    pending = [(root, 1)]
    visited: set[int] = set()
    with open(path, "rb") as handle:

        def page(number: int, what: str, size: int) -> bytes:
            if not 2 <= number < n_pages or number in visited:
                raise _damaged(path, f"{what} refers to page {number} of {n_pages}")
            visited.add(number)
            handle.seek(number * page_size)
            raw = handle.read(size)
            if len(raw) < size or _PAGE_HEADER.unpack_from(raw)[0] != number:
                raise _damaged(path, f"page {number} does not start with its page number")
            return raw

        while pending:
            number, level = pending.pop()
            raw = page(number, "a branch page" if level > 1 else "the meta page", page_size)
            _, _, flags, lower, upper = _PAGE_HEADER.unpack_from(raw)
            kind = flags & (_P_BRANCH | _P_LEAF | _P_OVERFLOW | _P_META)
            leaf = level == depth
            if kind != (_P_LEAF if leaf else _P_BRANCH):
                raise _damaged(path, f"page {number}: flags {flags:#x} at tree level {level}")
            if not _PAGE_HEADER.size < lower <= upper <= page_size or lower % 2:
                raise _damaged(path, f"page {number}: node area {lower}..{upper}")
            offsets = struct.unpack_from(f"<{(lower - _PAGE_HEADER.size) // 2}H", raw, 16)
            for offset in offsets:
                if not upper <= offset <= page_size - _NODE.size:
                    raise _damaged(path, f"page {number}: node at {offset}, outside {upper}..")
                low, high, node_flags, key_size = _NODE.unpack_from(raw, offset)
                end = offset + _NODE.size + key_size
                if not leaf:
                    if end > page_size:
                        raise _damaged(path, f"page {number}: key past the page's end")
                    child = low | high << 16 | node_flags << 32
                    pending.append((child, level + 1))
                    continue
                size = low | high << 16
                key = raw[offset + _NODE.size : end]
                if node_flags & ~_F_BIGDATA or end + (8 if node_flags else size) > page_size:
                    raise _damaged(path, f"page {number}: leaf node {key!r} past the page's end")
                if node_flags:
                    first = struct.unpack_from("<Q", raw, end)[0]
                    count = -(-(_PAGE_HEADER.size + size) // page_size)
                    if first + count > n_pages:
                        raise _damaged(path, f"value {key!r}: pages {first}+{count} of {n_pages}")
                    header = page(first, f"value {key!r}", _OVERFLOW_HEADER.size)
                    _, _, over_flags, over_count = _OVERFLOW_HEADER.unpack(header)
                    if not over_flags & _P_OVERFLOW or over_count != count:
                        raise _damaged(path, f"value {key!r}: overflow page {first} damaged")
                seen += 1
                rows += key.isdigit()
    if seen != entries:
        raise _damaged(path, f"{seen} entries in the tree, the meta page counts {entries}")
    return rows


def write_manifest(path: Path) -> dict[str, Any]:
    """Record a freshly written aselmdb file's size, row count and sha256 in its manifest
    (`manifest_path`), after checking its pages (`check_pages`); return the manifest. Called
    at preparation (dens.data.prepare) for every split; the aselmdb file itself is not changed."""
    path = Path(path)
    manifest = {
        "file": path.name,
        "bytes": path.stat().st_size,
        "rows": check_pages(path),
        "sha256": file_digest(path),
    }
    write_text(manifest_path(path), json.dumps(manifest, indent=2) + "\n", "writing manifest")
    return manifest


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of `path` (`write_manifest`), or None when it has none (a file not prepared
    by `dens data prepare`, or prepared before manifests); a damaged one raises DataError."""
    target = manifest_path(Path(path))
    try:
        manifest = json.loads(target.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{target} is damaged ({error})", path, REBUILD) from error
    fields = {"file": str, "bytes": int, "rows": int, "sha256": str}
    if not isinstance(manifest, dict) or any(
        not isinstance(manifest.get(key), kind) for key, kind in fields.items()
    ):
        raise DataError(
            f"{target} is damaged (not a manifest of {', '.join(fields)})", path, REBUILD
        )
    return manifest


def check_aselmdb(path: Path) -> dict[str, Any] | None:
    """Raise DataError naming `path` unless it exists, is a complete LMDB file (both meta pages
    intact, every page the newer one counts present) and matches its manifest: the same size and,
    up to `SHA256_LIMIT_BYTES`, the same sha256; a file without a manifest or a larger one must
    pass `check_pages` (and have the manifest's row count). Return the manifest (None without
    one). Plain file I/O only, never mapping the file, so damage gives an error instead of the
    SIGBUS that LMDB's memory map raises when it follows a page reference past the file's end."""
    path = Path(path)
    _read_header(path)
    manifest = read_manifest(path)
    if manifest is None:
        check_pages(path)
        return None
    recorded = f"as recorded at preparation in {manifest_path(path).name}"
    size = path.stat().st_size
    if size != manifest["bytes"]:
        raise _damaged(path, f"{size} bytes, {manifest['bytes']} {recorded}")
    if size <= SHA256_LIMIT_BYTES:
        if file_digest(path) != manifest["sha256"]:
            raise _damaged(path, f"its sha256 is not the one {recorded[3:]}")
        return manifest
    rows = check_pages(path)
    if rows != manifest["rows"]:
        raise _damaged(path, f"{rows} rows, {manifest['rows']} {recorded}")
    return manifest


_fault_line = [b""]


def _on_fault(signum: int) -> None:
    """SIGBUS/SIGSEGV handler while LMDB reads a file: one line naming it, exit status 2."""
    try:
        os.write(2, _fault_line[0])
    finally:
        os._exit(2)


@contextlib.contextmanager
def _naming_faults(path: Path) -> Iterator[None]:
    """While LMDB reads `path` through its memory map, a bus error or segmentation fault (damage
    that `check_aselmdb` let through) prints one line naming the file and how to rebuild it and
    exits with status 2, instead of a bare "Bus error" and status 135. Python cannot continue
    after such a fault (the faulting instruction would run again), so this is a last resort; the
    handlers are C-level (libc sigaction through ctypes) and restored afterwards."""
    names = [name for name in ("SIGBUS", "SIGSEGV") if hasattr(signal, name)]
    if os.name != "posix" or not names:
        yield
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
    libc.sigaction.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    handler = ctypes.CFUNCTYPE(None, ctypes.c_int)(_on_fault)
    fault = DataError(f"{path} is damaged (a memory fault while LMDB read it)", path, REBUILD)
    _fault_line[0] = f"dens: error: {fault}\n".encode()
    saved = {}
    for name in names:
        number = int(getattr(signal, name))
        saved[number] = ctypes.create_string_buffer(1024)  # larger than any struct sigaction
        libc.sigaction(number, None, saved[number])
        libc.signal(number, ctypes.cast(handler, ctypes.c_void_p))
    try:
        yield
    finally:
        for number, previous in saved.items():
            libc.sigaction(number, previous, None)


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
    removed afterwards, and a manifest of an earlier file at `path` before (`write_manifest`
    records the new one). Returns the number of rows written.
    """
    path = Path(path)
    _check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + "-lock"), manifest_path(path)):
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
    mini-MD17 (measured), with the same values (tests/data/test_aselmdb.py). A value that does
    not decompress or decode raises DataError naming `path` and the key; call `check_aselmdb`
    first, so that LMDB follows no page reference outside the file."""
    import lmdb
    from ase.io.jsonio import decode

    def value(txn: Any, key: str) -> Any:
        raw = txn.get(key.encode("ascii"))
        if raw is None:
            return None
        try:
            return decode(zlib.decompress(raw).decode("utf-8"))
        except Exception as error:  # zlib, UTF-8, JSON or ase.io.jsonio: any damage
            raise _damaged(path, f"key {key!r}: {type(error).__name__}: {error}") from error

    path = Path(path)
    with _naming_faults(path):
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
                        raise _damaged(path, f"row {row_id} is missing")
                    rows.append(row | {"id": row_id})
        finally:
            env.close()
    return metadata, rows


def row_to_data(row: Mapping[str, Any], path: Path | str = "") -> Data:
    """One stored row (`read_rows`) as model input with labels (dens.data.structures):
    float32 positions and forces, float64 energy, ``md_split`` from the row key (False when
    absent). A row without energy or forces, or with a constraint other than FixAtoms/FixCom,
    raises InvalidDataError naming ``path`` and the row."""
    where = _row_name(row, path)
    missing = [key for key in ("energy", "forces") if row.get(key) is None]
    if missing:
        # ase.db drops the results of a structure whose positions are not finite (NaN != NaN
        # reads as a changed structure): name that cause rather than the missing labels.
        _check_row(row, path)
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


def _row_name(row: Mapping[str, Any], path: Path | str) -> str:
    """``<file>: row <id>``, with the row's sid where it has one."""
    sid = row.get("key_value_pairs", {}).get("sid")
    return f"{path}: row {row['id']}" + ("" if sid is None else f" (sid {sid})")


def _check_row(row: Mapping[str, Any], path: Path | str) -> None:
    """dens.data.validation.check_structure of one stored row (InvalidStructureError naming the
    file, the row, its sid, the atom and the value), with the converters' atomic-number range."""
    pbc = np.asarray(row.get("pbc", np.zeros(3, dtype=bool)), dtype=bool)
    periodic = bool(pbc.any())
    check_structure(
        np.asarray(row["numbers"]),
        np.asarray(row["positions"], dtype=np.float64).reshape(-1, 3),
        _row_name(row, path),
        cell=np.asarray(row["cell"]) if periodic else None,
        pbc=pbc if periodic else None,
        energy=row.get("energy"),
        forces=row.get("forces"),
        max_atomic_number=SUPPORTED_MAX_Z,
    )


def check_rows(rows: Sequence[Mapping[str, Any]], batch: Batch, path: Path | str) -> None:
    """Every row of ``batch`` (``rows`` as `read_rows` returned them, in order) within the
    bounds of dens.data.validation, checked at once on the batch's tensors: at least one atom
    (two in a molecule), atomic numbers 1..SUPPORTED_MAX_Z, finite positions within
    MAX_COORDINATE, finite forces and energy, a finite cell of vectors up to MAX_CELL_LENGTH.
    The first row that fails is checked again with check_structure, whose InvalidStructureError
    names the file, the row, its sid, the atom and the value. Vectorised: 20 ms for 3000 slabs
    of 37 atoms on one busy core, 0.6 % of the 3.6 s AseLmdbDataset takes to read them
    (measured)."""
    natoms = batch.natoms
    periodic = "cell" in batch
    bad = natoms < (1 if periodic else 2)
    atoms_bad = (batch.atomic_numbers < 1) | (batch.atomic_numbers > SUPPORTED_MAX_Z)
    atoms_bad |= ~torch.isfinite(batch.pos).all(dim=1)
    atoms_bad |= (batch.pos.abs() > MAX_COORDINATE).any(dim=1)
    if "forces" in batch:
        atoms_bad |= ~torch.isfinite(batch.forces).all(dim=1)
    bad[batch.batch[atoms_bad]] = True
    if "energy" in batch:
        bad |= ~torch.isfinite(batch.energy)
    if periodic:
        cell = batch.cell.to(torch.float64)
        bad |= ~torch.isfinite(cell).all(dim=2).all(dim=1)
        bad |= (torch.linalg.vector_norm(cell, dim=2) > MAX_CELL_LENGTH).any(dim=1)
    if not bad.any():
        return
    row = rows[int(torch.nonzero(bad)[0, 0])]
    _check_row(row, path)
    raise InvalidStructureError(f"{_row_name(row, path)}: outside dens.data.validation's bounds")


class AseLmdbDataset(torch.utils.data.Dataset):
    """All rows of one aselmdb file as `Data` objects (see `row_to_data`), in row order.

    The rows are read into memory once, at construction (`read_rows`), and kept as one
    `Batch` (one tensor per field), about 0.7 kB per row of 21 atoms. Measured on one core: the
    mini-MD17 aspirin training split (950 rows) reads in 0.12 s, mini-OC20 All+MD's (3603 slabs
    of ~40 atoms) in 0.8 s. `dataset[i]` returns a
    copy, so callers may modify it in place. `metadata` holds the file's metadata dict (empty
    when none was written).

    A missing or damaged file raises dens.errors.DataError naming it (see `check_aselmdb`), also
    one that reads as fewer or more rows than its manifest records; a row outside the bounds of
    dens.data.validation (`check_rows`) raises its InvalidStructureError naming the file and row.
    """

    def __init__(self, path: Path) -> None:
        import lmdb

        path = Path(path)
        _check_suffix(path)
        manifest = check_aselmdb(path)
        self.path = path
        try:
            metadata, rows = read_rows(path)
        except lmdb.Error as err:
            raise _damaged(path, f"LMDB: {err}") from err
        if manifest is not None and len(rows) != manifest["rows"]:
            raise _damaged(
                path,
                f"reads as {len(rows)} rows, {manifest['rows']} as recorded at preparation in "
                f"{manifest_path(path).name}",
            )
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
            check_rows(rows, self._rows, path)
            self.elements = torch.unique(self._rows.atomic_numbers).tolist()

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Data:
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} rows of {self.path}")
        return self._rows.structure(index % self._length)
