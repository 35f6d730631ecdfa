"""Checksums: a file's digest against the published one, or against the digest recorded the first
time it was seen (trust on first use, after :func:`dens.data.download.content.content_problem`).
"""

import logging
import os
import re
import warnings
from pathlib import Path

from dens.atomic_files import file_digest
from dens.data.download.content import Dimension, _format_of, content_problem
from dens.data.download.errors import (
    ChecksumMismatchError,
    MalformedDownloadError,
    UnverifiedDownloadWarning,
)

logger = logging.getLogger(__name__)

#: Digest algorithms a catalog may name, with the length of their hex digest.
ALGORITHMS: dict[str, int] = {"md5": 32, "sha256": 64}


def normalize_digest(digest: str, algorithm: str) -> str:
    """Lower-case hex ``digest`` after checking it has the length ``algorithm`` produces."""
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"unknown checksum algorithm {algorithm!r}; expected one of {list(ALGORITHMS)}"
        )
    value = digest.strip().lower()
    if not re.fullmatch(rf"[0-9a-f]{{{ALGORITHMS[algorithm]}}}", value):
        raise ValueError(
            f"{digest!r} is not a {algorithm} hex digest ({ALGORITHMS[algorithm]} hex characters)"
        )
    return value


def _sidecar(path: Path, algorithm: str) -> Path:
    return path.with_name(f"{path.name}.{algorithm}")


def _move_aside(path: Path, named: Path) -> Path:
    corrupt = named.with_name(named.name + ".corrupt")
    os.replace(path, corrupt)
    return corrupt


def _warn_unverified(
    path: Path, algorithm: str, digest: str, record: Path, first: bool, stacklevel: int = 3
) -> None:
    """Log and warn that ``path`` could not be verified; the warning names the caller of
    :func:`verify` or :func:`dens.data.download.transfer.download` (``stacklevel``)."""
    what = "recorded" if first else "matches the record"
    message = (
        f"UNVERIFIED: {path} has no published checksum, so its integrity could NOT be verified "
        f"against the dataset owners; its {algorithm} {digest} {what} in {record}"
    )
    logger.warning(message)
    warnings.warn(message, UnverifiedDownloadWarning, stacklevel=stacklevel)


def verify(
    path: str | os.PathLike[str],
    checksum: str | None,
    algorithm: str = "sha256",
    *,
    fmt: str | None = None,
    size: str | None = None,
    arrays: dict[str, tuple[Dimension, ...]] | None = None,
) -> str:
    """Check ``path`` against ``checksum`` and return its actual hex digest.

    On a mismatch the file is moved to ``<path>.corrupt`` (so nothing silently reuses it) and
    :class:`ChecksumMismatchError` is raised. With ``checksum=None`` (nothing published) the
    digest recorded in ``<path>.<algorithm>`` the first time is the reference instead, and an
    :class:`UnverifiedDownloadWarning` says loudly that the file could not be verified. Before
    that first record the file must pass :func:`content_problem` (``fmt``, default: told by the
    file name; the catalog's ``size`` and npz ``arrays``); one that fails is moved to
    ``<path>.corrupt`` and :class:`MalformedDownloadError` is raised.
    """
    path = Path(path)
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"unknown checksum algorithm {algorithm!r}; expected one of {list(ALGORITHMS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"cannot verify {path}: no such file")
    record = _sidecar(path, algorithm)
    if checksum is None:
        actual = file_digest(path, algorithm)
        if not record.exists():
            if problem := content_problem(path, fmt or _format_of(path.name), size, arrays):
                moved = _move_aside(path, path)
                raise MalformedDownloadError(
                    f"{path} has no published checksum and fails the check before its digest is "
                    f"recorded: {problem}; it was moved to {moved}"
                )
            record.write_text(f"{actual}  {path.name}\n")
            _warn_unverified(path, algorithm, actual, record, first=True)
            return actual
        expected = normalize_digest(record.read_text().split()[0], algorithm)
        source = f"no published checksum; compared with the digest recorded in {record}"
    else:
        expected = normalize_digest(checksum, algorithm)
        actual = file_digest(path, algorithm)
        source = "published checksum"
    if actual != expected:
        raise ChecksumMismatchError(
            path, expected, actual, algorithm, _move_aside(path, path), source
        )
    if checksum is None:
        _warn_unverified(path, algorithm, actual, record, first=False)
    return actual
