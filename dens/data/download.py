"""Download, verify and extract the paper-scale dataset archives (config/archives.yaml).

Data flow (README.md): download -> verify (checksum) -> extract -> LMDB. This module covers the
first three steps and nothing else: it never executes, imports or unpickles anything it fetched.
It is a library: the command line is ``dens data download NAME --out FILE`` and
``dens data extract NAME --archive-path FILE --out DIR`` (dens/cli.py), which Snakemake's data
rules run.

- :func:`load_catalog` reads config/archives.yaml, validates it against
  workflow/schemas/archives.schema.yaml (a violation raises :class:`dens.config.ConfigError`
  naming the file, the key path and the value) and returns ``{name: Archive}``;
  :func:`get_archive` looks one up, suggesting close names for an unknown one.

- :func:`download` streams a URL to ``<dest>.part``, resumes an interrupted transfer with an
  HTTP ``Range`` request when the server honours it (and restarts from byte 0 when it does not),
  retries transient failures with exponential backoff, hashes while it writes, and renames the
  part file to ``dest`` only once the digest matches. An existing ``dest`` that verifies is not
  fetched again.
- :func:`verify` hashes a file; on a mismatch it moves the file aside to ``<file>.corrupt`` and
  raises :class:`ChecksumMismatchError` naming the file and both digests. With no published
  checksum it warns loudly (:class:`UnverifiedDownloadWarning`) and checks the file against the
  digest recorded the first time it was seen (``<file>.<algorithm>``, trust on first use).
- :func:`extract` unpacks tar / tar.gz / tar.xz / zip into a staging directory, refusing members
  that would land outside it (``..``, absolute paths, links pointing outside, device files), and
  writes the completion marker last before renaming the staging directory into place, so a
  half-extracted directory is never taken as complete.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from dens.config import ConfigError, find_root, read_yaml, validate
from dens.errors import DensError

logger = logging.getLogger(__name__)

#: Digest algorithms a catalog may name, with the length of their hex digest.
ALGORITHMS: dict[str, int] = {"md5": 32, "sha256": 64}
#: Archive formats :func:`extract` unpacks.
EXTRACTABLE_FORMATS: tuple[str, ...] = ("tar", "tar.gz", "tar.xz", "zip")
#: Formats of files used as downloaded (no extraction).
PLAIN_FORMATS: tuple[str, ...] = ("npz",)
#: Written into an extracted directory after its last member; its presence means "complete".
EXTRACTED_MARKER = ".dens-extracted.json"

_USER_AGENT = "dens-downloader/0.1 (+https://github.com/atomicarchitects/DeNS reproduction)"
# HTTP statuses worth another attempt; every other 4xx is final.
_TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20
_TAR_FILTER: dict[str, str] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class DownloadError(DensError, RuntimeError):
    """A URL could not be fetched (the message names the URL)."""


class ChecksumMismatchError(DownloadError):
    """A file's digest differs from the expected one.

    Attributes: ``path`` (the file as it was named), ``expected``, ``actual``, ``algorithm`` and
    ``moved_to`` (where the corrupt bytes were kept for inspection).
    """

    def __init__(
        self, path: Path, expected: str, actual: str, algorithm: str, moved_to: Path, source: str
    ) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        self.algorithm, self.moved_to = algorithm, moved_to
        super().__init__(
            f"checksum mismatch for {path} ({source}): expected {algorithm} {expected}, "
            f"got {actual}; the corrupt file was moved to {moved_to} and will not be reused"
        )


class UnsafeArchiveError(DensError, ValueError):
    """An archive member would be written outside the extraction directory."""

    def __init__(self, archive: Path, member: str, reason: str) -> None:
        self.archive, self.member = archive, member
        super().__init__(f"refusing to extract {archive}: member {member!r} {reason}")


class DamagedArchiveError(DownloadError):
    """An archive could not be read while extracting (truncated or corrupt); nothing was
    extracted."""


class UnverifiedDownloadWarning(UserWarning):
    """A file was used without a published checksum to verify it against."""


class _TransientError(Exception):
    """A failure another attempt may cure (dropped connection, timeout, HTTP 5xx)."""


# ------------------------------------------------------------------------------ checksums ----


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


def file_digest(path: str | os.PathLike[str], algorithm: str) -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            hasher.update(block)
    return hasher.hexdigest()


def _sidecar(path: Path, algorithm: str) -> Path:
    return path.with_name(f"{path.name}.{algorithm}")


def _move_aside(path: Path, named: Path) -> Path:
    corrupt = named.with_name(named.name + ".corrupt")
    os.replace(path, corrupt)
    return corrupt


def _warn_unverified(path: Path, algorithm: str, digest: str, record: Path, first: bool) -> None:
    what = "recorded" if first else "matches the record"
    message = (
        f"UNVERIFIED: {path} has no published checksum, so its integrity could NOT be verified "
        f"against the dataset owners; its {algorithm} {digest} {what} in {record}"
    )
    logger.warning(message)
    warnings.warn(message, UnverifiedDownloadWarning, stacklevel=3)


def verify(path: str | os.PathLike[str], checksum: str | None, algorithm: str = "sha256") -> str:
    """Check ``path`` against ``checksum`` and return its actual hex digest.

    On a mismatch the file is moved to ``<path>.corrupt`` (so nothing silently reuses it) and
    :class:`ChecksumMismatchError` is raised. With ``checksum=None`` (nothing published) the
    digest recorded in ``<path>.<algorithm>`` the first time is the reference instead, and an
    :class:`UnverifiedDownloadWarning` says loudly that the file could not be verified.
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


