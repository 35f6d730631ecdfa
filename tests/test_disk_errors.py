"""A full disk, a file size limit and a read-only run folder end `dens train` and `dens evaluate` in
one line naming the operation, the folder and its free space (exit status 2), leave no temporary
file and lose nothing already written (dens.atomic_files).

The disk-full run (`python -m dens train`) fills a real tmpfs, mounted here (root only, else
skipped), so that the second epoch's last.pt no longer fits. The size-limit run sets RLIMIT_FSIZE
while it trains in this process (a write past it fails with EFBIG; no mount needed, so it runs
everywhere). The read-only run folder is the tmpfs remounted read-only (EROFS), or without the
right to mount, its folders made read-only with chmod (EACCES; skipped for root, who may write
anyway).

On the old code the disk-full run ended in three chained tracebacks (exit status 1) and left a
304 KiB last.pt.tmp; the read-only run folder in a traceback (EROFS was not a one-line error).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import resource
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_train_cli import write_split

from dens.atomic_files import atomic_write, free_space, write_text
from dens.checkpoint import load_checkpoint
from dens.errors import DiskError
from dens.pipeline.cli import _user_error, main

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ["md17-ethanol/equiformer-l2", "--scale", "smoke", "--device", "cpu"]


def _mount(target: Path, options: str) -> bool:
    """Mount a tmpfs at ``target``; False where this process may not."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=False
    )
    return done.returncode == 0


def _unmount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=True)


def train_args(splits: Path, run_dir: Path) -> list[str]:
    return [
        "train", *EXPERIMENT, "--run-dir", str(run_dir),
        "--train", str(splits / "train.aselmdb"), "--val", str(splits / "val.aselmdb"),
    ]  # fmt: skip


