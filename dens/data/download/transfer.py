"""Fetching: stream an http(s) URL to ``<dest>.part`` with resume, retries and http(s)-only
redirects, then verify it before renaming it into place.
"""

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from dens.data.disk_space import require_download_space
from dens.data.download.catalog import Archive, mirrored_url
from dens.data.download.checksums import (
    ALGORITHMS,
    _move_aside,
    _sidecar,
    _warn_unverified,
    normalize_digest,
    verify,
)
from dens.data.download.content import (
    _CHUNK,
    EXTRACTABLE_FORMATS,
    Dimension,
    _format_of,
    content_problem,
)
from dens.data.download.errors import ChecksumMismatchError, DownloadError, MalformedDownloadError
from dens.data.download.extract import extract

logger = logging.getLogger(__name__)

_USER_AGENT = "dens-downloader/0.1 (+https://github.com/atomicarchitects/DeNS reproduction)"
# HTTP statuses worth another attempt; every other 4xx is final.
_TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class _TransientError(Exception):
    """A failure another attempt may cure (dropped connection, timeout, HTTP 5xx)."""


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
    resets the count. HTTP errors other than 408/425/429/5xx fail at once. Before anything is
    written, a ``size`` (less a part file's bytes) that does not fit in ``dest``'s folder raises
    :class:`dens.errors.DiskError` (dens.data.disk_space); with no ``size`` a warning says so.
    """
    expected_checksum, fmt = _check_request(url, dest, expected_checksum, algorithm, fmt)
    dest = Path(dest)
    if dest.exists():
        try:
            verify(dest, expected_checksum, algorithm, fmt=fmt, size=size, arrays=arrays)
        except (ChecksumMismatchError, MalformedDownloadError) as err:
            logger.warning("%s; downloading it again", err)
        else:
            logger.info("%s already present and verified; not downloading", dest)
            return dest
    require_download_space(dest, size)  # before a byte or a folder is written
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _PartFile(dest.with_name(dest.name + ".part"), algorithm)
    retry = _Retry(retries, backoff, max_backoff)
    _transfer(url, dest, part, retry, timeout=timeout, chunk_size=chunk_size, progress=progress)
    return _keep(url, dest, part, expected_checksum, fmt=fmt, size=size, arrays=arrays)


def _check_request(
    url: str,
    dest: str | os.PathLike[str],
    expected_checksum: str | None,
    algorithm: str,
    fmt: str | None,
) -> tuple[str | None, str | None]:
    """Refuse a URL that is not http(s) and an unknown algorithm; return the normalized
    published digest and, where none is published, the format to check (told by the names of
    ``dest`` and the URL unless given)."""
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
    return expected_checksum, fmt


@dataclass(frozen=True)
class _Retry:
    """How many failed attempts in a row are retried, and the backoff between them (s)."""

    retries: int
    backoff: float
    max_backoff: float


def _transfer(
    url: str,
    dest: Path,
    part: _PartFile,
    retry: _Retry,
    *,
    timeout: float,
    chunk_size: int,
    progress: bool,
) -> None:
    """Fill ``part`` with the whole body of ``url``, retrying transient failures (an attempt
    that made progress resets the count) with exponential backoff."""
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
                if failures > retry.retries:
                    raise DownloadError(
                        f"giving up on {url} after {failures} failed attempts in a row: {err} "
                        f"({part.size} bytes kept in {part.path} for a later resume)"
                    ) from err
                delay = min(retry.backoff * 2 ** (failures - 1), retry.max_backoff)
                logger.warning("%s: %s; retrying in %.1f s", url, err, delay)
                time.sleep(delay)


def _keep(
    url: str,
    dest: Path,
    part: _PartFile,
    expected_checksum: str | None,
    *,
    fmt: str | None,
    size: str | None,
    arrays: dict[str, tuple[Dimension, ...]] | None,
) -> Path:
    """Rename the complete ``part`` to ``dest`` once its digest matches the published one, the
    one recorded at an earlier download, or (first download without a published checksum) once
    it passes :func:`content_problem`, then record its digest. Returns ``dest``."""
    algorithm = part.algorithm
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
        _warn_unverified(dest, algorithm, actual, record, first=False, stacklevel=4)
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
        _warn_unverified(dest, algorithm, actual, record, first=True, stacklevel=4)
    return dest


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
    return extract(path, Path(extract_dir) / archive.name, archive.format, archive.extracted_size)
