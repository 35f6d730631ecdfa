"""Disk first (dens.data.disk_space): a download, an extraction or a conversion whose catalog size
does not fit in its folder stops in one line naming the folder, the space needed and the space
free, before it writes anything (not even its folder) or, for a download, asks the server for a
byte. Folders that are too small are real tmpfs mounts of a known size (root only, else skipped,
as in tests/test_disk_errors.py); downloads come from a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from test_disk_errors import dens, one_error_line
from test_download import FAST, Served, tar_bytes

from dens.atomic_files import human_size
from dens.data.disk_space import (
    ASELMDB_BYTES_PER_FRAME,
    REMEDY,
    SAFETY_MARGIN,
    require_conversion_space,
    require_free_space,
)
from dens.data.download.content import size_range
from dens.data.download.extract import EXTRACTED_MARKER, extract
from dens.data.download.transfer import download
from dens.errors import DiskError

LOGGER = "dens.data.disk_space"
MiB = 1024**2


def free(folder: Path) -> str:
    return human_size(shutil.disk_usage(folder).free)


def refusal(folder: Path, what: str, need: int, basis: str, free_bytes: int) -> str:
    """The message of require_free_space, spelled out."""
    return (
        f"{folder}: {what} needs {human_size(need + SAFETY_MARGIN)} ({basis}, plus a 64.0 MiB "
        f"margin), {human_size(free_bytes)} free there; {REMEDY}"
    )


def test_a_folder_with_enough_space_passes_and_one_byte_more_is_refused(
    tmpfs: Callable[[str], Path],
) -> None:
    fs = tmpfs("72m")
    room = shutil.disk_usage(fs).free
    assert room == 72 * MiB
    require_free_space(fs / "not-yet", room - SAFETY_MARGIN, "writing x", "a test")  # fits
    with pytest.raises(DiskError) as error:
        require_free_space(fs / "not-yet", room - SAFETY_MARGIN + 1, "writing x", "a test")
    assert str(error.value) == (
        f"{fs}/not-yet: writing x needs 72.0 MiB (a test, plus a 64.0 MiB margin), 72.0 MiB free "
        f"there; {REMEDY}"
    )
    assert not (fs / "not-yet").exists()


def test_a_download_larger_than_its_folder_is_refused_before_any_request(
    server: Served, tmpfs: Callable[[str], Path]
) -> None:
    data = os.urandom(3000)
    server.files["d/x.tar"] = data
    fs = tmpfs("8m")
    dest = fs / "downloads" / "x.tar"
    with pytest.raises(DiskError) as error:
        download(
            server.url("d/x.tar"), dest, hashlib.md5(data).hexdigest(), "md5", size="9M", **FAST
        )
    need = size_range("9M")[1]
    assert str(error.value) == refusal(
        dest.parent, "downloading x.tar", need, "config/archives.yaml states 9M", 8 * MiB
    )
    assert server.log == [] and list(fs.iterdir()) == []  # no request, no folder, no byte


def test_a_resumable_part_file_counts_as_downloaded(
    server: Served, tmpfs: Callable[[str], Path]
) -> None:
    """7.9M stands for up to 7.95 MiB: with the 64 MiB margin it fits the 72 MiB tmpfs only
    because the 1 MiB already in x.tar.part is not needed again."""
    data = os.urandom(8_000_000)
    server.files["d/x.tar"] = data
    fs = tmpfs("72m")
    dest, digest = fs / "x.tar", hashlib.md5(data).hexdigest()
    part = fs / "x.tar.part"
    part.write_bytes(data[:MiB])
    download(server.url("d/x.tar"), dest, digest, "md5", size="7.9M", **FAST)
    assert dest.read_bytes() == data
    assert [entry["range"] for entry in server.log] == [f"bytes={MiB}-"]  # resumed
    # The same download without the part file does not fit: 7.95 + 64 MiB > 71 MiB free.
    dest.unlink()
    (fs / "ballast").write_bytes(bytes(MiB))
    server.log.clear()
    with pytest.raises(DiskError, match=r"x\.tar needs 71\.9 MiB .* 71\.0 MiB free there"):
        download(server.url("d/x.tar"), dest, digest, "md5", size="7.9M", **FAST)
    assert server.log == [] and not part.exists()


def test_a_download_without_a_catalog_size_logs_that_it_was_not_checked_and_proceeds(
    server: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(2000)
    server.files["d/x.tar"] = data
    dest = tmp_path / "downloads" / "x.tar"
    with caplog.at_level(logging.INFO, LOGGER):
        download(server.url("d/x.tar"), dest, hashlib.md5(data).hexdigest(), "md5", **FAST)
    assert dest.read_bytes() == data
    records = [record for record in caplog.records if record.name == LOGGER]
    assert [record.getMessage() for record in records] == [
        f"{dest.parent}: free space not checked for downloading x.tar (config/archives.yaml "
        f"states no download size); {free(tmp_path)} free there"
    ]
    assert records[0].levelno == logging.WARNING


def test_an_extraction_larger_than_its_folder_is_refused_before_any_member(
    tmp_path: Path, tmpfs: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    members = [("a/frames.txt", b"x" * 5000), ("a/b.txt", b"y")]
    compressed = tmp_path / "x.tar.gz"
    compressed.write_bytes(tar_bytes(members, "w:gz"))
    plain = tmp_path / "x.tar"
    plain.write_bytes(tar_bytes(members, "w"))
    fs = tmpfs("8m")
    with pytest.raises(DiskError) as error:
        extract(compressed, fs / "extracted" / "x", "tar.gz", extracted_size="97G")
    assert str(error.value) == refusal(
        fs / "extracted",
        "extracting x.tar.gz",
        size_range("97G")[1],
        "config/archives.yaml states 97G extracted",
        8 * MiB,
    )
    # A plain tar needs its own size (its members are stored as they are), whatever the
    # catalog's "uncompressed" size says; 10 KiB + the margin do not fit 8 MiB either.
    with pytest.raises(DiskError) as error:
        extract(plain, fs / "extracted" / "x", "tar", extracted_size="1K")
    basis = "the tar's own size: its members are stored uncompressed"
    need = plain.stat().st_size
    assert str(error.value) == refusal(fs / "extracted", "extracting x.tar", need, basis, 8 * MiB)
    assert list(fs.iterdir()) == []  # neither the folder nor a staging directory
    # Without a catalog size: one warning, and the archive is extracted.
    with caplog.at_level(logging.WARNING, LOGGER):
        done = extract(compressed, tmp_path / "extracted" / "x", "tar.gz")
    assert (done / "a" / "frames.txt").read_bytes() == b"x" * 5000 and (done / EXTRACTED_MARKER)
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        f"{tmp_path / 'extracted'}: free space not checked for extracting x.tar.gz "
        f"(config/archives.yaml states no extracted size); {free(tmp_path)} free there"
    ]


def test_a_conversion_that_does_not_fit_is_refused(
    tmpfs: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    fs = tmpfs("72m")
    frames = 1900  # 4143 x 1900 = 7.5 MiB: with the margin, 71.5 MiB
    require_conversion_space(fs / "oc20-2m", frames, "converting oc20-2m split train")
    with pytest.raises(DiskError) as error:
        require_conversion_space(fs / "oc20-2m", 2100, "converting oc20-2m split train")
    assert str(error.value) == refusal(
        fs / "oc20-2m",
        "converting oc20-2m split train",
        2100 * ASELMDB_BYTES_PER_FRAME,
        f"2,100 frames x {ASELMDB_BYTES_PER_FRAME} bytes of aselmdb a frame",
        72 * MiB,
    )
    with caplog.at_level(logging.WARNING, LOGGER):
        require_conversion_space(fs / "oc22", None, "converting oc22 split train")
    assert [r.getMessage() for r in caplog.records] == [
        f"{fs / 'oc22'}: free space not checked for converting oc22 split train (no published "
        f"frame count to estimate it from); 72.0 MiB free there"
    ]
    # A resumed conversion: 4 MiB of finished shards are on the disk and count as converted.
    work = fs / "oc20-2m" / ".work"
    work.mkdir(parents=True)
    (work / "shard-0000.aselmdb").write_bytes(bytes(4 * MiB))
    with pytest.raises(DiskError, match="68.0 MiB free there"):
        require_conversion_space(fs / "oc20-2m", frames, "converting oc20-2m split train")
    require_conversion_space(fs / "oc20-2m", frames, "converting", written=4 * MiB)


def test_dens_data_download_refuses_in_one_line_with_exit_status_2(
    server: Served, tmpfs: Callable[[str], Path]
) -> None:
    """The command the download rule runs: md17_aspirin (193M in config/archives.yaml) into an
    8 MiB folder, from a mirror on 127.0.0.1 that is never asked."""
    fs = tmpfs("8m")
    out = fs / "downloads" / "md17_aspirin.npz"
    mirror = server.url("mirror")
    process = dens(["data", "download", "md17_aspirin", "--out", str(out), "--mirror", mirror])
    assert process.returncode == 2, process.stderr
    assert one_error_line(process.stderr) == (
        f"dens: error: {fs}/downloads: downloading md17_aspirin.npz needs 257.5 MiB "
        "(config/archives.yaml states 193M, plus a 64.0 MiB margin), 8.0 MiB free there; free "
        "space there or choose a folder on a larger disk (a symbolic link in its place works), "
        "then rerun"
    )
    assert server.log == [] and list(fs.iterdir()) == []


def test_dens_data_extract_refuses_in_one_line_with_exit_status_2(
    tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    """oc22_s2ef_total_lmdbs (tar.gz, 71G extracted in config/archives.yaml) into 8 MiB."""
    archive = tmp_path / "oc22_s2ef_total_lmdbs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(__file__, arcname="a.py")
    fs = tmpfs("8m")
    out = fs / "extracted" / "oc22_s2ef_total_lmdbs"
    args = ["data", "extract", "oc22_s2ef_total_lmdbs", "--archive-path", str(archive)]
    process = dens([*args, "--out", str(out)])
    assert process.returncode == 2, process.stderr
    assert one_error_line(process.stderr) == (
        f"dens: error: {fs}/extracted: extracting oc22_s2ef_total_lmdbs.tar.gz needs 71.6 GiB "
        "(config/archives.yaml states 71G extracted, plus a 64.0 MiB margin), 8.0 MiB free "
        f"there; {REMEDY}"
    )
    assert list(fs.iterdir()) == []