# ------------------------------------------------------------------------------- download ----


class _PartFile:
    """The ``.part`` file of a download and a running hash of exactly the bytes it holds."""

    def __init__(self, path: Path, algorithm: str) -> None:
        self.path, self.algorithm = path, algorithm
        self.hasher = hashlib.new(algorithm)
        self.size = 0
        if path.exists():
            logger.info("hashing %s (%d bytes) to resume it", path, path.stat().st_size)
            with path.open("rb") as fh:
                while block := fh.read(_CHUNK):
                    self.hasher.update(block)
                    self.size += len(block)

    def restart(self) -> None:
        self.path.write_bytes(b"")
        self.hasher = hashlib.new(self.algorithm)
        self.size = 0

    def append_from(self, stream: BinaryIO, chunk_size: int, bar: tqdm) -> None:
        with self.path.open("ab") as fh:
            while chunk := stream.read(chunk_size):
                fh.write(chunk)
                self.hasher.update(chunk)
                self.size += len(chunk)
                bar.update(len(chunk))


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes START-END/TOTAL`` (or ``bytes */TOTAL``) -> (start, end, total), None if absent."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value or "")
    if match is None:
        return None, None, None
    start, end, total = match.groups()
    return (
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(total) if total not in (None, "*") else None,
    )


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code in _TRANSIENT_HTTP:
            raise _TransientError(f"HTTP {err.code} {err.reason}") from err
        if err.code == 416 and offset:
            raise  # handled by the caller: the part file may already be complete
        raise DownloadError(f"HTTP {err.code} {err.reason} for {url}") from err
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise _TransientError(f"{type(err).__name__}: {err}") from err


def _transfer_once(url: str, part: _PartFile, timeout: float, chunk_size: int, bar: tqdm) -> None:
    """One HTTP request continuing ``part``; returns when the body is complete.

    Raises :class:`_TransientError` when the connection broke or the server answered a way that
    calls for another request (the part file then holds every byte received so far).
    """
    offset = part.size
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as err:  # 416 Range Not Satisfiable on a resume
        _, _, total = _parse_content_range(err.headers.get("Content-Range"))
        if total == offset:
            return  # the previous run had received every byte already
        logger.warning("%s: server refused to resume at byte %d; restarting", url, offset)
        part.restart()
        raise _TransientError("range not satisfiable; restarted from byte 0") from err
    with response:
        if response.status == 206:
            start, end, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset or end is None:
                part.restart()
                raise _TransientError(
                    f"server resumed at byte {start} instead of {offset}; restarted from byte 0"
                )
            expected_size = total if total is not None else end + 1
        elif response.status == 200:
            if offset:
                logger.warning("%s: server ignores Range requests; restarting from byte 0", url)
                part.restart()
            length = response.headers.get("Content-Length")
            expected_size = int(length) if length is not None else None
        else:
            raise DownloadError(f"unexpected HTTP status {response.status} for {url}")
        bar.reset(total=expected_size)
        bar.update(part.size)
        try:
            part.append_from(response, chunk_size, bar)
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
            raise _TransientError(f"{type(err).__name__}: {err}") from err
    if expected_size is None or part.size == expected_size:
        return
    if part.size > expected_size:
        part.restart()
        raise _TransientError(f"received more than the announced {expected_size} bytes")
    raise _TransientError(f"connection closed after {part.size} of {expected_size} bytes")


