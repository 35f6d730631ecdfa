"""dens.data.download against a real HTTP server on 127.0.0.1 (ThreadingHTTPServer in a thread).

The archives are built here, in memory; the server logs every request (path, Range header,
status, body bytes sent) so a test can tell a resumed transfer from a restarted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from dens.config_files import read_yaml, validate
from dens.data.download.catalog import Archive, get_archive, load_catalog, mirrored_url
from dens.data.download.checksums import verify
from dens.data.download.content import EXTRACTABLE_FORMATS, PLAIN_FORMATS, content_problem
from dens.data.download.errors import (
    ChecksumMismatchError,
    DamagedArchiveError,
    DownloadError,
    MalformedDownloadError,
    UnsafeArchiveError,
    UnverifiedDownloadWarning,
)
from dens.data.download.extract import EXTRACTED_MARKER, extract, is_extracted
from dens.data.download.transfer import download, download_archive, fetch
from dens.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
FAST = {"backoff": 0.0, "progress": False, "timeout": 10.0}


# ----------------------------------------------------------------------------- the server ----


@dataclass
class Served:
    """What the server holds and how it misbehaves; ``log`` records every request."""

    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    supports_range: bool = True
    # path -> byte counts: the n-th request for the path sends at most that many body bytes
    cut_after: dict[str, list[int]] = field(default_factory=dict)
    # path -> statuses answered (one per request) before the file is served
    fail_with: dict[str, list[int]] = field(default_factory=dict)
    # path -> the Location a 302 answers with (any scheme)
    redirects: dict[str, str] = field(default_factory=dict)
    # paths served without Content-Length (the body ends when the connection closes)
    no_length: set[str] = field(default_factory=set)
    log: list[dict[str, object]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def requests_for(self, path: str) -> list[dict[str, object]]:
        return [entry for entry in self.log if entry["path"] == path]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        served = self.server.served
        path = self.path.lstrip("/")
        entry: dict[str, object] = {"path": path, "range": self.headers.get("Range"), "sent": 0}
        served.log.append(entry)
        if served.fail_with.get(path):
            entry["status"] = served.fail_with[path].pop(0)
            self.send_error(entry["status"])
            return
        if path in served.redirects:
            entry["status"] = 302
            self.send_response(302)
            self.send_header("Location", served.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = served.files.get(path)
        if data is None:
            entry["status"] = 404
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", entry["range"] or "")
        if match and served.supports_range:
            start = int(match.group(1))
            if start >= len(data):
                entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            entry["status"] = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            entry["status"] = 200
            self.send_response(200)
        if path not in served.no_length:
            self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if served.cut_after.get(path):
            body = body[: served.cut_after[path].pop(0)]  # then the connection closes
        entry["sent"] = len(body)  # logged first: the client may finish before write returns
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    served: Served


@pytest.fixture
def server() -> Iterator[Served]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.served = Served(port=httpd.server_address[1])
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield httpd.served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------------------ archives ----


def tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    """A tar archive of (name, content) files and ready-made TarInfo entries (links etc.)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, content = member
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in files.items():
            zf.writestr(zipfile.ZipInfo(name), content)
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


GOOD_FILES = {
    "s2ef_demo/s2ef_demo/0.extxyz": b"2\nLattice=...\nCu 0 0 0\nO 0 0 1.8\n" * 50,
    "s2ef_demo/s2ef_demo/0.txt": b"random1,0,-1.25\n" * 40,
    "s2ef_demo/README.md": b"demo archive\n",
}
# Large enough that a cut at a third leaves bytes on both sides of every 1 MiB-chunk read.
BIG = bytes(range(256)) * 4096 + b"tail"
# The shapes config/archives.yaml states for every MD17 npz (dens/data/md17.py reads them).
MD17_ARRAYS = {
    "R": ("frames", "atoms", 3),
    "z": ("atoms",),
    "E": ("frames", 1),
    "F": ("frames", "atoms", 3),
}
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Service unavailable</title></head></html>\n"


def md17_npz(frames: int = 40, atoms: int = 12, drop: str = "", **arrays: np.ndarray) -> bytes:
    """An npz laid out as the sGDML MD17 files (R, z, E [frames, 1], F), ``arrays`` replacing
    some, ``drop`` left out."""
    rng = np.random.default_rng(0)
    content = {
        "R": rng.normal(size=(frames, atoms, 3)),
        "z": np.full(atoms, 6),
        "E": rng.normal(size=(frames, 1)),
        "F": rng.normal(size=(frames, atoms, 3)),
        "theory": np.array("test"),
    } | arrays
    content.pop(drop, None)
    buffer = io.BytesIO()
    np.savez(buffer, **content)
    return buffer.getvalue()


# --------------------------------------------------------------------------------- tests ----


@pytest.mark.integration
@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_good_archive_downloads_verifies_and_extracts(
    server: Served, tmp_path: Path, algorithm: str
) -> None:
    archive = tar_bytes(list(GOOD_FILES.items()))
    server.files["data/s2ef_demo.tar.gz"] = archive
    digest = hashlib.new(algorithm, archive).hexdigest()

    path = download(
        server.url("data/s2ef_demo.tar.gz"),
        tmp_path / "dl" / "s2ef_demo.tar.gz",
        digest,
        algorithm,
        **FAST,
    )

    assert path.read_bytes() == archive
    assert not (tmp_path / "dl" / "s2ef_demo.tar.gz.part").exists()
    out = extract(path, tmp_path / "extracted" / "s2ef_demo")
    for name, content in GOOD_FILES.items():
        assert (out / name).read_bytes() == content
    assert is_extracted(out)
    assert not (tmp_path / "extracted" / "s2ef_demo.partial").exists()
    assert [entry["status"] for entry in server.log] == [200]


