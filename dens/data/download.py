"""Download, verify and extract the paper-scale dataset archives (config/archives.yaml).

Data flow (README.md): download -> verify (checksum) -> extract -> LMDB. This module covers the
first three steps and nothing else: it never executes or imports anything it fetched, and
unpickles nothing but a torch checkpoint's header through torch's weights-only unpickler (which
admits tensors and plain containers only; :func:`content_problem`).
It is a library: the command line is ``dens data download NAME --out FILE`` and
``dens data extract NAME --archive-path FILE --out DIR`` (dens/pipeline/cli.py), which Snakemake's
data rules run.

- :func:`load_catalog` reads config/archives.yaml, validates it against
  workflow/schemas/archives.schema.yaml (a violation raises :class:`dens.errors.ConfigError`
  naming the file, the key path and the value) and returns ``{name: Archive}``;
  :func:`get_archive` looks one up, suggesting close names for an unknown one.

- :func:`download` streams a URL to ``<dest>.part``, resumes an interrupted transfer with an
  HTTP ``Range`` request when the server honours it (and restarts from byte 0 when it does not),
  retries transient failures with exponential backoff, hashes while it writes, and renames the
  part file to ``dest`` only once the digest matches. An existing ``dest`` that verifies is not
  fetched again. Only http(s) is fetched, on every redirect hop: a redirect elsewhere (ftp://,
  file://, data:) is refused. :func:`download_archive` downloads a catalog entry.
- :func:`verify` hashes a file; on a mismatch it moves the file aside to ``<file>.corrupt`` and
  raises :class:`ChecksumMismatchError` naming the file and both digests. With no published
  checksum it warns loudly (:class:`UnverifiedDownloadWarning`) and checks the file against the
  digest recorded the first time it was seen (``<file>.<algorithm>``, trust on first use); a
  later download of such a file (after the copy was deleted or found changed) must give the
  recorded digest again, so a file changed at its source is refused, not pinned anew.
- Before such a first digest is recorded, :func:`content_problem` checks what a checksum cannot:
  the size the catalog states (:func:`size_range`) and the format, read to its end (an npz: a zip
  of ``.npy`` arrays holding the catalog's arrays with consistent shapes; a tar/zip: a listing
  readable to the end; a pt: a zip-format torch checkpoint whose members pass their CRC and
  that ``torch.load(weights_only=True)`` reads, holding ``state_dict`` and ``config``). An
  HTML page, a truncated body or a wrong file is never recorded: it raises
  :class:`MalformedDownloadError` naming the URL (or file) and what was wrong.
- :func:`mirrored_url`: an archive's URL on a mirror (config ``mirror``: a copy of the owners'
  servers, e.g. on a cluster without internet access, or a test's local server); the checksums
  stay the catalog's.
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
import lzma
import math
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
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from dens.atomic_files import file_digest
from dens.config_files import find_root, read_yaml, validate
from dens.errors import ConfigError, DensError

logger = logging.getLogger(__name__)

#: Digest algorithms a catalog may name, with the length of their hex digest.
ALGORITHMS: dict[str, int] = {"md5": 32, "sha256": 64}
#: Archive formats :func:`extract` unpacks.
EXTRACTABLE_FORMATS: tuple[str, ...] = ("tar", "tar.gz", "tar.xz", "zip")
#: Formats of files used as downloaded (no extraction).
PLAIN_FORMATS: tuple[str, ...] = ("npz", "pt")
#: What a published model checkpoint (format pt) must hold before its digest is recorded: the
#: keys of an ocp / fairchem 1.x trainer checkpoint that dens.pipeline.checkpoint_import reads.
CHECKPOINT_KEYS: tuple[str, ...] = ("state_dict", "config")
#: Written into an extracted directory after its last member; its presence means "complete".
EXTRACTED_MARKER = ".dens-extracted.json"
#: A dimension of an npz array in the catalog: a fixed length, or a name all arrays agree on.
Dimension = int | str

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


class MalformedDownloadError(DownloadError):
    """A file without a published checksum failed the size or format check before its digest
    was recorded (an HTML error page, a truncated body, a wrong file); it was not kept."""


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


# ------------------------------------------------------- checks before trust on first use ----

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


class _RefusedRedirect(Exception):
    """A redirect to a URL that is not http(s); ``args``: (the hop's URL, its target)."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to http(s). urllib's own handler also follows ``ftp://`` (and
    rejects ``file://`` only with a 302 HTTPError); this one checks every hop's target first."""

    def http_error_302(
        self,
        req: urllib.request.Request,
        fp: BinaryIO,
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
    ) -> http.client.HTTPResponse | None:
        target = headers.get("location") or headers.get("uri")
        if target is not None:
            target = urllib.parse.urljoin(req.full_url, target)
            if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
                fp.close()
                raise _RefusedRedirect(req.full_url, target)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.build_opener(_HttpOnlyRedirects).open(request, timeout=timeout)
    except _RefusedRedirect as refused:
        hop, target = refused.args
        via = "it" if hop == url else f"its redirect {hop}"
        raise DownloadError(
            f"refusing to download {url}: {via} redirects to {target}; only http(s) is followed"
        ) from None
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
    fmt: str | None = None,
    size: str | None = None,
    arrays: dict[str, tuple[Dimension, ...]] | None = None,
) -> Path:
    """Fetch ``url`` to ``dest`` and verify it; return ``dest``.

    ``expected_checksum`` is the published hex digest (``algorithm``: md5 or sha256), or None
    when nothing is published (then see :func:`verify`): the body must then pass
    :func:`content_problem` for ``fmt`` (default: told by the name of ``dest``, else of the URL),
    the catalog's ``size`` and npz ``arrays`` before its digest is recorded; one that fails (an
    HTML page, a body cut short without a Content-Length, a wrong file) is deleted and
    :class:`MalformedDownloadError` names the URL and the problem. Redirects are followed only
    to http(s) URLs: any other target raises :class:`DownloadError` at once. If ``dest`` already
    exists and verifies,
    nothing is fetched; if it does not verify it is moved to ``<dest>.corrupt`` and fetched
    again. Without a published checksum, a body fetched when a digest is already recorded
    (``<dest>.<algorithm>``) must have that digest: else it is moved to ``<dest>.corrupt`` and
    :class:`ChecksumMismatchError` names the file (the source changed since it was pinned).
    Bytes stream into ``<dest>.part``; a failed or interrupted transfer resumes from the part
    file (HTTP Range), or restarts when the server ignores Range. ``timeout`` (s) bounds
    the connection and every read; up to ``retries`` consecutive failed attempts are retried
    after ``backoff * 2**(n-1)`` s (capped at ``max_backoff``); an attempt that made progress
    resets the count. HTTP errors other than 408/425/429/5xx fail at once.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"only http(s) URLs are downloaded, got {url!r}")
    dest = Path(dest)
    if expected_checksum is not None:
        expected_checksum = normalize_digest(expected_checksum, algorithm)
    elif algorithm not in ALGORITHMS:
        raise ValueError(
            f"unknown checksum algorithm {algorithm!r}; expected one of {list(ALGORITHMS)}"
        )
    else:
        fmt = fmt or _format_of(dest.name, PurePosixPath(urllib.parse.urlsplit(url).path).name)
    dest.parent.mkdir(parents=True, exist_ok=True)

    if dest.exists():
        try:
            verify(dest, expected_checksum, algorithm, fmt=fmt, size=size, arrays=arrays)
        except (ChecksumMismatchError, MalformedDownloadError) as err:
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
    record = _sidecar(dest, algorithm)
    if expected_checksum is None and record.exists():  # pinned by an earlier download
        pinned = normalize_digest(record.read_text().split()[0], algorithm)
        if actual != pinned:
            raise ChecksumMismatchError(
                dest,
                pinned,
                actual,
                algorithm,
                _move_aside(part.path, dest),
                f"{url}; no published checksum: compared with the digest recorded in {record} "
                "at its first download",
            )
        os.replace(part.path, dest)
        _warn_unverified(dest, algorithm, actual, record, first=False)
        return dest
    if expected_checksum is None and (problem := content_problem(part.path, fmt, size, arrays)):
        part.path.unlink()
        raise MalformedDownloadError(
            f"{url} did not give the {fmt} file the catalog describes: {problem}; the "
            f"{part.size} bytes received were deleted and no digest was recorded"
        )
    os.replace(part.path, dest)
    if expected_checksum is None:
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
        (".pt", "pt"),
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
    except (
        tarfile.TarError,
        zipfile.BadZipFile,
        EOFError,
        OSError,
        zlib.error,
        lzma.LZMAError,
    ) as error:
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
    #: ``size.download`` as the catalog states it (e.g. ``193M``), or None when unknown.
    download_size: str | None = None
    #: npz only: array name -> shape (lengths, or dimension names the arrays agree on).
    arrays: dict[str, tuple[Dimension, ...]] | None = None
    #: A model checkpoint the paper's authors published (format pt; config/published.yaml).
    published_checkpoint: bool = False

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
    the working directory. ``root`` (default :func:`dens.config_files.find_root`) is the repository
    root whose workflow/schemas/archives.schema.yaml the document is validated against. A missing
    or malformed file, or a schema violation, raises :class:`dens.errors.ConfigError` naming the
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
            download_size=(entry["size"] or {}).get("download"),
            arrays=(
                {key: tuple(dims) for key, dims in entry["arrays"].items()}
                if "arrays" in entry
                else None
            ),
            published_checkpoint=entry.get("published_checkpoint", False),
        )
    return catalog


def get_archive(catalog: dict[str, Archive], name: str, source: str = CATALOG) -> Archive:
    """The archive called ``name``; an unknown name raises :class:`dens.errors.ConfigError`
    naming it, the catalog file ``source`` and the closest defined names."""
    if name in catalog:
        return catalog[name]
    close = difflib.get_close_matches(name, list(catalog), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"{source}: unknown archive {name!r}.{hint} "
        f"{len(catalog)} archives are defined there: {', '.join(catalog)}"
    )


def mirrored_url(url: str, mirror: str | None) -> str:
    """``url`` on the ``mirror``, an http(s) base URL that replaces its scheme and host (and
    prefixes its path with the mirror's own): ``https://dl.fbaipublicfiles.com/a/b.pt`` on
    ``http://127.0.0.1:8000/copy`` is ``http://127.0.0.1:8000/copy/a/b.pt``. None: ``url``."""
    if mirror is None:
        return url
    base = urllib.parse.urlsplit(mirror)
    if base.scheme not in ("http", "https") or not base.netloc or base.query or base.fragment:
        raise ConfigError(
            f"mirror {mirror!r}: not an http(s) base URL such as http://host:port/path"
        )
    parts = urllib.parse.urlsplit(url)
    path = base.path.rstrip("/") + parts.path
    return urllib.parse.urlunsplit((base.scheme, base.netloc, path, parts.query, ""))


def download_archive(
    archive: Archive,
    dest: str | os.PathLike[str],
    mirror: str | None = None,
    **download_options: float | int | bool,
) -> Path:
    """Download one catalog archive to ``dest`` (:func:`download`), from its URL or the same
    path on ``mirror`` (:func:`mirrored_url`): verified against its published checksum, or,
    where none is published, checked against the catalog's format, download size and npz
    arrays before its digest is recorded. Returns ``dest``."""
    return download(
        mirrored_url(archive.url, mirror),
        dest,
        archive.digest,
        archive.algorithm or "sha256",
        fmt=archive.format,
        size=archive.download_size,
        arrays=archive.arrays,
        **download_options,
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
    path = download_archive(archive, Path(download_dir) / archive.filename, **download_options)
    if extract_dir is None or archive.format not in EXTRACTABLE_FORMATS:
        return path
    return extract(path, Path(extract_dir) / archive.name, archive.format)