def download(
    url: str,
    dest: str | os.PathLike[str],
    expected_checksum: str | None,
    algorithm: str = "sha256",
    *,
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 2.0,
    max_backoff: float = 120.0,
    chunk_size: int = _CHUNK,
    progress: bool = True,
) -> Path:
    """Fetch ``url`` to ``dest`` and verify it; return ``dest``.

    ``expected_checksum`` is the published hex digest (``algorithm``: md5 or sha256), or None
    when nothing is published (then see :func:`verify`). If ``dest`` already exists and verifies,
    nothing is fetched; if it does not verify it is moved to ``<dest>.corrupt`` and fetched
    again. Bytes stream into ``<dest>.part``; a failed or interrupted transfer resumes from the
    part file (HTTP Range), or restarts when the server ignores Range. ``timeout`` (s) bounds
    the connection and every read; up to ``retries`` consecutive failed attempts are retried
    after ``backoff * 2**(n-1)`` s (capped at ``max_backoff``); an attempt that made progress
    resets the count. HTTP errors other than 408/425/429/5xx fail at once.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"only http(s) URLs are downloaded, got {url!r}")
    if expected_checksum is not None:
        expected_checksum = normalize_digest(expected_checksum, algorithm)
    elif algorithm not in ALGORITHMS:
        raise ValueError(
            f"unknown checksum algorithm {algorithm!r}; expected one of {list(ALGORITHMS)}"
        )
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)

    if dest.exists():
        try:
            verify(dest, expected_checksum, algorithm)
        except ChecksumMismatchError as err:
            logger.warning("%s; downloading it again", err)
        else:
            logger.info("%s already present and verified; not downloading", dest)
            return dest

    part = _PartFile(dest.with_name(dest.name + ".part"), algorithm)
    failures = 0
    with tqdm(
        desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress
    ) as bar:
        while True:
            before = part.size
            try:
                _transfer_once(url, part, timeout, chunk_size, bar)
                break
            except _TransientError as err:
                failures = 1 if part.size > before else failures + 1
                if failures > retries:
                    raise DownloadError(
                        f"giving up on {url} after {failures} failed attempts in a row: {err} "
                        f"({part.size} bytes kept in {part.path} for a later resume)"
                    ) from err
                delay = min(backoff * 2 ** (failures - 1), max_backoff)
                logger.warning("%s: %s; retrying in %.1f s", url, err, delay)
                time.sleep(delay)

    actual = part.hasher.hexdigest()
    if expected_checksum is not None and actual != expected_checksum:
        raise ChecksumMismatchError(
            dest, expected_checksum, actual, algorithm, _move_aside(part.path, dest), url
        )
    os.replace(part.path, dest)
    if expected_checksum is None:
        record = _sidecar(dest, algorithm)
        record.write_text(f"{actual}  {dest.name}\n")
        _warn_unverified(dest, algorithm, actual, record, first=True)
    return dest


# -------------------------------------------------------------------------------- extract ----


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
    ):
        if lowered.endswith(suffix):
            return fmt
    raise ValueError(f"cannot tell the archive format of {name!r} from its name")


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
    archive: str | os.PathLike[str], dest_dir: str | os.PathLike[str], fmt: str | None = None
) -> Path:
    """Unpack ``archive`` (tar, tar.gz, tar.xz or zip) into ``dest_dir`` and return it.

    Members go into the sibling ``<dest_dir>.partial`` (emptied first); every member is checked
    before it is written, and a member with an absolute path, a ``..`` component, a link
    pointing outside, or a device/fifo type raises :class:`UnsafeArchiveError` (the staging
    directory is removed). The marker :data:`EXTRACTED_MARKER` is written last, then the
    staging directory is renamed to ``dest_dir``. A ``dest_dir`` that already has the marker
    is returned as is; an empty one is replaced; a non-empty one without the marker is an error.
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
    if dest_dir.exists():
        if dest_dir.is_dir() and not any(dest_dir.iterdir()):
            dest_dir.rmdir()
        else:
            raise FileExistsError(
                f"{dest_dir} exists but has no completion marker {EXTRACTED_MARKER}: it is a "
                f"half-finished or foreign extraction; remove it to extract {archive} again"
            )
    staging = dest_dir.with_name(dest_dir.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
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
        staging.rename(dest_dir)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
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


# -------------------------------------------------------------------------------- catalog ----


@dataclass(frozen=True)
class Archive:
    """One entry of config/archives.yaml (see the field list at the top of that file)."""

    name: str
    url: str
    format: str
    algorithm: str | None
    digest: str | None
    checksum_source: str
    dataset: dict[str, tuple[str, ...]]
    md_split: bool = False
    optional: bool = False

    @property
    def filename(self) -> str:
        """File name the archive is saved under (the last component of its URL)."""
        return PurePosixPath(urllib.parse.urlsplit(self.url).path).name


#: The catalog, relative to the repository root (schema: workflow/schemas/archives.schema.yaml).
CATALOG = "config/archives.yaml"


def load_catalog(
    path: str | os.PathLike[str] | None = None, root: str | os.PathLike[str] | None = None
) -> dict[str, Archive]:
    """Read and validate an archive catalog -> ``{name: Archive}`` in file order.

    ``path`` defaults to ``<root>/config/archives.yaml``; a relative ``path`` is read relative to
    the working directory. ``root`` (default :func:`dens.config.find_root`) is the repository
    root whose workflow/schemas/archives.schema.yaml the document is validated against. A missing
    or malformed file, or a schema violation, raises :class:`dens.config.ConfigError` naming the
    file (relative to ``root`` when inside it), the key path and the offending value.
    """
    root = find_root() if root is None else Path(root)
    path = root / CATALOG if path is None else Path(path)
    try:
        source = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        source = str(path)
    document = read_yaml(path)
    validate(document, "archives", source, root)
    catalog: dict[str, Archive] = {}
    for name, entry in document["archives"].items():
        algorithm = digest = None
        if (checksum := entry["checksum"]) is not None:  # the schema checked it: lower-case it
            algorithm = checksum["algorithm"]
            digest = normalize_digest(checksum["digest"], algorithm)
        catalog[name] = Archive(
            name=name,
            url=entry["url"],
            format=entry["format"],
            algorithm=algorithm,
            digest=digest,
            checksum_source=entry["checksum_source"],
            dataset={d: tuple(splits) for d, splits in entry.get("dataset", {}).items()},
            md_split=entry.get("md_split", False),
            optional=entry.get("optional", False),
        )
    return catalog


def get_archive(catalog: dict[str, Archive], name: str, source: str = CATALOG) -> Archive:
    """The archive called ``name``; an unknown name raises :class:`dens.config.ConfigError`
    naming it, the catalog file ``source`` and the closest defined names."""
    if name in catalog:
        return catalog[name]
    close = difflib.get_close_matches(name, list(catalog), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"{source}: unknown archive {name!r}.{hint} "
        f"{len(catalog)} archives are defined there: {', '.join(catalog)}"
    )


def fetch(
    archive: Archive,
    download_dir: str | os.PathLike[str],
    extract_dir: str | os.PathLike[str] | None = None,
    **download_options: float | int | bool,
) -> Path:
    """Download and verify one catalog archive; extract it into ``extract_dir/<name>`` if given.

    Returns the extracted directory, or the downloaded file when ``extract_dir`` is None or the
    format is not extracted (npz). ``download_options`` go to :func:`download`.
    """
    path = download(
        archive.url,
        Path(download_dir) / archive.filename,
        archive.digest,
        archive.algorithm or "sha256",
        **download_options,
    )
    if extract_dir is None or archive.format not in EXTRACTABLE_FORMATS:
        return path
    return extract(path, Path(extract_dir) / archive.name, archive.format)
