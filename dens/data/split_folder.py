"""A prepared split as a folder of aselmdb shards, and its manifest beside the folder.

A split folder (dens.layout ``DatasetDirectory.split``) holds nothing but its shards
(``shard-000000.aselmdb``, ``shard-000001.aselmdb``, ...), whose name order is the row order:
fairchem-core's ``AseDBDataset`` given the folder as ``src`` reads every file ``<folder>/*``
matches in that order, and so does dens.data.aselmdb.AseLmdbDataset. (The glob skips hidden
files: the ``.snakemake_timestamp`` Snakemake puts into a directory output is harmless.) The
manifest beside it, ``<split>.manifest.json``, is written at preparation (`write_split_manifest`)::

    {"split": "train", "rows": 12,
     "shards": [{"file": "shard-000000.aselmdb", "bytes": 40960, "rows": 8, "sha256": "..."},
                ...]}

Every reader checks each shard against its entry (dens.data.aselmdb_integrity.check_against:
size, sha256 up to SHA256_LIMIT_BYTES, else the page walk and row count), and the folder's files
against the entries (a shard missing or one not recorded is damage). `split_shards` also takes a
single aselmdb file (a library user's), checked against the manifest beside it if there is one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dens.atomic_files import file_digest, write_text
from dens.data.aselmdb_integrity import (
    FILE_ENTRY_FIELDS,
    REBUILD,
    _damaged,
    check_against,
    check_aselmdb,
    check_pages,
    is_file_entry,
    read_manifest_document,
)
from dens.errors import DataError, MissingDataError
from dens.layout import SHARD_SUFFIX, manifest_of


def shard_files(folder: Path) -> list[Path]:
    """The shards of a split folder in name (row) order; anything else in it is an error naming
    it (fairchem would read it as a shard), but hidden files, which fairchem's glob skips too
    (Snakemake's ``.snakemake_timestamp`` in a directory output)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingDataError(f"split folder not found: {folder}", folder)
    files = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    other = [path.name for path in files if path.suffix != SHARD_SUFFIX or not path.is_file()]
    if other:
        raise DataError(
            f"{folder} is damaged (holds {', '.join(other)} besides its *{SHARD_SUFFIX} shards)",
            folder,
            REBUILD,
        )
    return files


def write_split_manifest(
    folder: Path, expected: int | None = None, expected_from: str = ""
) -> dict[str, Any]:
    """Record each shard of ``folder`` (its name, bytes, rows from `check_pages`, sha256) and the
    total rows in ``<split>.manifest.json`` beside it; return the manifest. ``expected``: the row
    total the source publishes (``expected_from`` names where): a different total raises
    DataError naming the split, the expected and the found count, and writes no manifest."""
    folder = Path(folder)
    shards = [
        {
            "file": shard.name,
            "bytes": shard.stat().st_size,
            "rows": check_pages(shard),
            "sha256": file_digest(shard),
        }
        for shard in shard_files(folder)
    ]
    rows = sum(entry["rows"] for entry in shards)
    if expected is not None and rows != expected:
        raise DataError(
            f"split {folder.name} ({folder}): {expected} rows expected ({expected_from}), "
            f"{rows} found in its {len(shards)} shard(s)",
            folder,
        )
    manifest = {"split": folder.name, "rows": rows, "shards": shards}
    write_text(manifest_of(folder), json.dumps(manifest, indent=2) + "\n", "writing manifest")
    return manifest


def read_split_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a split folder (`write_split_manifest`), None without one; a damaged one
    raises DataError naming it."""
    target = manifest_of(Path(folder))
    manifest = read_manifest_document(target, folder)
    if manifest is None:
        return None
    entries = manifest.get("shards") if isinstance(manifest, dict) else None
    if (
        not isinstance(entries, list)
        or not isinstance(manifest.get("rows"), int)
        or not all(is_file_entry(entry) for entry in entries)
        or sum(entry["rows"] for entry in entries) != manifest["rows"]
    ):
        fields = ", ".join(FILE_ENTRY_FIELDS)
        raise DataError(
            f"{target} is damaged (not a split manifest: rows, shards of {fields})",
            folder,
            REBUILD,
        )
    return manifest


def split_shards(path: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """The checked shards of a split and their manifest entries, in row order: each shard of a
    split folder against the folder's manifest (a shard missing or not recorded is damage), or
    a single aselmdb file against the manifest beside it. None as entry where there is no
    manifest (the shard passed the page walk instead). Raises DataError naming the shard."""
    path = Path(path)
    if path.is_file() or (not path.exists() and path.suffix == SHARD_SUFFIX):
        return [(path, check_aselmdb(path))]
    files = shard_files(path)
    manifest = read_split_manifest(path)
    if manifest is None:
        for shard in files:
            check_against(shard, None, "")
        return [(shard, None) for shard in files]
    recorded = [entry["file"] for entry in manifest["shards"]]
    found = [shard.name for shard in files]
    if found != recorded:
        missing = sorted(set(recorded) - set(found))
        extra = sorted(set(found) - set(recorded))
        raise _damaged(
            path,
            f"shards missing: {', '.join(missing) or 'none'}; not recorded in "
            f"{manifest_of(path).name}: {', '.join(extra) or 'none'}",
        )
    for shard, entry in zip(files, manifest["shards"], strict=True):
        check_against(shard, entry, manifest_of(path).name)
    return list(zip(files, manifest["shards"], strict=True))


def check_split(path: Path) -> list[Path]:
    """`split_shards` without the manifest entries: the checked shard files in row order."""
    return [shard for shard, _ in split_shards(path)]


def split_rows(path: Path, limit: int | None = None) -> Iterator[tuple[Path, Any]]:
    """(shard, ase.db row) of every row of a split (`check_split` first), in order; the first
    ``limit`` rows only when given. An LMDB error raises DataError naming the shard."""
    import ase.db
    import lmdb

    count = 0
    for shard in check_split(path):
        if limit is not None and count >= limit:
            return
        try:
            db = ase.db.connect(shard, readonly=True)
            try:
                for row in db.select():
                    if limit is not None and count >= limit:
                        return
                    count += 1
                    yield shard, row
            finally:
                db.close()
        except lmdb.Error as error:
            raise DataError(f"{shard} is damaged (LMDB: {error})", shard, REBUILD) from error