@pytest.mark.integration
def test_corrupted_archive_is_caught_naming_file_and_both_digests(
    server: Served, tmp_path: Path
) -> None:
    archive = tar_bytes(list(GOOD_FILES.items()))
    corrupt = bytearray(archive)
    corrupt[len(corrupt) // 2] ^= 0xFF
    server.files["s2ef_demo.tar.gz"] = bytes(corrupt)
    dest = tmp_path / "s2ef_demo.tar.gz"

    with pytest.raises(ChecksumMismatchError) as caught:
        download(server.url("s2ef_demo.tar.gz"), dest, md5(archive), "md5", **FAST)

    message = str(caught.value)
    assert str(dest) in message
    assert md5(archive) in message and md5(bytes(corrupt)) in message
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    kept = dest.with_name(dest.name + ".corrupt")
    assert kept.read_bytes() == bytes(corrupt) and caught.value.moved_to == kept


def test_verify_moves_a_corrupt_file_aside(tmp_path: Path) -> None:
    path = tmp_path / "md17_aspirin.npz"
    path.write_bytes(b"not what was published")

    with pytest.raises(ChecksumMismatchError, match=re.escape(str(path))) as caught:
        verify(path, "0" * 64, "sha256")

    assert caught.value.expected == "0" * 64
    assert caught.value.actual == hashlib.sha256(b"not what was published").hexdigest()
    assert not path.exists()
    assert (tmp_path / "md17_aspirin.npz.corrupt").read_bytes() == b"not what was published"


@pytest.mark.integration
def test_dropped_connection_is_resumed_with_range(server: Served, tmp_path: Path) -> None:
    server.files["big.tar"] = BIG
    cut = len(BIG) // 3
    server.cut_after["big.tar"] = [cut]

    path = download(server.url("big.tar"), tmp_path / "big.tar", md5(BIG), "md5", **FAST)

    assert path.read_bytes() == BIG
    first, second = server.requests_for("big.tar")
    assert (first["range"], first["status"], first["sent"]) == (None, 200, cut)
    assert (second["range"], second["status"]) == (f"bytes={cut}-", 206)
    assert second["sent"] == len(BIG) - cut  # only the missing bytes travelled again


@pytest.mark.integration
def test_part_file_of_a_killed_run_is_resumed(server: Served, tmp_path: Path) -> None:
    server.files["big.tar"] = BIG
    dest = tmp_path / "big.tar"
    done = 100_000
    dest.with_name("big.tar.part").write_bytes(BIG[:done])

    download(server.url("big.tar"), dest, md5(BIG), "md5", **FAST)

    assert dest.read_bytes() == BIG
    (request,) = server.requests_for("big.tar")
    assert (request["range"], request["status"], request["sent"]) == (
        f"bytes={done}-",
        206,
        len(BIG) - done,
    )


@pytest.mark.integration
def test_complete_part_file_is_finished_without_refetching(server: Served, tmp_path: Path) -> None:
    server.files["big.tar"] = BIG
    dest = tmp_path / "big.tar"
    dest.with_name("big.tar.part").write_bytes(BIG)

    download(server.url("big.tar"), dest, md5(BIG), "md5", **FAST)

    assert dest.read_bytes() == BIG
    assert [(entry["status"], entry["sent"]) for entry in server.log] == [(416, 0)]


@pytest.mark.integration
def test_server_without_range_support_restarts_from_zero(server: Served, tmp_path: Path) -> None:
    server.files["big.tar"] = BIG
    server.supports_range = False
    dest = tmp_path / "big.tar"
    dest.with_name("big.tar.part").write_bytes(b"\x00" * 5000)  # stale bytes must not survive

    download(server.url("big.tar"), dest, md5(BIG), "md5", **FAST)

    assert dest.read_bytes() == BIG
    (request,) = server.log
    assert (request["range"], request["status"], request["sent"]) == ("bytes=5000-", 200, len(BIG))


@pytest.mark.integration
def test_404_is_a_clear_error_naming_the_url_and_not_retried(
    server: Served, tmp_path: Path
) -> None:
    url = server.url("opencatalystproject/data/missing.tar")

    with pytest.raises(DownloadError, match="404") as caught:
        download(url, tmp_path / "missing.tar", "0" * 32, "md5", retries=3, **FAST)

    assert url in str(caught.value)
    assert len(server.log) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_transient_errors_are_retried_then_given_up(server: Served, tmp_path: Path) -> None:
    server.files["a.tar"] = BIG
    server.fail_with["a.tar"] = [503, 502]
    download(server.url("a.tar"), tmp_path / "a.tar", md5(BIG), "md5", retries=2, **FAST)
    assert [entry["status"] for entry in server.log] == [503, 502, 200]

    server.fail_with["b.tar"] = [503] * 5
    server.files["b.tar"] = BIG
    with pytest.raises(DownloadError, match="giving up") as caught:
        download(server.url("b.tar"), tmp_path / "b.tar", md5(BIG), "md5", retries=2, **FAST)
    assert server.url("b.tar") in str(caught.value)
    assert len(server.requests_for("b.tar")) == 3


@pytest.mark.integration
def test_existing_verified_file_is_not_downloaded_again(server: Served, tmp_path: Path) -> None:
    server.files["x.tar"] = BIG
    dest = tmp_path / "x.tar"
    download(server.url("x.tar"), dest, md5(BIG), "md5", **FAST)
    download(server.url("x.tar"), dest, md5(BIG), "md5", **FAST)
    assert len(server.log) == 1


@pytest.mark.integration
def test_existing_corrupt_file_is_moved_aside_and_fetched_again(
    server: Served, tmp_path: Path
) -> None:
    server.files["x.tar"] = BIG
    dest = tmp_path / "x.tar"
    dest.write_bytes(b"bit rot")

    download(server.url("x.tar"), dest, md5(BIG), "md5", **FAST)

    assert dest.read_bytes() == BIG
    assert (tmp_path / "x.tar.corrupt").read_bytes() == b"bit rot"
    assert len(server.log) == 1


@pytest.mark.integration
def test_unpublished_checksum_warns_loudly_and_pins_the_first_copy(
    server: Served, tmp_path: Path
) -> None:
    npz = md17_npz()
    server.files["gdml/data/npz/md17_uracil.npz"] = npz
    dest = tmp_path / "md17_uracil.npz"
    # The repository's own catalog entry (its arrays), served from here.
    uracil = load_catalog(root=REPO)["md17_uracil"]
    uracil = dataclasses.replace(uracil, url=server.url("gdml/data/npz/md17_uracil.npz"))

    with pytest.warns(UnverifiedDownloadWarning, match="could NOT be verified"):
        download_archive(uracil, dest, **FAST)
    record = tmp_path / "md17_uracil.npz.sha256"
    assert record.read_text().split()[0] == hashlib.sha256(npz).hexdigest()

    with pytest.warns(UnverifiedDownloadWarning, match="could NOT be verified"):
        download_archive(uracil, dest, **FAST)
    assert len(server.log) == 1  # reused, not fetched again

    dest.write_bytes(npz[:-1] + b"!")  # a later local change is still caught
    with pytest.raises(ChecksumMismatchError, match="recorded"):
        verify(dest, None, "sha256")


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.integration
@pytest.mark.parametrize("target", ["ftp://127.0.0.1/md17_uracil.npz", "file:///etc/passwd"])
def test_redirects_are_followed_only_to_http(server: Served, tmp_path: Path, target: str) -> None:
    npz = md17_npz()
    server.files["real/x.npz"] = npz
    server.redirects["moved/x.npz"] = server.url("real/x.npz")
    with pytest.warns(UnverifiedDownloadWarning):  # an http(s) hop is followed
        download(server.url("moved/x.npz"), tmp_path / "ok" / "x.npz", None, **FAST)
    assert (tmp_path / "ok" / "x.npz").read_bytes() == npz

    # Old behaviour: urllib followed the ftp:// hop (file:// ended in an HTTP 302 error).
    server.log.clear()
    server.redirects["a.npz"] = server.url("b.npz")  # http -> http -> elsewhere: every hop
    server.redirects["b.npz"] = target
    with pytest.raises(DownloadError) as caught:
        download(server.url("a.npz"), tmp_path / "dl" / "a.npz", None, **FAST)
    message = one_line(caught)
    assert message.startswith(f"refusing to download {server.url('a.npz')}: ")
    assert f"redirects to {target}" in message and "only http(s)" in message
    assert [entry["path"] for entry in server.log] == ["a.npz", "b.npz"]  # not retried
    assert list((tmp_path / "dl").iterdir()) == []


@pytest.mark.integration
def test_server_that_truncates_every_attempt_is_never_pinned(
    server: Served, tmp_path: Path
) -> None:
    npz = md17_npz(frames=400)
    server.files["x.npz"] = npz
    server.supports_range = False  # every attempt restarts and is cut again
    server.cut_after["x.npz"] = [len(npz) // 2] * 3
    dest = tmp_path / "x.npz"

    with pytest.raises(DownloadError, match="giving up") as caught:
        download(server.url("x.npz"), dest, None, retries=2, arrays=MD17_ARRAYS, **FAST)

    assert server.url("x.npz") in one_line(caught)
    assert f"connection closed after {len(npz) // 2} of {len(npz)} bytes" in str(caught.value)
    assert not dest.exists() and not (tmp_path / "x.npz.sha256").exists()
    assert len(server.log) == 3


@pytest.mark.integration
@pytest.mark.parametrize(
    ("sized", "problem"),
    [(False, "not a readable npz file (BadZipFile"), (True, "but the catalog states ")],
)
def test_body_without_content_length_is_checked_before_it_is_pinned(
    server: Served, tmp_path: Path, sized: bool, problem: str
) -> None:
    npz = md17_npz()
    size = f"{round(len(npz) / 1024)}K" if sized else None  # as a directory index prints it
    server.files["full.npz"] = server.files["cut.npz"] = npz
    server.no_length.update({"full.npz", "cut.npz"})
    with pytest.warns(UnverifiedDownloadWarning):
        download(server.url("full.npz"), tmp_path / "full.npz", None, size=size, **FAST)
    assert (tmp_path / "full.npz").read_bytes() == npz

    # Cut short without a Content-Length: the client sees an ordinary end of the body.
    server.cut_after["cut.npz"] = [len(npz) // 3]
    with pytest.raises(MalformedDownloadError) as caught:
        download(server.url("cut.npz"), tmp_path / "cut.npz", None, size=size, **FAST)
    message = one_line(caught)
    assert message.startswith(f"{server.url('cut.npz')} did not give the npz file ")
    assert problem in message and "no digest was recorded" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.npz", "full.npz.sha256"]


@pytest.mark.integration
def test_html_error_page_served_with_200_is_never_pinned(server: Served, tmp_path: Path) -> None:
    server.files["gdml/md17_uracil.npz"] = HTML_PAGE
    uracil = dataclasses.replace(
        load_catalog(root=REPO)["md17_uracil"], url=server.url("gdml/md17_uracil.npz")
    )
    with pytest.raises(MalformedDownloadError) as caught:
        download_archive(uracil, tmp_path / "md17_uracil.npz", **FAST)
    message = one_line(caught)
    assert message.startswith(server.url("gdml/md17_uracil.npz"))
    assert "it is an HTML page (" in message and "not a npz file" in message
    assert list(tmp_path.iterdir()) == []

    # A valid npz far smaller than the catalog states is refused as well (md17_aspirin: 193M).
    server.files["gdml/md17_aspirin.npz"] = md17_npz()
    aspirin = dataclasses.replace(
        load_catalog(root=REPO)["md17_aspirin"], url=server.url("gdml/md17_aspirin.npz")
    )
    with pytest.raises(MalformedDownloadError, match=r"but the catalog states 193M \(192500000"):
        download_archive(aspirin, tmp_path / "md17_aspirin.npz", **FAST)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_existing_unrecorded_file_failing_the_check_is_moved_aside_and_fetched_again(
    server: Served, tmp_path: Path
) -> None:
    npz = md17_npz()
    server.files["x.npz"] = npz
    dest = tmp_path / "x.npz"
    dest.write_bytes(HTML_PAGE)  # e.g. saved by hand from a browser; no digest recorded yet

    with pytest.warns(UnverifiedDownloadWarning):
        download(server.url("x.npz"), dest, None, arrays=MD17_ARRAYS, **FAST)

    assert dest.read_bytes() == npz
    assert (tmp_path / "x.npz.corrupt").read_bytes() == HTML_PAGE
    assert (tmp_path / "x.npz.sha256").read_text().split()[0] == hashlib.sha256(npz).hexdigest()


def _truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def _flipped(data: bytes, at: int = 2000) -> bytes:
    """``data`` with the bits of one byte flipped (in R's values: a bit error in transit)."""
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (md17_npz(drop="F"), r"it lacks the arrays \['F'\]"),
        (md17_npz(z=np.full(11, 6)), r"array z has shape \[11\].*atoms is 12 in the arrays"),
        (md17_npz(E=np.zeros(40)), r"array E has shape \[40\], expected \[frames, 1\]"),
        (md17_npz(R=np.zeros((0, 12, 3))), r"array R is empty \(frames = 0\)"),
        (md17_npz(z=np.array([6] * 12, dtype=object)), "array z holds Python objects"),
        (_truncated(md17_npz()), "not a readable npz file"),
        (_flipped(md17_npz()), r"its member 'R\.npy' is corrupt \(CRC mismatch\)"),
        (zip_bytes({"R.npy": b"no magic"}), "not a readable npz file"),
    ],
    ids=["missing-key", "atoms-disagree", "E-flat", "no-frames", "object-array", "truncated",
         "bit-flip", "not-npy"],
)  # fmt: skip
def test_unrecorded_npz_is_checked_for_its_arrays_before_pinning(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "md17_x.npz"
    path.write_bytes(content)

    with pytest.raises(MalformedDownloadError, match=problem) as caught:
        verify(path, None, arrays=MD17_ARRAYS)

    message = one_line(caught)
    assert message.startswith(f"{path} has no published checksum and fails the check")
    assert not path.exists() and (tmp_path / "md17_x.npz.corrupt").read_bytes() == content
    assert not (tmp_path / "md17_x.npz.sha256").exists()


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "tar.xz", "zip"])
def test_unrecorded_archives_need_a_listing_readable_to_the_end(tmp_path: Path, fmt: str) -> None:
    if fmt == "zip":
        good = zip_bytes({**GOOD_FILES, "big.bin": BIG})
    else:
        mode = {"tar": "w", "tar.gz": "w:gz", "tar.xz": "w:xz"}[fmt]
        good = tar_bytes([*GOOD_FILES.items(), ("big.bin", BIG)], mode=mode)
    path = tmp_path / f"a.{fmt}"
    path.write_bytes(good)
    assert content_problem(path, fmt) is None

    trailer = len(good) - 8  # zip: in the end record; gzip/xz: in the stream's check
    if fmt == "tar":  # half of the end-of-archive marker after the last member (big.bin)
        with tarfile.open(fileobj=io.BytesIO(good)) as tar:
            trailer = tar.getmembers()[-1].offset_data + len(BIG) + 512
    for damaged in (_truncated(good), good[:trailer]):  # cut in a member; cut in the trailer
        path.write_bytes(damaged)
        assert content_problem(path, fmt) is not None, len(damaged)
    with pytest.raises(MalformedDownloadError, match=rf"a\.{re.escape(fmt)} has no published"):
        verify(path, None)  # the format is told by the name
    assert not (tmp_path / f"a.{fmt}.sha256").exists()


