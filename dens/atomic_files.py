"""Files written atomically, and a full, read-only or forbidden folder reported in one line.

Every file dens writes for later use (checkpoints, log.csv, metrics, relaxation and simulation
state, submission arrays, tables) goes through ``atomic_path`` or ``atomic_write``: the content is
written to ``<name>.tmp`` beside the target, flushed to disk, then renamed over the target
(os.replace). A failure at any point removes the temporary file and leaves the previous target as
it was, so a job killed or a disk filled while saving never loses what was already written.

A write that fails because the file system is full or over quota (ENOSPC, EDQUOT), the file is
over the process's size limit (EFBIG, RLIMIT_FSIZE), the folder is not writable (EACCES, EPERM)
or the file system is mounted read-only (EROFS) raises dens.errors.DiskError: one line naming the
operation, the file, its folder and the free space there (shutil.disk_usage). Such an error often
reaches dens inside another library's exception (torch.save raises a RuntimeError whose context
is the OSError), so the whole chain is searched (``disk_cause``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from dens.errors import DiskError
from dens.layout import provenance_of

# errno -> what it means for the user, in the words of the message.
DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the file system",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file larger than this process may write (ulimit -f)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is mounted read-only",
}


def disk_cause(error: BaseException) -> OSError | None:
    """The first OSError with one of ``DISK_ERRNOS`` in ``error`` or its causes and contexts."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def human_size(num_bytes: int) -> str:
    """``num_bytes`` in binary units as dens prints sizes: ``512 B``, ``3.4 GiB``."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def free_space(folder: Path) -> str:
    """'<free> free of <total>' on the file system holding ``folder`` (its nearest existing
    parent), or why that is unknown."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        usage = shutil.disk_usage(existing)
    except OSError as error:
        return f"free space unknown ({error.strerror})"
    return f"{human_size(usage.free)} free of {human_size(usage.total)}"


def disk_error(cause: OSError, path: Path | str | None, operation: str) -> DiskError:
    """DiskError for ``cause`` (an OSError with one of ``DISK_ERRNOS``) met while ``operation``
    (e.g. "saving checkpoint") wrote ``path`` (None: the file the OSError names)."""
    target = Path(path if path is not None else cause.filename or ".")
    folder = Path(os.path.abspath(target)).parent
    code = errno.errorcode.get(cause.errno or 0, str(cause.errno))
    reason = DISK_ERRNOS.get(cause.errno or 0, cause.strerror or str(cause))
    if cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free space there or choose another folder, then rerun"
    else:
        fix = "make the folder writable or choose another one, then rerun"
    return DiskError(
        f"{operation} {target.name} in {folder}/ failed: {reason} ({code}); "
        f"{free_space(folder)} there; {fix} (files written before are intact)"
    )


def make_folder(folder: Path | str, operation: str) -> None:
    """``mkdir -p folder``; a full, read-only or forbidden parent raises DiskError naming
    ``operation`` (e.g. "creating run folder"), the folder, its parent and the free space."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        cause = disk_cause(error)
        if cause is not None:
            raise disk_error(cause, folder, operation) from error
        raise


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    """Hex digest (hashlib ``algorithm``) of a file's bytes, read in 1 MiB blocks: the one file
    checksum of dens (downloads, manifests, checkpoints and sources recorded in provenance)."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


def file_fingerprint(path: Path | str) -> dict[str, Any]:
    """What identifies a prepared data file (or split folder) cheaply: its name and size (a
    folder's: the sum of its files'), and the SHA-256 of the provenance.json beside it (None where
    there is none): a regenerated dataset has a new one. A run resumes, and a simulation
    continues, only on data with the same fingerprint."""
    path = Path(path)
    provenance = provenance_of(path)
    size = (
        sum(item.stat().st_size for item in path.iterdir())
        if path.is_dir()
        else path.stat().st_size
    )
    return {
        "file": path.name,
        "bytes": size,
        "provenance_sha256": file_digest(provenance) if provenance.is_file() else None,
    }


def _discard(tmp: Path) -> None:
    """Remove ``tmp`` if it is there (on a read-only file system even a missing file's unlink
    fails, with EROFS: the error being reported is the write's)."""
    with contextlib.suppress(OSError):
        tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: Path | str, operation: str, tmp: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``<name>.tmp`` unless ``tmp`` is given) for the
    caller to write; on a normal exit rename it over ``path``. On any error the temporary file
    is removed and ``path`` is left as it was; a full, read-only or forbidden folder raises
    DiskError naming ``operation``, the file, its folder and the free space."""
    path = Path(path)
    tmp = tmp if tmp is not None else path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        _discard(tmp)
        cause = disk_cause(error)
        if cause is not None:
            raise disk_error(cause, path, operation) from error
        raise


@contextlib.contextmanager
def atomic_write(
    path: Path | str, operation: str, mode: str = "wb", **open_args: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing (``mode``, ``open_args`` as open()),
    flush it to disk (fsync) and rename it over ``path`` (``atomic_path``'s guarantees)."""
    with atomic_path(path, operation) as tmp, open(tmp, mode, **open_args) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_text(path: Path | str, text: str, operation: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (``atomic_write``)."""
    with atomic_write(path, operation, "w", encoding="utf-8") as handle:
        handle.write(text)
