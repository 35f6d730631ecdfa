"""Integrity checks of an aselmdb file (dens.data.aselmdb) with plain file I/O, before LMDB maps
it into memory: the meta pages (`_read_header`), the B-tree walk (`check_pages`), the manifest
written at preparation (`write_manifest`, `read_manifest`, `check_aselmdb`), and the last-resort
fault handler that names the file if a bus error or segmentation fault still happens while LMDB
reads it (`_naming_faults`). dens.data.aselmdb's module notes say what each check covers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from dens.atomic_files import file_digest, write_text
from dens.errors import DataError, MissingDataError
from dens.layout import manifest_of

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
    if root == _P_INVALID:
        if entries:
            raise _damaged(path, f"main database of {entries} entries without a root page")
        return 0
    with open(path, "rb") as handle:
        walk = _PageWalk(path, handle, page_size, last_page + 1, depth)
        walk.run(root)
    if walk.seen != entries:
        raise _damaged(path, f"{walk.seen} entries in the tree, the meta page counts {entries}")
    return walk.rows


class _PageWalk:
    """`check_pages`' walk of one file's B-tree, depth first from the root: each page read once
    (a page referred to twice is damage), counting the entries and the rows it finds."""

    def __init__(
        self, path: Path, handle: BinaryIO, page_size: int, n_pages: int, depth: int
    ) -> None:
        self.path, self.handle = path, handle
        self.page_size, self.n_pages, self.depth = page_size, n_pages, depth
        self.visited: set[int] = set()
        self.rows = self.seen = 0

    def page(self, number: int, what: str, size: int) -> bytes:
        """The first ``size`` bytes of page ``number``, which ``what`` refers to."""
        if not 2 <= number < self.n_pages or number in self.visited:
            raise _damaged(self.path, f"{what} refers to page {number} of {self.n_pages}")
        self.visited.add(number)
        self.handle.seek(number * self.page_size)
        raw = self.handle.read(size)
        if len(raw) < size or _PAGE_HEADER.unpack_from(raw)[0] != number:
            raise _damaged(self.path, f"page {number} does not start with its page number")
        return raw

    def run(self, root: int) -> None:
        """Check every page below ``root`` (the main database's root page, tree level 1)."""
        pending = [(root, 1)]
        while pending:
            number, level = pending.pop()
            pending.extend((child, level + 1) for child in self.tree_page(number, level))

    def tree_page(self, number: int, level: int) -> list[int]:
        """Check the branch or leaf page ``number`` at tree level ``level`` and its nodes;
        return the child page numbers of a branch page."""
        path, page_size = self.path, self.page_size
        raw = self.page(number, "a branch page" if level > 1 else "the meta page", page_size)
        _, _, flags, lower, upper = _PAGE_HEADER.unpack_from(raw)
        kind = flags & (_P_BRANCH | _P_LEAF | _P_OVERFLOW | _P_META)
        leaf = level == self.depth
        if kind != (_P_LEAF if leaf else _P_BRANCH):
            raise _damaged(path, f"page {number}: flags {flags:#x} at tree level {level}")
        if not _PAGE_HEADER.size < lower <= upper <= page_size or lower % 2:
            raise _damaged(path, f"page {number}: node area {lower}..{upper}")
        offsets = struct.unpack_from(f"<{(lower - _PAGE_HEADER.size) // 2}H", raw, 16)
        children = []
        for offset in offsets:
            if not upper <= offset <= page_size - _NODE.size:
                raise _damaged(path, f"page {number}: node at {offset}, outside {upper}..")
            low, high, node_flags, key_size = _NODE.unpack_from(raw, offset)
            end = offset + _NODE.size + key_size
            if not leaf:
                if end > page_size:
                    raise _damaged(path, f"page {number}: key past the page's end")
                children.append(low | high << 16 | node_flags << 32)
                continue
            self.leaf_node(number, raw, offset, low | high << 16, node_flags)
        return children

    def leaf_node(self, number: int, raw: bytes, offset: int, size: int, node_flags: int) -> None:
        """Check the leaf node at ``offset`` of page ``number`` (its value inside the page, or
        its overflow run within the file) and count it."""
        path, page_size = self.path, self.page_size
        end = offset + _NODE.size + _NODE.unpack_from(raw, offset)[3]
        key = raw[offset + _NODE.size : end]
        if node_flags & ~_F_BIGDATA or end + (8 if node_flags else size) > page_size:
            raise _damaged(path, f"page {number}: leaf node {key!r} past the page's end")
        if node_flags:
            first = struct.unpack_from("<Q", raw, end)[0]
            count = -(-(_PAGE_HEADER.size + size) // page_size)
            if first + count > self.n_pages:
                raise _damaged(path, f"value {key!r}: pages {first}+{count} of {self.n_pages}")
            header = self.page(first, f"value {key!r}", _OVERFLOW_HEADER.size)
            _, _, over_flags, over_count = _OVERFLOW_HEADER.unpack(header)
            if not over_flags & _P_OVERFLOW or over_count != count:
                raise _damaged(path, f"value {key!r}: overflow page {first} damaged")
        self.seen += 1
        self.rows += key.isdigit()


def write_manifest(path: Path) -> dict[str, Any]:
    """Record a freshly written aselmdb file's size, row count and sha256 in its manifest
    (`manifest_path`), after checking its pages (`check_pages`); return the manifest. Called
    by library users for a single aselmdb file (split folders have their own manifest,
    dens.data.split_folder); the aselmdb file itself is not changed."""
    path = Path(path)
    manifest = {
        "file": path.name,
        "bytes": path.stat().st_size,
        "rows": check_pages(path),
        "sha256": file_digest(path),
    }
    write_text(manifest_path(path), json.dumps(manifest, indent=2) + "\n", "writing manifest")
    return manifest


#: What a manifest records of one aselmdb file: a lone file's manifest, a split folder's shard.
FILE_ENTRY_FIELDS: dict[str, type] = {"file": str, "bytes": int, "rows": int, "sha256": str}


def is_file_entry(entry: Any) -> bool:
    """Whether ``entry`` is a dict with every field of `FILE_ENTRY_FIELDS` of its type."""
    return isinstance(entry, dict) and all(
        isinstance(entry.get(key), kind) for key, kind in FILE_ENTRY_FIELDS.items()
    )


def read_manifest_document(target: Path, owner: Path) -> Any:
    """The JSON document of the manifest ``target`` of ``owner`` (a file or a split folder),
    None when there is none; an unreadable one raises DataError naming it."""
    try:
        return json.loads(target.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{target} is damaged ({error})", owner, REBUILD) from error


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of `path` (`write_manifest`), or None when it has none (a file not prepared
    by `dens data prepare`, or prepared before manifests); a damaged one raises DataError."""
    target = manifest_path(Path(path))
    manifest = read_manifest_document(target, path)
    if manifest is not None and not is_file_entry(manifest):
        raise DataError(
            f"{target} is damaged (not a manifest of {', '.join(FILE_ENTRY_FIELDS)})", path, REBUILD
        )
    return manifest


def check_aselmdb(path: Path) -> dict[str, Any] | None:
    """Raise DataError naming `path` unless it exists, is a complete LMDB file (both meta pages
    intact, every page the newer one counts present) and matches its manifest beside it
    (`check_against`). Return the manifest (None without one). Plain file I/O only, never mapping
    the file, so damage gives an error instead of the SIGBUS that LMDB's memory map raises when it
    follows a page reference past the file's end. A split folder's shards are checked against the
    folder's manifest instead (dens.data.split_folder)."""
    path = Path(path)
    _read_header(path)
    manifest = read_manifest(path)
    check_against(path, manifest, manifest_path(path).name)
    return manifest


def check_against(path: Path, manifest: dict[str, Any] | None, where: str) -> None:
    """Raise DataError naming `path` unless it has the manifest's size and, up to
    `SHA256_LIMIT_BYTES`, its sha256; a file without a manifest, or a larger one, must pass
    `check_pages` (and have the manifest's row count). ``where``: the manifest's file name, for
    the message."""
    path = Path(path)
    _read_header(path)
    if manifest is None:
        check_pages(path)
        return
    recorded = f"as recorded at preparation in {where}"
    size = path.stat().st_size
    if size != manifest["bytes"]:
        raise _damaged(path, f"{size} bytes, {manifest['bytes']} {recorded}")
    if size <= SHA256_LIMIT_BYTES:
        if file_digest(path) != manifest["sha256"]:
            raise _damaged(path, f"its sha256 is not the one {recorded[3:]}")
        return
    rows = check_pages(path)
    if rows != manifest["rows"]:
        raise _damaged(path, f"{rows} rows, {manifest['rows']} {recorded}")


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
