"""Download, verify and extract the paper-scale dataset archives (config/archives.yaml).

Data flow (DESIGN.md): download -> verify (checksum) -> extract -> LMDB. This module covers the
first three steps and nothing else: it never executes, imports or unpickles anything it fetched.

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

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import yaml
from tqdm import tqdm

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


class DownloadError(RuntimeError):
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


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction directory."""

    def __init__(self, archive: Path, member: str, reason: str) -> None:
        self.archive, self.member = archive, member
        super().__init__(f"refusing to extract {archive}: member {member!r} {reason}")


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


_REQUIRED_KEYS = {"url", "format", "checksum", "checksum_source", "size", "dataset", "payload"}
_OPTIONAL_KEYS = {"md_split", "optional", "frames", "frames_source", "notes"}


def _archive_from_entry(name: str, entry: object, catalog: Path) -> Archive:
    where = f"{catalog}: archive {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a mapping, got {type(entry).__name__}")
    missing = _REQUIRED_KEYS - entry.keys()
    unknown = entry.keys() - _REQUIRED_KEYS - _OPTIONAL_KEYS
    if missing or unknown:
        raise ValueError(f"{where}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
    url = entry["url"]
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{where}: url must be an http(s) URL, got {url!r}")
    fmt = entry["format"]
    if fmt not in EXTRACTABLE_FORMATS + PLAIN_FORMATS:
        raise ValueError(
            f"{where}: format {fmt!r} is not one of {EXTRACTABLE_FORMATS + PLAIN_FORMATS}"
        )
    checksum = entry["checksum"]
    if checksum is None:
        algorithm, digest = None, None
    elif isinstance(checksum, dict) and checksum.keys() == {"algorithm", "digest"}:
        algorithm = checksum["algorithm"]
        try:
            digest = normalize_digest(str(checksum["digest"]), algorithm)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
    else:
        raise ValueError(
            f"{where}: checksum must be null or {{algorithm, digest}}, got {checksum!r}"
        )
    source = entry["checksum_source"]
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"{where}: checksum_source must say where the checksum was published")
    dataset = entry["dataset"]
    if (
        not isinstance(dataset, dict)
        or not dataset
        or not all(
            isinstance(splits, list) and splits and all(isinstance(s, str) for s in splits)
            for splits in dataset.values()
        )
    ):
        raise ValueError(
            f"{where}: dataset must map dataset names to lists of splits, got {dataset!r}"
        )
    flags = {key: entry.get(key, False) for key in ("md_split", "optional")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {key} must be true or false, got {value!r}")
    return Archive(
        name=name,
        url=url,
        format=fmt,
        algorithm=algorithm,
        digest=digest,
        checksum_source=source,
        dataset={key: tuple(splits) for key, splits in dataset.items()},
        **flags,
    )


def load_catalog(path: str | os.PathLike[str]) -> dict[str, Archive]:
    """Read and validate an archive catalog (config/archives.yaml) -> {name: Archive}."""
    path = Path(path)
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict) or not isinstance(document.get("archives"), dict):
        raise ValueError(f"{path}: expected a top-level mapping 'archives'")
    return {
        name: _archive_from_entry(name, entry, path) for name, entry in document["archives"].items()
    }


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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dens.data.download``: fetch catalog archives by name."""
    parser = argparse.ArgumentParser(prog="python -m dens.data.download", description=main.__doc__)
    parser.add_argument("names", nargs="*", help="archive names (default: list them)")
    parser.add_argument("--catalog", default="config/archives.yaml", type=Path)
    parser.add_argument("--download-dir", type=Path, help="where archives are saved")
    parser.add_argument("--extract-dir", type=Path, help="extract into EXTRACT_DIR/<name>")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    catalog = load_catalog(args.catalog)
    if not args.names:
        for archive in catalog.values():
            checksum = f"{archive.algorithm} {archive.digest}" if archive.digest else "UNVERIFIED"
            print(f"{archive.name}\t{archive.url}\t{checksum}")
        return 0
    unknown = [name for name in args.names if name not in catalog]
    if unknown:
        parser.error(f"unknown archive(s) {unknown}; known: {sorted(catalog)}")
    if args.download_dir is None:
        parser.error("--download-dir is required to fetch archives")
    try:
        for name in args.names:
            result = fetch(
                catalog[name], args.download_dir, args.extract_dir, progress=not args.no_progress
            )
            print(result)
    except (DownloadError, UnsafeArchiveError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