def dens(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``python -m dens <args>`` on the CPU."""
    return subprocess.run(
        [sys.executable, "-m", "dens", *args],
        cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )


def dens_here(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit status, stderr) of ``dens <args>`` run in this process on the CPU (faster)."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        code = main(args)
    return code, capsys.readouterr().err


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """RLIMIT_FSIZE ``limit`` bytes for this process while the block runs (a write past it fails
    with EFBIG: Python ignores SIGXFSZ); the soft limit is restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def one_error_line(stderr: str) -> str:
    """The single `dens:` line of stderr (the rest is the progress bar), with no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if "dens:" in line]
    assert len(lines) == 1, stderr
    return lines[0][lines[0].index("dens:") :]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(splits folder, run folder) of a finished smoke run (2 epochs), trained in-process."""
    splits = tmp_path_factory.mktemp("splits")
    write_split(splits / "train.aselmdb", n=16)
    write_split(splits / "val.aselmdb", n=4)
    write_split(splits / "test.aselmdb", n=3)
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        assert main(train_args(splits, run_dir)) == 0
    return splits, run_dir


def test_disk_full_while_training_keeps_the_previous_checkpoint(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    splits, done = finished
    best = (done / "checkpoints" / "best-epoch.pt").stat().st_size
    last = (done / "checkpoints" / "last.pt").stat().st_size
    assert best < last  # last.pt also holds the optimiser state
    # After epoch 1 (best-epoch.pt + last.pt + log.csv) about (best + last) / 2 is left: epoch 2's
    # best-epoch.pt still fits beside the old one, its last.pt does not.
    size = best + last + (best + last) // 2
    fs = tmp_path / "fs"
    if not _mount(fs, f"size={size}"):
        pytest.skip("mounting a tmpfs needs root (the RLIMIT_FSIZE test runs instead)")
    try:
        run_dir = fs / "run"
        process = dens(train_args(splits, run_dir))
        assert process.returncode == 2, process.stderr
        line = one_error_line(process.stderr)
        folder = run_dir / "checkpoints"
        assert line.startswith(f"dens: error: saving checkpoint last.pt in {folder}/ failed: ")
        assert "no space left on the file system (ENOSPC)" in line
        assert f"; {free_space(folder)} there;" in line
        assert not list(fs.rglob("*.tmp")), sorted(fs.rglob("*"))
        # last.pt is epoch 1's and loads (its CRCs checked); epoch 2's best-epoch.pt is complete.
        assert load_checkpoint(folder / "last.pt")["epoch"] == 1
        load_checkpoint(folder / "best-epoch.pt")
        with open(run_dir / "log.csv", newline="") as handle:  # 2 epochs (+ rows inside them)
            assert [row["kind"] for row in csv.DictReader(handle)].count("epoch") == 2
    finally:
        _unmount(fs)


def test_a_file_size_limit_while_training_leaves_no_temporary_file(
    finished: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    splits, done = finished
    best = (done / "checkpoints" / "best-epoch.pt").stat().st_size
    last = (done / "checkpoints" / "last.pt").stat().st_size
    run_dir = tmp_path / "run"
    with file_size_limit((best + last) // 2):
        code, stderr = dens_here(train_args(splits, run_dir), capsys)
    assert code == 2, stderr
    line = one_error_line(stderr)
    folder = run_dir / "checkpoints"
    assert line.startswith(f"dens: error: saving checkpoint last.pt in {folder}/ failed: ")
    assert "file larger than this process may write (ulimit -f) (EFBIG)" in line
    assert " free of " in line
    assert not list(run_dir.rglob("*.tmp")), sorted(run_dir.rglob("*"))
    assert not (folder / "last.pt").exists()
    assert load_checkpoint(folder / "best-epoch.pt")["epoch"] == 1  # written before: intact


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _chmod_folders(run_dir: Path, mode: int) -> None:
    for folder in [run_dir, *(p for p in run_dir.rglob("*") if p.is_dir())]:
        folder.chmod(mode)


def test_a_read_only_run_folder_fails_in_one_line_and_changes_nothing(
    finished: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    splits, done = finished
    fs = tmp_path / "fs"
    mounted = _mount(fs, "size=8m")
    if not mounted and os.geteuid() == 0:
        pytest.skip("root may write into a chmod-protected folder and cannot mount here")
    run_dir = fs / "run"
    subprocess.run(["cp", "-a", str(done), str(run_dir)], check=True)  # keeps .kept/ links
    before = _files(run_dir)
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        reason = "the file system is mounted read-only (EROFS)"
    else:
        _chmod_folders(run_dir, stat.S_IRUSR | stat.S_IXUSR)
        reason = "permission denied (EACCES)"
    try:
        code, stderr = dens_here(train_args(splits, run_dir), capsys)
        assert code == 2, stderr
        line = one_error_line(stderr)
        assert line.startswith(f"dens: error: writing training log log.csv in {run_dir}/ failed")
        assert f"{reason}; {free_space(run_dir)} there;" in line

        args = ["evaluate", *EXPERIMENT, "--run-dir", str(run_dir), str(splits / "test.aselmdb")]
        code, stderr = dens_here(args, capsys)
        assert code == 2, stderr
        line = one_error_line(stderr)
        assert line.startswith(f"dens: error: writing metrics metrics.json in {run_dir}/ failed")
        assert f"{reason}; {free_space(run_dir)} there;" in line
        assert _files(run_dir) == before  # nothing written, nothing lost, no *.tmp
    finally:
        if mounted:
            _unmount(fs)
        else:
            _chmod_folders(run_dir, stat.S_IRWXU)


def test_a_new_run_folder_in_a_read_only_parent_fails_in_one_line(
    finished: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dens train` into a run folder that must be created where it may not be (a read-only
    file system, else a chmod-protected parent): one line naming the operation, the folder and
    the free space (before: "[Errno 13] Permission denied: '<folder>'", no operation or fix)."""
    splits, _ = finished
    parent = tmp_path / "parent"
    mounted = _mount(parent, "size=1m")
    if not mounted and os.geteuid() == 0:
        pytest.skip("root may write into a chmod-protected folder and cannot mount here")
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(parent)], check=True)
        reason = "the file system is mounted read-only (EROFS)"
    else:
        parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
        reason = "permission denied (EACCES)"
    run_dir = parent / "run"
    try:
        code, stderr = dens_here(train_args(splits, run_dir), capsys)
        assert code == 2, stderr
        line = one_error_line(stderr)
        assert line.startswith(f"dens: error: creating run folder run in {parent}/ failed"), line
        assert f"{reason}; {free_space(parent)} there;" in line
        assert not run_dir.exists()
    finally:
        if mounted:
            _unmount(parent)
        else:
            parent.chmod(stat.S_IRWXU)


def test_an_interrupted_write_keeps_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_text(target, "old\n", "writing metrics")
    with pytest.raises(KeyboardInterrupt), atomic_write(target, "writing metrics", "w") as handle:
        handle.write("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old\n" and not list(tmp_path.glob("*.tmp"))


def test_a_full_disk_deep_inside_another_error_is_one_line(tmp_path: Path) -> None:
    """torch.save raises a RuntimeError whose context is the OSError; `dens` finds it."""
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.pt"))
    wrapped = RuntimeError("[enforce fail at inline_container.cc] unexpected pos")
    wrapped.__context__ = full
    shown = _user_error(wrapped)
    assert isinstance(shown, DiskError)
    assert str(shown).startswith(f"writing x.pt in {tmp_path}/ failed: no space left")
    assert _user_error(RuntimeError("a bug")) is None  # a traceback, as before
