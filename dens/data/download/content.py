"""What a checksum cannot check: a file's format (told by its name) and contents, read to the end,
and its size as the catalog states it; checked before a digest is first recorded.
"""

import lzma
import math
import os
import re
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

#: Archive formats :func:`extract` unpacks.
EXTRACTABLE_FORMATS: tuple[str, ...] = ("tar", "tar.gz", "tar.xz", "zip")
#: Formats of files used as downloaded (no extraction).
PLAIN_FORMATS: tuple[str, ...] = ("npz", "pt")
#: What a published model checkpoint (format pt) must hold before its digest is recorded: the
#: keys of an ocp / fairchem 1.x trainer checkpoint that dens.pipeline.checkpoint_import reads.
CHECKPOINT_KEYS: tuple[str, ...] = ("state_dict", "config")
#: A dimension of an npz array in the catalog: a fixed length, or a name all arrays agree on.
Dimension = int | str
#: Bytes read or written at a time.
_CHUNK = 1 << 20


#: Powers of the size suffixes of config/archives.yaml (``664 B``, ``193M``, ``3.4G``).
_SIZE_POWERS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}
#: What reading a damaged zip, npz, tar or compressed stream raises.
_UNREADABLE = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    ValueError,
)


def size_range(size: str) -> tuple[int, int]:
    """Byte counts a catalog size such as ``193M`` stands for: ``(lowest, highest)``.

    The catalog copies sizes as their owners print them: rounded to the digits shown, in units
    that may be decimal (MB) or binary (MiB, as Apache's directory index and ``ls -h`` print).
    The range covers both: from (value - half a last digit) x 1000^k to (value + half) x 1024^k.
    """
    match = re.fullmatch(r"(\d+)(?:\.(\d+))? ?([KMGT]?)B?", size.strip())
    if match is None:
        raise ValueError(f"{size!r} is not a size such as '664 B', '193M' or '3.4G'")
    whole, fraction, unit = match.groups()
    value = float(f"{whole}.{fraction or 0}")
    half = 0.5 * 10.0 ** -len(fraction or "")
    power = _SIZE_POWERS[unit]
    return math.ceil((value - half) * 1000**power), math.floor((value + half) * 1024**power)


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
        text.startswith(b"<") and b"<html" in text
    )


def _npz_problem(path: Path, arrays: dict[str, tuple[Dimension, ...]] | None) -> str | None:
    """What is wrong with an npz: not a zip, a member failing its CRC, a member that is no
    ``.npy`` array, or (``arrays``) a missing array, an array of Python objects, or a shape that
    disagrees with the catalog's. Only the ``.npy`` headers are parsed; no array is loaded."""
    shapes: dict[str, tuple[int, ...]] = {}
    with zipfile.ZipFile(path) as zf:
        if (bad := zf.testzip()) is not None:  # reads every member to its end
            return f"its member {bad!r} is corrupt (CRC mismatch)"
        for info in zf.infolist():
            name = info.filename.removesuffix(".npy")
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    return f"its member {info.filename!r} is a .npy of version {version}"
            if arrays is not None and name in arrays and dtype.hasobject:
                return f"its array {name} holds Python objects (it would need unpickling)"
            shapes[name] = shape
    if arrays is None:
        return None
    if missing := [key for key in arrays if key not in shapes]:
        return f"it lacks the arrays {missing} (it has {sorted(shapes)})"
    bound: dict[str, int] = {}
    for key, dims in arrays.items():
        shape = shapes[key]
        expected = f"expected [{', '.join(map(str, dims))}]"
        if len(shape) != len(dims):
            return f"its array {key} has shape {list(shape)}, {expected}"
        for dim, length in zip(dims, shape, strict=True):
            if isinstance(dim, int):
                if length != dim:
                    return f"its array {key} has shape {list(shape)}, {expected}"
            elif length == 0:
                return f"its array {key} is empty ({dim} = 0)"
            elif bound.setdefault(dim, length) != length:
                return (
                    f"its array {key} has shape {list(shape)}, {expected}, but {dim} is "
                    f"{bound[dim]} in the arrays before it"
                )
    return None