@pytest.mark.integration
def test_traversal_archive_from_the_server_is_refused(server: Served, tmp_path: Path) -> None:
    evil = tar_bytes([("ok.txt", b"fine"), ("../evil.txt", b"escaped")])
    server.files["evil.tar.gz"] = evil
    path = download(
        server.url("evil.tar.gz"), tmp_path / "dl" / "evil.tar.gz", md5(evil), "md5", **FAST
    )

    with pytest.raises(UnsafeArchiveError, match=r"'\.\./evil\.txt'") as caught:
        extract(path, tmp_path / "out" / "evil")

    assert str(path) in str(caught.value)
    assert not (tmp_path / "out" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert list((tmp_path / "out").iterdir()) == []  # no dest dir, staging removed


@pytest.mark.parametrize(
    ("members", "offender", "reason"),
    [
        ([("/tmp/dens-evil-absolute.txt", b"x")], "/tmp/dens-evil-absolute.txt", "absolute"),
        ([("a/../../evil.txt", b"x")], "a/../../evil.txt", r"'\.\.'"),
        ([link("up", "../../outside")], "up", "pointing outside"),
        ([link("etc", "/etc")], "etc", "absolute path '/etc'"),
        ([("real.txt", b"x"), link("hard", "../real.txt", tarfile.LNKTYPE)], "hard", "outside"),
        ([special("dev", tarfile.CHRTYPE)], "dev", "device or fifo"),
        ([special("pipe", tarfile.FIFOTYPE)], "pipe", "device or fifo"),
    ],
    ids=["absolute", "dotdot", "symlink-out", "symlink-abs", "hardlink-out", "device", "fifo"],
)
def test_unsafe_tar_members_are_refused(
    tmp_path: Path, members: list, offender: str, reason: str
) -> None:
    archive = tmp_path / "bad.tar"
    archive.write_bytes(tar_bytes(members, mode="w"))

    with pytest.raises(UnsafeArchiveError, match=reason) as caught:
        extract(archive, tmp_path / "out")

    assert caught.value.member == offender
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert not Path("/tmp/dens-evil-absolute.txt").exists()


def test_links_inside_the_archive_are_extracted(tmp_path: Path) -> None:
    archive = tmp_path / "links.tar.xz"
    archive.write_bytes(
        tar_bytes(
            [
                ("d/real.txt", b"payload"),
                link("d/soft", "real.txt"),
                link("hard", "d/real.txt", tarfile.LNKTYPE),
            ],
            mode="w:xz",
        )
    )
    out = extract(archive, tmp_path / "out")
    assert (out / "d" / "soft").read_bytes() == b"payload"
    assert (out / "hard").read_bytes() == b"payload"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "C:/evil.txt"])
