"""A run's directory: the fingerprint a resume is checked against, moving aside, publishing."""

from __future__ import annotations

import json

import ase.build
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from dens.data.aselmdb import AseLmdbDataset, write_aselmdb
from dens.layout import TRAIN_OUTPUTS, RunDirectory
from dens.runs import keep_outputs, move_aside, publish, started_with


def dataset(tmp_path, name: str = "train") -> AseLmdbDataset:
    atoms = ase.build.molecule("H2O")
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((3, 3)))
    write_aselmdb(tmp_path / f"{name}.aselmdb", [atoms, atoms])
    (tmp_path / "provenance.json").write_text(json.dumps({"seed": 0}))
    return AseLmdbDataset(tmp_path / f"{name}.aselmdb")


def test_fingerprint_follows_provenance_not_mtime(tmp_path) -> None:
    experiment = {"name": "x/y", "seed": 0}
    train = dataset(tmp_path)
    before = started_with(experiment, train, train)
    (tmp_path / "train.aselmdb").touch()
    assert started_with(experiment, train, train) == before
    (tmp_path / "provenance.json").write_text(json.dumps({"seed": 1}))
    after = started_with(experiment, train, train)
    assert after["train_set"]["provenance_sha256"] != before["train_set"]["provenance_sha256"]
    assert started_with({**experiment, "seed": 1}, train, train) != before


def test_move_aside_keeps_everything_and_says_why(tmp_path) -> None:
    run = tmp_path / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"state")
    moved = move_aside(run, "run.experiment.optim.lr: 0.1 in last.pt, 0.2 now")
    assert not run.exists() and moved.name.startswith("seed0.previous-")
    assert (moved / "checkpoints" / "last.pt").read_bytes() == b"state"
    assert "optim.lr" in (moved / "MOVED_ASIDE.txt").read_text()


def test_publish_replaces_the_target_atomically(tmp_path) -> None:
    source, target = tmp_path / "best-epoch.pt", tmp_path / "best.pt"
    source.write_bytes(b"one")
    publish(source, target)
    assert target.read_bytes() == b"one"
    target.unlink()
    publish(source, target)  # again after Snakemake deleted it
    assert target.read_bytes() == b"one" and not (tmp_path / "best.pt.tmp").exists()


def test_outputs_snakemake_deleted_come_back_when_the_run_is_moved_aside(tmp_path) -> None:
    """The training job's declared outputs get second names; Snakemake deletes the declared
    names before rerunning the job; the run that job moves aside holds them again, unchanged.
    Without the second names the moved run would lack them."""
    run = tmp_path / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"last")
    for name in TRAIN_OUTPUTS:
        (run / name).write_text(name)
    keep_outputs(run)
    for name in TRAIN_OUTPUTS:
        (run / name).unlink()  # what Snakemake does before the job
    moved = move_aside(run, "provenance_sha256 changed")
    for name in TRAIN_OUTPUTS:
        assert (moved / name).read_text() == name
    assert "restored from .kept/" in (moved / "MOVED_ASIDE.txt").read_text()
    assert (RunDirectory(moved).kept_dir / "log.csv").stat().st_ino == (
        moved / "log.csv"
    ).stat().st_ino


def test_an_output_never_written_is_not_invented(tmp_path) -> None:
    run = tmp_path / "seed0"
    run.mkdir()
    (run / "log.csv").write_text("epoch\n")
    keep_outputs(run)
    (run / "log.csv").write_text("epoch\n1\n")  # written again by a later job: kept again
    keep_outputs(run)
    moved = move_aside(run, "changed")
    assert (moved / "log.csv").read_text() == "epoch\n1\n"
    assert not (moved / "metrics.json").exists() and not (moved / "checkpoints").exists()
    assert "restored" not in (moved / "MOVED_ASIDE.txt").read_text()