def _archive_problem(path: Path, fmt: str) -> str | None:
    """What is wrong with a tar/zip: unreadable, a member failing its CRC (zip), a compressed
    stream that ends early or fails its trailer's check (tar.gz, tar.xz), or a listing that
    stops before the end-of-archive marker (tar: Python's tarfile ends a cut listing silently)."""
    if fmt == "zip":
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        return None if bad is None else f"its member {bad!r} is corrupt (CRC mismatch)"
    end = None  # tar: where the end-of-archive marker (two zero blocks) must start
    with tarfile.open(path, {"tar": "r:", "tar.gz": "r:gz", "tar.xz": "r:xz"}[fmt]) as tar:
        for member in tar:  # headers only; extraction is extract()'s job
            end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if end is None:
            return "it lists no member"
        while tar.fileobj.read(_CHUNK):  # to the end: gzip/xz check their trailers there
            pass
    if fmt == "tar":
        with path.open("rb") as fh:
            fh.seek(end)
            if fh.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
                return f"its listing stops at byte {end} without the end-of-archive marker"
    return None


def _checkpoint_problem(path: Path) -> str | None:
    """What is wrong with a torch checkpoint: not a zip (torch.save's format since torch 1.6;
    a cut file has no central directory), a member failing its CRC, a pickle the weights-only
    unpickler refuses (a global other than tensors and plain containers), or a top level
    without :data:`CHECKPOINT_KEYS`. The tensors are memory-mapped, not read."""
    import pickle

    import torch

    with zipfile.ZipFile(path) as zf:
        if (bad := zf.testzip()) is not None:  # reads every member to its end
            return f"its member {bad!r} is corrupt (CRC mismatch)"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"torch.load(weights_only=True) refuses it ({first})"
    except RuntimeError as error:
        return f"torch cannot read it ({str(error).strip().splitlines()[0]})"
    if not isinstance(checkpoint, dict):
        return f"it holds a {type(checkpoint).__name__}, not a trainer checkpoint (a dict)"
    if missing := [key for key in CHECKPOINT_KEYS if key not in checkpoint]:
        return f"it lacks {missing} (it has {sorted(map(str, checkpoint))})"
    return None


def content_problem(
    path: str | os.PathLike[str],
    fmt: str,
    size: str | None = None,
    arrays: dict[str, tuple[Dimension, ...]] | None = None,
) -> str | None:
    """Why ``path`` is not the ``fmt`` file the catalog describes, or None when it is.

    The checks a file without a published checksum passes before its digest is recorded: not
    an HTML page; its byte count within :func:`size_range` of the catalog's ``size``; its format
    read to the end (npz: see :func:`_npz_problem`, with the catalog's ``arrays``; tar, tar.gz,
    tar.xz, zip: a listing readable to the end; pt: :func:`_checkpoint_problem`). Nothing is
    executed or extracted; only a checkpoint's pickle is read, by the weights-only unpickler.
    """
    path = Path(path)
    actual = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(1024)
    if _looks_like_html(head):
        return f"it is an HTML page ({actual} bytes starting {head[:32]!r}), not a {fmt} file"
    if size is not None:
        low, high = size_range(size)
        if not low <= actual <= high:
            return f"it has {actual} bytes, but the catalog states {size} ({low}-{high} bytes)"
    try:
        if fmt == "npz":
            return _npz_problem(path, arrays)
        if fmt == "pt":
            return _checkpoint_problem(path)
        if fmt in EXTRACTABLE_FORMATS:
            return _archive_problem(path, fmt)
    except _UNREADABLE as error:
        return f"it is not a readable {fmt} file ({type(error).__name__}: {error})"
    raise ValueError(f"cannot check files of format {fmt!r}")


def _format_of(*names: str) -> str:
    """The format told by the first of ``names`` that ends in a known suffix."""
    for name in names:
        try:
            return archive_format(name)
        except ValueError:
            continue
    raise ValueError(
        f"cannot tell the format of {' or '.join(map(repr, names))}; without a published "
        "checksum a file is checked for its format before its digest is recorded: pass fmt"
    )


# ----------------------------------------------------------------------- format by name ----


def archive_format(name: str) -> str:
    """Format of an archive from its file name (``x.tar.gz`` -> ``tar.gz``, ``x.tgz`` too)."""
    lowered = name.lower()
    for suffix, fmt in (
        (".tar.gz", "tar.gz"),
        (".tgz", "tar.gz"),
        (".tar.xz", "tar.xz"),
        (".txz", "tar.xz"),
        (".tar", "tar"),
        (".zip", "zip"),
        (".npz", "npz"),
        (".pt", "pt"),
    ):
        if lowered.endswith(suffix):
            return fmt
    raise ValueError(f"cannot tell the archive format of {name!r} from its name")
