"""Extraction: unpack tar / tar.gz / tar.xz / zip into a staging directory, refusing unsafe
members, and write the completion marker last before renaming it into place.
"""

import json
import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from dens.data.disk_space import require_extract_space
from dens.data.download.content import EXTRACTABLE_FORMATS, archive_format
from dens.data.download.errors import DamagedArchiveError, UnsafeArchiveError

logger = logging.getLogger(__name__)

#: Written into an extracted directory after its last member; its presence means "complete".
EXTRACTED_MARKER = ".dens-extracted.json"
_TAR_FILTER: dict[str, str] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def is_extracted(dest_dir: str | os.PathLike[str]) -> bool:
    """True when ``dest_dir`` holds a complete extraction (its marker file exists)."""
    return (Path(dest_dir) / EXTRACTED_MARKER).is_file()


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _check_name(archive: Path, name: str, root: str) -> str:
    """Real path a member named ``name`` would be written to; refuse it outside ``root``."""
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(archive, name, "has an absolute path")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise UnsafeArchiveError(archive, name, "has a '..' component (it could escape)")
    target = os.path.realpath(os.path.join(root, name))
    if not _inside(target, root):
        raise UnsafeArchiveError(archive, name, "resolves outside the destination (via a link)")
    return target


def _check_link(archive: Path, member: tarfile.TarInfo, target: str, root: str) -> None:
    """Refuse a symbolic or hard link whose pointee lies outside ``root``."""
    link = member.linkname
    if link.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", link):
        raise UnsafeArchiveError(archive, member.name, f"is a link to the absolute path {link!r}")
    # A symlink is relative to its own directory, a hard link to the archive root.
    base = os.path.dirname(target) if member.issym() else root
    if not _inside(os.path.realpath(os.path.join(base, link)), root):
        raise UnsafeArchiveError(archive, member.name, f"is a link pointing outside ({link!r})")


def _extract_tar(archive: Path, staging: Path, mode: str) -> int:
    root = os.path.realpath(staging)
    count = 0
    with tarfile.open(archive, mode) as tar:
        for member in tar:  # one pass: also works on a compressed stream
            target = _check_name(archive, member.name, root)
            if member.issym() or member.islnk():
                _check_link(archive, member, target, root)
            elif not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(archive, member.name, "is a device or fifo")
            # Python's own "data" filter (3.11.4+) re-checks the same and drops unsafe modes.
            tar.extract(member, staging, **_TAR_FILTER)
            count += 1
        # The gzip CRC-32 and size (xz: its check) are verified only at the end of the stream,
        # which the members end before: read it to the end, so damage inside a member's data is
        # an error instead of a silently different file.
        while tar.fileobj.read(1 << 20):
            pass
    return count


def _extract_zip(archive: Path, staging: Path) -> int:
    root = os.path.realpath(staging)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(archive, info.filename, root)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeArchiveError(archive, info.filename, "is a symbolic link")
            zf.extract(info, staging)
    return len(infos)


def extract(
    archive: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    fmt: str | None = None,
    extracted_size: str | None = None,
) -> Path:
    """Unpack ``archive`` (tar, tar.gz, tar.xz or zip) into ``dest_dir`` and return it.

    Members go into the sibling ``<dest_dir>.partial`` (emptied first); every member is checked
    before it is written, and a member with an absolute path, a ``..`` component, a link
    pointing outside, or a device/fifo type raises :class:`UnsafeArchiveError` (the staging
    directory is removed). The marker :data:`EXTRACTED_MARKER` is written last, then the
    staging directory is renamed to ``dest_dir``. A ``dest_dir`` that already has the marker
    is returned as is; an empty one is replaced; a non-empty one without the marker is an error.
    Before a member is written, members that would not fit in ``dest_dir``'s folder raise
    :class:`dens.errors.DiskError` (dens.data.disk_space.require_extract_space: a plain tar
    needs its own size, a compressed archive ``extracted_size``, the catalog's ``size.extracted``;
    without it a warning says that the space was not checked).
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    fmt = fmt or archive_format(archive.name)
    if fmt not in EXTRACTABLE_FORMATS:
        raise ValueError(
            f"{archive} has format {fmt!r}, which is not extracted "
            f"(extractable: {', '.join(EXTRACTABLE_FORMATS)})"
        )
    if not archive.is_file():
        raise FileNotFoundError(f"cannot extract {archive}: no such file")
    if is_extracted(dest_dir):
        logger.info("%s already extracted into %s", archive, dest_dir)
        return dest_dir
    _clear_destination(archive, dest_dir)
    staging = dest_dir.with_name(dest_dir.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    require_extract_space(archive, dest_dir, fmt, extracted_size)
    staging.mkdir(parents=True)
    try:
        _unpack_staged(archive, fmt, staging)
        staging.rename(dest_dir)
    except _DAMAGED as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, FileNotFoundError | PermissionError | FileExistsError):
            raise
        raise DamagedArchiveError(
            f"{archive} is damaged ({fmt}: {error}); delete it and download it again "
            "(`dens data download NAME --out FILE` checks its checksum)"
        ) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest_dir


#: What unpacking a damaged archive raises (extract() reraises the OSErrors that are not damage).
_DAMAGED = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError)


def _clear_destination(archive: Path, dest_dir: Path) -> None:
    """Remove an empty ``dest_dir``; refuse one that holds files but no completion marker."""
    if dest_dir.exists():
        if dest_dir.is_dir() and not any(dest_dir.iterdir()):
            dest_dir.rmdir()
        else:
            raise FileExistsError(
                f"{dest_dir} exists but has no completion marker {EXTRACTED_MARKER}: it is a "
                f"half-finished or foreign extraction; remove it to extract {archive} again"
            )


def _unpack_staged(archive: Path, fmt: str, staging: Path) -> None:
    """Unpack every member of ``archive`` into ``staging``, then write the marker last."""
    if fmt == "zip":
        members = _extract_zip(archive, staging)
    else:
        members = _extract_tar(
            archive, staging, {"tar": "r:", "tar.gz": "r:gz", "tar.xz": "r:xz"}[fmt]
        )
    marker = {
        "archive": archive.name,
        "format": fmt,
        "members": members,
        "archive_bytes": archive.stat().st_size,
    }
    (staging / EXTRACTED_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
