"""Every `dens` error a user can cause is one line on stderr (status 2), not a traceback: a table
of bad invocations, each with the words its message must hold, and a closed pipe."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import ase
import numpy as np
import pytest
import torch
import yaml
from ase.calculators.singlepoint import SinglePointCalculator

from dens.data.aselmdb import write_aselmdb
from dens.data.download.errors import ChecksumMismatchError, DownloadError, UnsafeArchiveError
from dens.errors import DensError
from dens.pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
EVALUATE = ["evaluate", "md17-ethanol/equiformer-l2", "--scale", "smoke"]


def write_split(path: Path, n: int = 3) -> Path:
    """A small valid aselmdb split."""
    rng = np.random.default_rng(0)
    structures = []
    for _ in range(n):
        atoms = ase.Atoms("C2H6O", positions=rng.normal(0.0, 1.5, size=(9, 3)))
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((9, 3)))
        structures.append(atoms)
    write_aselmdb(path, structures)
    return path


def unsafe_tar(path: Path) -> Path:
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"evil"))
    return path


def extra_experiments(path: Path, overrides: dict) -> Path:
    experiment = {
        "matrix": {"molecule": ["ethanol"]},
        "extends": ["md17/equiformer/se_l2"],
        "model": {"overrides": overrides},
        "source": "a user's experiment",
    }
    path.write_text(yaml.safe_dump({"experiments": {"mine/equiformer-l2": experiment}}))
    return path


def damaged_checkpoint(run_dir: Path) -> Path:
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"format_version": 1, "weights": torch.zeros(1000)}, run_dir / "best.tmp")
    raw = (run_dir / "best.tmp").read_bytes()
    (run_dir / "checkpoints" / "best.pt").write_bytes(raw[: len(raw) // 2])
    return run_dir


# name -> (argv built in tmp_path, words the one line must hold)
BAD: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    "unknown experiment": (
        lambda tmp: ["params", "md17-aspirin/equiformer-l4"],
        ["unknown experiment 'md17-aspirin/equiformer-l4'", "md17-aspirin/equiformer-l2"],
    ),
    "unknown scale": (
        lambda tmp: ["experiments", "--scale", "huge"],
        ["unknown scale 'huge'", "smoke"],
    ),
    "unknown dataset": (
        lambda tmp: (
            ["data", "prepare", "md17-ethanoll", "--scale", "smoke"]
            + ["--out-dir", str(tmp / "out")]
        ),
        ["unknown dataset 'md17-ethanoll'", "md17-ethanol"],
    ),
    "unknown archive": (
        lambda tmp: ["data", "download", "md17_ethanoll", "--out", str(tmp / "x.npz")],
        ["unknown archive 'md17_ethanoll'", "config/archives.yaml"],
    ),
    "archive to extract is missing": (
        lambda tmp: (
            ["data", "extract", "oc20_s2ef_val_id"]
            + ["--archive-path", str(tmp / "val.tar"), "--out", str(tmp / "val")]
        ),
        ["archive not found", "val.tar", "dens data download oc20_s2ef_val_id"],
    ),
    "refused archive member": (
        lambda tmp: (
            ["data", "extract", "oc20_s2ef_val_id"]
            + ["--archive-path", str(unsafe_tar(tmp / "val.tar")), "--out", str(tmp / "val")]
        ),
        ["refusing to extract", "val.tar", "'../escape.txt'"],
    ),
    "missing training split": (
        lambda tmp: (
            ["train", "md17-ethanol/equiformer-l2", "--scale", "smoke"]
            + ["--run-dir", str(tmp / "run"), "--device", "cpu"]
            + ["--train", str(tmp / "results/smoke/data/md17-ethanol/train")]
            + ["--val", str(tmp / "results/smoke/data/md17-ethanol/val")]
        ),
        [
            "split folder not found",
            "md17-ethanol/train;",
            "snakemake results/smoke/data/md17-ethanol/train`",
        ],
    ),
    "empty validation split": (
        lambda tmp: (
            ["train", "md17-ethanol/equiformer-l2", "--scale", "smoke"]
            + ["--run-dir", str(tmp / "run"), "--device", "cpu"]
            + ["--train", str(write_split(tmp / "train.aselmdb"))]
            + ["--val", str(write_split(tmp / "val.aselmdb", n=0))]
        ),
        ["val.aselmdb: the validation split holds no structure", "rebuild it"],
    ),
    "empty training split": (
        lambda tmp: (
            ["train", "md17-ethanol/equiformer-l2", "--scale", "smoke"]
            + ["--run-dir", str(tmp / "run"), "--device", "cpu"]
            + ["--train", str(write_split(tmp / "train.aselmdb", n=0))]
            + ["--val", str(write_split(tmp / "val.aselmdb"))]
        ),
        ["train.aselmdb: the training split holds no structure"],
    ),
    "empty split to score after training": (
        lambda tmp: (
            ["train", "md17-ethanol/equiformer-l2", "--scale", "smoke"]
            + ["--run-dir", str(tmp / "run"), "--device", "cpu"]
            + ["--train", str(write_split(tmp / "train.aselmdb"))]
            + ["--val", str(write_split(tmp / "val.aselmdb"))]
            + ["--evaluate", str(write_split(tmp / "test.aselmdb", n=0))]
        ),
        ["test.aselmdb: the evaluation split holds no structure"],
    ),
    "missing split to score after training": (
        lambda tmp: (
            ["train", "md17-ethanol/equiformer-l2", "--scale", "smoke"]
            + ["--run-dir", str(tmp / "run"), "--device", "cpu"]
            + ["--train", str(write_split(tmp / "train.aselmdb"))]
            + ["--val", str(write_split(tmp / "val.aselmdb"))]
            + ["--evaluate", str(tmp / "test.aselmdb")]
        ),
        ["aselmdb file not found", "test.aselmdb"],
    ),
    "missing test split": (
        lambda tmp: EVALUATE + ["--run-dir", str(tmp), "--device", "cpu", str(tmp / "t.aselmdb")],
        ["aselmdb file not found", "t.aselmdb"],
    ),
    "split that is not aselmdb": (
        lambda tmp: EVALUATE + ["--run-dir", str(tmp), "--device", "cpu", str(tmp / "t.xyz")],
        ["must end in '.aselmdb'", "t.xyz"],
    ),
    "run never trained": (
        lambda tmp: (
            EVALUATE
            + [
                "--run-dir",
                str(tmp / "run"),
                "--device",
                "cpu",
                str(write_split(tmp / "t.aselmdb")),
            ]
        ),
        ["no checkpoint at", "best.pt"],
    ),
    "damaged checkpoint": (
        lambda tmp: (
            EVALUATE
            + ["--run-dir", str(damaged_checkpoint(tmp / "run")), "--device", "cpu"]
            + [str(write_split(tmp / "t.aselmdb"))]
        ),
        ["best.pt is damaged", "retrain"],
    ),
    "cuda without cuda": (
        lambda tmp: EVALUATE + ["--run-dir", str(tmp), "--device", "cuda", "x.aselmdb"],
        ["--device cuda", "CUDA is not available", "--device cpu"],
    ),
    "no such device": (
        lambda tmp: EVALUATE + ["--run-dir", str(tmp), "--device", "gpu", "x.aselmdb"],
        ["--device 'gpu'", "not a torch device"],
    ),
    "no threads": (
        lambda tmp: (
            EVALUATE + ["--run-dir", str(tmp), "--device", "cpu", "--threads", "0", "x.aselmdb"]
        ),
        ["--threads 0"],
    ),
    "unknown model.overrides key": (
        lambda tmp: (
            ["experiments", "--scale", "smoke", "--extra-experiments"]
            + [str(extra_experiments(tmp / "mine.yaml", {"num_layer": 2}))]
        ),
        [
            "mine.yaml: experiments.mine/equiformer-l2.model.overrides: 'num_layer'",
            "not an argument of equiformer",
            "did you mean 'num_layers'?",
        ],
    ),
    "non-finite number in an extra experiment file": (
        lambda tmp: (
            ["experiments", "--extra-experiments"]
            + [str(extra_experiments(tmp / "mine.yaml", {"drop_path_rate": float("nan")}))]
        ),
        ["mine.yaml: experiments.mine/equiformer-l2.model.overrides.drop_path_rate: .nan"],
    ),
    "switch as model.overrides key": (
        lambda tmp: (
            ["experiments", "--extra-experiments"]
            + [str(extra_experiments(tmp / "mine.yaml", {"noise_head": True}))]
        ),
        ["model.overrides: 'noise_head': set by the dens entry"],
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_invocation_is_one_line(
    case: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    monkeypatch.chdir(tmp_path)  # the job's pipeline directory: its files are under results/
    build, words = BAD[case]
    argv = build(tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    if argv[0] == "train":
        assert not (tmp_path / "run").exists()  # refused before the run starts
    lines = captured.err.splitlines()
    assert len(lines) == 1 and captured.err.endswith("\n"), captured.err
    assert lines[0].startswith("dens: error: ")
    for word in words:
        assert word in lines[0]


def test_download_errors_are_dens_errors() -> None:
    assert issubclass(UnsafeArchiveError, DensError) and issubclass(UnsafeArchiveError, ValueError)
    assert issubclass(DownloadError, DensError) and issubclass(DownloadError, RuntimeError)
    assert issubclass(ChecksumMismatchError, DownloadError)


def test_device_defaults_to_the_gpu_where_one_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    from dens.pipeline.cli import _resolve_device, build_parser

    args = build_parser().parse_args(EVALUATE + ["--run-dir", "run", "x.aselmdb"])
    assert args.device is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _resolve_device(None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _resolve_device(None) == "cuda"
    assert _resolve_device("cpu") == "cpu"


def test_closed_pipe_exits_quietly() -> None:
    """`dens experiments | head -1`: the first line, then no traceback from the writer."""
    result = subprocess.run(
        f"{sys.executable} -m dens experiments | head -1",
        shell=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 1 and result.stderr == ""
    # The reader closes before anything is written, so the first write meets a closed pipe.
    process = subprocess.Popen(
        [sys.executable, "-m", "dens", "experiments"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert stderr == b"" and process.returncode == 1
