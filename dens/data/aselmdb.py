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
(dens.data.split_folder: ``<split>.manifest.json`` beside a split folder, or `write_manifest`'s
``<name>.aselmdb.manifest.json`` beside a single file; a separate file so the
aselmdb format stays fairchem's), its size and sha256 for files up to `SHA256_LIMIT_BYTES`;
larger files and files without a manifest get `check_pages`, a walk of the B-tree checking every
page reference and node bound LMDB would follow. `AseLmdbDataset` then checks the row count
against the manifest (a damaged file never reads as fewer rows), names the file and row when a
row does not decompress or decode, and, as a last resort, prints one line naming the file and
exits with status 2 if a bus error or segmentation fault still happens while LMDB reads it
(Python cannot continue after one). A damaged or missing file raises dens.errors.DataError naming
it and how to rebuild it. The checks live in dens.data.aselmdb_integrity; this module reads and
writes the rows.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dens.data.aselmdb_integrity import _damaged, _naming_faults, manifest_path
from dens.data.batch import Batch, Data
from dens.data.structures import fixed_mask, structure_data
from dens.data.validation import (
    MAX_CELL_LENGTH,
    MAX_COORDINATE,
    SUPPORTED_MAX_Z,
    InvalidStructureError,
    check_structure,
)
from dens.errors import InvalidDataError

if TYPE_CHECKING:
    from ase import Atoms

SUFFIX = ".aselmdb"


def _check_suffix(path: Path) -> None:
    if path.suffix != SUFFIX:
        raise InvalidDataError(
            f"aselmdb path must end in {SUFFIX!r} (ase.db picks the backend by it): {path}"
        )


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
    """All rows of a split as `Data` objects (see `row_to_data`), in row order: a split folder
    (its shards in name order, dens.data.split_folder) or a single aselmdb file.

    The rows are read into memory once, at construction (`read_rows`), and kept as one
    `Batch` (one tensor per field), about 0.7 kB per row of 21 atoms. Measured on one core: the
    mini-MD17 aspirin training split (950 rows) reads in 0.12 s, mini-OC20 All+MD's (3603 slabs
    of ~40 atoms) in 0.8 s. `dataset[i]` returns a
    copy, so callers may modify it in place. `metadata` holds the first shard's metadata dict
    (empty when none was written).

    A missing or damaged shard raises dens.errors.DataError naming it (see `check_aselmdb`), also
    one that reads as fewer or more rows than its manifest records; a row outside the bounds of
    dens.data.validation (`check_rows`) raises its InvalidStructureError naming the shard and row.
    """

    def __init__(self, path: Path) -> None:
        from dens.data.split_folder import split_shards

        path = Path(path)
        if not path.is_dir() and path.suffix:  # a file (a split folder's name has no suffix)
            _check_suffix(path)
        self.path = path
        self.metadata: dict[str, Any] = {}
        items: list[Data] = []
        batches: list[Batch] = []
        for index, (shard, entry) in enumerate(split_shards(path)):
            metadata, shard_items, batch = _read_shard(shard, entry)
            if index == 0:
                self.metadata = dict(metadata)
            items += shard_items
            batches += [] if batch is None else [batch]
        self._length = len(items)
        self.elements: list[int] = []
        """The atomic numbers present in the split."""
        if items:
            keys = set(items[0].keys())
            for index, item in enumerate(items):
                if set(item.keys()) != keys:
                    raise ValueError(
                        f"{path}: row {index + 1} has fields {sorted(item.keys())}, "
                        f"the first row {sorted(keys)} (periodic and molecular rows mixed?)"
                    )
            self._rows = batches[0] if len(batches) == 1 else Batch.from_data_list(items)
            self.elements = torch.unique(self._rows.atomic_numbers).tolist()

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Data:
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} rows of {self.path}")
        return self._rows.structure(index % self._length)


def _read_shard(
    shard: Path, entry: Mapping[str, Any] | None
) -> tuple[dict[str, Any], list[Data], Batch | None]:
    """(metadata, rows as `Data`, their `Batch` checked by `check_rows`; None without rows) of
    one checked shard; ``entry``: its manifest record, whose row count it must read as."""
    import lmdb

    try:
        metadata, rows = read_rows(shard)
    except lmdb.Error as err:
        raise _damaged(shard, f"LMDB: {err}") from err
    if entry is not None and len(rows) != entry["rows"]:
        raise _damaged(
            shard,
            f"reads as {len(rows)} rows, {entry['rows']} as recorded at preparation in its "
            "manifest",
        )
    items = [row_to_data(row, shard) for row in rows]
    if not items:
        return metadata, items, None
    keys = set(items[0].keys())
    if any(set(item.keys()) != keys for item in items):
        return metadata, items, None  # named by the caller's check over all rows
    batch = Batch.from_data_list(items)
    check_rows(rows, batch, shard)
    return metadata, items, batch