def test_unsafe_zip_members_are_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "bad.zip"
    archive.write_bytes(zip_bytes({"ok.txt": b"fine", name: b"escaped"}))

    with pytest.raises(UnsafeArchiveError) as caught:
        extract(archive, tmp_path / "out")

    assert caught.value.member == name
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()


def test_zip_archive_extracts(tmp_path: Path) -> None:
    archive = tmp_path / "good.zip"
    archive.write_bytes(zip_bytes(GOOD_FILES))
    out = extract(archive, tmp_path / "out")
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == {
        *GOOD_FILES,
        EXTRACTED_MARKER,
    }


def test_half_extracted_directory_is_never_taken_as_complete(tmp_path: Path) -> None:
    good = tar_bytes(list(GOOD_FILES.items()))
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good[: len(good) // 2])  # e.g. a download cut short, used anyway

    with pytest.raises(DamagedArchiveError, match=r"truncated\.tar\.gz is damaged"):
        extract(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()

    # A directory without the marker (a crash in some other tool, or foreign data) is refused.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "s2ef_demo").mkdir()
    archive = tmp_path / "good.tar.gz"
    archive.write_bytes(good)
    with pytest.raises(FileExistsError, match=re.escape(EXTRACTED_MARKER)):
        extract(archive, tmp_path / "out")
    assert not is_extracted(tmp_path / "out")

    # Leftover staging from a killed run is discarded, not merged.
    (tmp_path / "fresh.partial").mkdir()
    (tmp_path / "fresh.partial" / "stale.txt").write_text("from a killed run")
    out = extract(archive, tmp_path / "fresh")
    assert not (out / "stale.txt").exists() and is_extracted(out)


def test_completed_extraction_is_not_redone(tmp_path: Path) -> None:
    archive = tmp_path / "good.tar"
    archive.write_bytes(tar_bytes(list(GOOD_FILES.items()), mode="w"))
    out = extract(archive, tmp_path / "out")
    readme = out / "s2ef_demo" / "README.md"
    readme.write_text("edited after extraction")

    assert extract(archive, tmp_path / "out") == out
    assert readme.read_text() == "edited after extraction"


def test_npz_is_not_extracted(tmp_path: Path) -> None:
    path = tmp_path / "md17_toluene.npz"
    path.write_bytes(b"PK")
    with pytest.raises(ValueError, match="not extracted"):
        extract(path, tmp_path / "out")


# ---------------------------------------------------------------------------- catalog ----

SCHEMA = REPO / "workflow" / "schemas" / "archives.schema.yaml"


def test_repository_catalog_validates_against_its_schema() -> None:
    validate(read_yaml(REPO / "config" / "archives.yaml"), "archives", "config/archives.yaml", REPO)
    catalog = load_catalog(root=REPO)  # default path: <root>/config/archives.yaml
    assert list(catalog) == list(read_yaml(REPO / "config" / "archives.yaml")["archives"])
    assert catalog == load_catalog(REPO / "config" / "archives.yaml", REPO)


def test_schema_formats_are_the_ones_the_code_handles() -> None:
    schema = read_yaml(SCHEMA)
    formats = schema["$defs"]["archive"]["properties"]["format"]["enum"]
    assert formats == [*EXTRACTABLE_FORMATS, *PLAIN_FORMATS]


def split_names(splits: list[str] | dict[str, str | list[str]]) -> set[str]:
    """Every split of a config/datasets.yaml entry: a list, or roles -> a split or a list."""
    if isinstance(splits, list):
        return set(splits)
    names: set[str] = set()
    for value in splits.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def test_archive_catalog_covers_every_paper_scale_split() -> None:
    catalog = load_catalog(REPO / "config" / "archives.yaml", REPO)
    datasets = yaml.safe_load((REPO / "config" / "datasets.yaml").read_text())["datasets"]

    provided: dict[str, set[str]] = {}
    for archive in catalog.values():
        assert archive.filename and archive.url.endswith(archive.filename)
        for dataset, splits in archive.dataset.items():
            assert dataset in datasets, f"{archive.name}: unknown dataset {dataset}"
            unknown = set(splits) - split_names(datasets[dataset]["splits"])
            assert not unknown, f"{archive.name}: {dataset} has no splits {unknown}"
            if not archive.optional:
                provided.setdefault(dataset, set()).update(splits)
    for dataset, spec in datasets.items():
        assert provided.get(dataset) == split_names(spec["splits"]), dataset

    # Published digests where the owners publish them (OC20/OC22 md5); none for MD17.
    for archive in catalog.values():
        if archive.name.startswith("md17_"):
            assert archive.digest is None and "none published" in archive.checksum_source
            assert archive.arrays == MD17_ARRAYS  # checked before the first digest is recorded
        elif archive.published_checkpoint:  # the DeNS README publishes neither digest nor size
            assert archive.digest is None and "none published" in archive.checksum_source
            assert archive.format == "pt" and archive.download_size is None
        elif not archive.dataset:  # a reference file at a pinned git commit (reference_for)
            assert archive.algorithm == "sha256" and "commit" in archive.checksum_source
        else:
            assert archive.algorithm == "md5" and len(archive.digest or "") == 32
    assert [a.name for a in catalog.values() if a.md_split] == ["oc20_s2ef_md"]
    unsized = [
        a.name
        for a in catalog.values()
        if a.digest is None and not a.download_size and not a.published_checkpoint
    ]
    assert unsized == ["md17_uracil"]  # the one size the sGDML listing copy lacks
    checkpoints = [a.name for a in catalog.values() if a.published_checkpoint]
    assert checkpoints == [
        "eq2_dens_epochs_12_2M",
        "eq2_dens_epochs_30_2M",
        "eq2_dens_allmd",
        "eq2_dens_oc22",
    ]
    models = "https://dl.fbaipublicfiles.com/opencatalystproject/models/2024_07/"
    for name in checkpoints:  # the DeNS README's links: <folder>/<archive name>.pt
        folder = "oc22/s2ef" if name.endswith("oc22") else "oc20/s2ef"
        assert catalog[name].url == f"{models}{folder}/{name}.pt"
    assert catalog["md17_benzene"].filename == "md17_benzene2017.npz"


def test_unknown_archive_names_the_catalog_and_close_matches() -> None:
    catalog = load_catalog(root=REPO)
    assert get_archive(catalog, "md17_uracil") is catalog["md17_uracil"]

    with pytest.raises(ConfigError) as caught:
        get_archive(catalog, "oc20_s2ef_train_2m")

    message = str(caught.value)
    assert message.startswith("config/archives.yaml: unknown archive 'oc20_s2ef_train_2m'.")
    assert "Did you mean oc20_s2ef_train_2M" in message

    defined = rf"unknown archive 'zzz'\. {len(catalog)} archives are defined there"
    with pytest.raises(ConfigError, match=defined) as caught:
        get_archive(catalog, "zzz")
    assert "Did you mean" not in str(caught.value) and "md17_uracil" in str(caught.value)


GOOD_ENTRY = {
    "url": "https://example.org/data/x.tar",
    "format": "tar",
    "checksum": {"algorithm": "md5", "digest": "0" * 32},
    "checksum_source": "test",
    "size": None,
    "dataset": {"oc20-2m": ["train"]},
    "payload": "test",
}


def write_catalog(path: Path, entries: dict[str, dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"archives": entries}, sort_keys=False))
    return path


def test_catalog_entry_is_read_into_an_archive(tmp_path: Path) -> None:
    entry = GOOD_ENTRY | {
        "checksum": {"algorithm": "sha256", "digest": "AB" * 32},
        "md_split": True,
        "frames": {"train": 10},
        "frames_source": "test",
        "notes": "a note",
    }
    catalog = load_catalog(write_catalog(tmp_path / "archives.yaml", {"x": entry}), REPO)
    assert catalog == {
        "x": Archive(
            name="x",
            url="https://example.org/data/x.tar",
            format="tar",
            algorithm="sha256",
            digest="ab" * 32,  # normalised to lower case
            checksum_source="test",
            dataset={"oc20-2m": ("train",)},
            md_split=True,
            optional=False,
        )
    }
    assert catalog["x"].filename == "x.tar"


REMOVED = object()


@pytest.mark.parametrize(
    ("change", "key", "value"),
    [
        ({"payload": REMOVED}, "archives.broken", "'payload' is a required property"),
        ({"md5": "0" * 32}, "archives.broken", "'md5' was unexpected"),
        ({"url": "ftp://example.org/x.tar"}, "archives.broken.url", "ftp://example.org/x.tar"),
        ({"url": "https://example.org/data/"}, "archives.broken.url", "https://example.org/data/"),
        ({"url": 42}, "archives.broken.url", 42),
        ({"format": "rar"}, "archives.broken.format", "rar"),
        (
            {"checksum": {"algorithm": "md5", "digest": "abc"}},
            "archives.broken.checksum.digest",
            "abc",
        ),
        (
            {"checksum": {"algorithm": "sha256", "digest": "0" * 32}},
            "archives.broken.checksum.digest",
            "0" * 32,
        ),
        (
            {"checksum": {"algorithm": "md5", "digest": "g" * 32}},
            "archives.broken.checksum.digest",
            "g" * 32,
        ),
        (
            {"checksum": {"algorithm": "crc32", "digest": "0" * 8}},
            "archives.broken.checksum.algorithm",
            "crc32",
        ),
        ({"checksum": "0" * 32}, "archives.broken.checksum", "0" * 32),
        ({"checksum_source": ""}, "archives.broken.checksum_source", ""),
        ({"checksum_source": "  "}, "archives.broken.checksum_source", "  "),
        ({"dataset": {}}, "archives.broken.dataset", {}),
        ({"dataset": {"oc20-2m": []}}, "archives.broken.dataset.oc20-2m", []),
        ({"dataset": {"oc20-2m": [1]}}, "archives.broken.dataset.oc20-2m.0", 1),
        ({"md_split": "yes"}, "archives.broken.md_split", "yes"),
        ({"optional": 1}, "archives.broken.optional", 1),
        ({"frames": {"train": 10}}, "archives.broken", "'frames_source' is a dependency"),
        ({"size": {"download": "about 3 GB"}}, "archives.broken.size.download", "about 3 GB"),
        ({"size": {"extracted": "17 gigs"}}, "archives.broken.size.extracted", "17 gigs"),
        ({"arrays": {"R": ["frames", 3]}}, "archives.broken.format", "tar"),
        (
            {"url": "https://example.org/x.npz", "format": "npz", "checksum": None},
            "archives.broken",
            "'arrays' is a required property",
        ),
        (
            {"format": "npz", "checksum": None, "arrays": {"R": ["Frames"]}},
            "archives.broken.arrays.R.0",
            "Frames",
        ),
    ],
    ids=[
        "missing-key",
        "unknown-key",
        "ftp-url",
        "url-without-file-name",
        "url-not-a-string",
        "bad-format",
        "short-md5",
        "sha256-of-md5-length",
        "non-hex-digest",
        "unknown-algorithm",
        "checksum-not-a-mapping",
        "empty-checksum-source",
        "blank-checksum-source",
        "empty-dataset",
        "dataset-without-splits",
        "split-not-a-string",
        "md-split-not-bool",
        "optional-not-bool",
        "frames-without-source",
        "size-not-a-size",
        "extracted-size-not-a-size",
        "arrays-of-a-tar",
        "unverified-npz-without-arrays",
        "array-dimension-not-a-name",
    ],
)
def test_catalog_rejects_malformed_entries(
    tmp_path: Path, change: dict, key: str, value: object
) -> None:
    entry = {k: v for k, v in (GOOD_ENTRY | change).items() if v is not REMOVED}
    path = write_catalog(tmp_path / "archives.yaml", {"broken": entry})

    with pytest.raises(ConfigError) as caught:
        load_catalog(path, REPO)

    message = str(caught.value)
    if key == "archives.broken":  # an error on the entry itself: its value is the whole entry
        assert message.startswith(f"{path}: {key}: {entry!r}: ")
        assert str(value) in message
    else:
        assert message.startswith(f"{path}: {key}: {value!r}: ")


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"archive": {}}, "(top level)"),
        ({"archives": {}}, "archives"),
        ({"archives": {"bad.name": GOOD_ENTRY}}, "archives"),
        ({"archives": {"x": "not a mapping"}}, "archives.x"),
    ],
)
def test_catalog_rejects_malformed_documents(tmp_path: Path, document: dict, key: str) -> None:
    path = tmp_path / "archives.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=rf"^{re.escape(f'{path}: {key}: ')}"):
        load_catalog(path, REPO)


def test_catalog_errors_name_the_file_relative_to_the_root(tmp_path: Path) -> None:
    (tmp_path / "workflow").mkdir()
    (tmp_path / "workflow" / "schemas").symlink_to(REPO / "workflow" / "schemas")
    write_catalog(tmp_path / "config" / "archives.yaml", {"x": GOOD_ENTRY | {"format": "7z"}})

    with pytest.raises(ConfigError) as caught:
        load_catalog(root=tmp_path)
    assert str(caught.value).startswith("config/archives.yaml: archives.x.format: '7z': ")

    (tmp_path / "config" / "archives.yaml").write_text("archives: {x: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_catalog(root=tmp_path)
    assert str(tmp_path / "config" / "archives.yaml") in str(caught.value)

    with pytest.raises(ConfigError, match="file not found"):
        load_catalog(tmp_path / "missing.yaml", tmp_path)


@pytest.mark.integration
def test_fetch_downloads_verifies_and_extracts_catalog_archives(
    server: Served, tmp_path: Path
) -> None:
    archive = tar_bytes(list(GOOD_FILES.items()))
    server.files["data/s2ef_demo.tar.gz"] = archive
    server.files["npz/md17_demo.npz"] = md17_npz()
    common = {"checksum_source": "test", "size": None, "payload": "test"}
    path = write_catalog(
        tmp_path / "archives.yaml",
        {
            "demo_tar": {
                "url": server.url("data/s2ef_demo.tar.gz"),
                "format": "tar.gz",
                "checksum": {"algorithm": "md5", "digest": md5(archive)},
                "dataset": {"oc20-2m": ["train"]},
                **common,
            },
            "demo_npz": {
                "url": server.url("npz/md17_demo.npz"),
                "format": "npz",
                "checksum": None,
                "arrays": {key: list(dims) for key, dims in MD17_ARRAYS.items()},
                "dataset": {"md17-uracil": ["train"]},
                **common,
            },
        },
    )
    catalog = load_catalog(path, REPO)
    dl, out = tmp_path / "dl", tmp_path / "x"

    assert fetch(catalog["demo_tar"], dl, out, **FAST) == out / "demo_tar"
    assert is_extracted(out / "demo_tar")
    assert (out / "demo_tar" / "s2ef_demo" / "README.md").read_bytes() == b"demo archive\n"
    with pytest.warns(UnverifiedDownloadWarning):  # npz: downloaded, never extracted
        assert fetch(catalog["demo_npz"], dl, out, **FAST) == dl / "md17_demo.npz"
    assert not (out / "demo_npz").exists()

    # Republished corrupted upstream: the mismatch names the file, the bytes are kept aside.
    server.files["data/s2ef_demo.tar.gz"] = archive[:-1] + b"!"
    (dl / "s2ef_demo.tar.gz").unlink()
    with pytest.raises(ChecksumMismatchError, match="checksum mismatch") as caught:
        fetch(catalog["demo_tar"], dl, None, **FAST)
    assert str(dl / "s2ef_demo.tar.gz") in str(caught.value)
    assert (dl / "s2ef_demo.tar.gz.corrupt").is_file() and not (dl / "s2ef_demo.tar.gz").exists()

    # Without an extraction directory fetch returns the verified download.
    server.files["data/s2ef_demo.tar.gz"] = archive
    assert fetch(catalog["demo_tar"], dl, None, **FAST) == dl / "s2ef_demo.tar.gz"


# ------------------------------------------------------------ published checkpoints (pt) ----


def checkpoint_bytes(**changes: object) -> bytes:
    """A small trainer checkpoint in the ocp / fairchem 1.x layout (state_dict with module.
    prefixes, config, normalizers, EMA), saved by torch.save (zip format)."""
    import torch

    state = {
        "state_dict": {"module.embedding.weight": torch.arange(6.0).reshape(2, 3)},
        "config": {"model": "equiformer_v2_dens", "optim": {"max_epochs": 12}},
        "normalizers": {"energy": {"mean": torch.tensor(0.0), "std": torch.tensor(1.0)}},
        "ema": {"decay": 0.999, "shadow_params": [torch.zeros(2, 3)]},
    }
    state.update(changes)
    state = {key: value for key, value in state.items() if value is not None}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


class NotWeightsOnly:
    """A class a weights-only unpickler refuses to build."""


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (HTML_PAGE, "it is an HTML page"),
        (_truncated(checkpoint_bytes()), r"not a readable pt file \(BadZipFile"),
        (b"just text, no checkpoint\n", r"not a readable pt file \(BadZipFile"),
        (checkpoint_bytes(config=None), r"it lacks \['config'\]"),
        (checkpoint_bytes(extra=NotWeightsOnly()), r"torch.load\(weights_only=True\) refuses"),
    ],
)
def test_unrecorded_checkpoint_is_checked_before_pinning(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    """A published checkpoint without a checksum is pinned only when torch's weights-only loader
    reads it (zip format, every member's CRC) and it holds state_dict and config. Before format
    pt, a checkpoint could not be listed at all (the catalog's formats had no pt)."""
    good = tmp_path / "good.pt"
    good.write_bytes(checkpoint_bytes())
    assert content_problem(good, "pt") is None
    bad = tmp_path / "eq2_dens_oc22.pt"
    bad.write_bytes(content)
    found = content_problem(bad, "pt")
    assert found is not None and re.search(problem, found), found
    with pytest.raises(MalformedDownloadError) as caught:
        verify(bad, None, "sha256")  # the format told by the name
    message = one_line(caught)
    assert message.startswith(f"{bad} has no published checksum") and re.search(problem, message)
    assert not (tmp_path / "eq2_dens_oc22.pt.sha256").exists()


def test_mirrored_url_replaces_scheme_and_host() -> None:
    url = "https://dl.fbaipublicfiles.com/opencatalystproject/models/2024_07/oc22/s2ef/x.pt"
    assert mirrored_url(url, None) == url
    assert mirrored_url(url, "http://127.0.0.1:8080") == (
        "http://127.0.0.1:8080/opencatalystproject/models/2024_07/oc22/s2ef/x.pt"
    )
    assert mirrored_url(url, "https://copy.example.org/fair/") == (
        "https://copy.example.org/fair/opencatalystproject/models/2024_07/oc22/s2ef/x.pt"
    )
    with pytest.raises(ConfigError, match="not an http"):
        mirrored_url(url, "ftp://copy.example.org")


@pytest.mark.integration
def test_checkpoint_from_a_mirror_is_pinned_and_a_changed_one_refused(
    server: Served, tmp_path: Path
) -> None:
    """The first good copy is pinned; after the file is deleted, bytes that changed at the source
    are refused in one line naming the file, and the pin stays. Before, a download without a
    published checksum recorded whatever digest the new body had."""
    catalog = load_catalog(root=REPO)
    archive = catalog["eq2_dens_oc22"]
    path = "opencatalystproject/models/2024_07/oc22/s2ef/eq2_dens_oc22.pt"
    server.files[path] = first = checkpoint_bytes()
    dest = tmp_path / "eq2_dens_oc22.pt"
    mirror = f"http://127.0.0.1:{server.port}"
    with pytest.warns(UnverifiedDownloadWarning):
        download_archive(archive, dest, mirror, **FAST)
    record = tmp_path / "eq2_dens_oc22.pt.sha256"
    assert record.read_text().split()[0] == hashlib.sha256(first).hexdigest()

    dest.unlink()
    server.files[path] = checkpoint_bytes(config={"model": "changed"})
    with pytest.raises(ChecksumMismatchError) as caught:
        download_archive(archive, dest, mirror, **FAST)
    message = one_line(caught)
    assert message.startswith(f"checksum mismatch for {dest} (") and "recorded in" in message
    assert not dest.exists() and record.read_text().split()[0] == hashlib.sha256(first).hexdigest()

    server.files[path] = first  # the pinned bytes again: accepted
    with pytest.warns(UnverifiedDownloadWarning, match="matches the record"):
        download_archive(archive, dest, mirror, **FAST)
    assert dest.read_bytes() == first
