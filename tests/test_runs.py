"""A run's directory: the fingerprint a resume is checked against, moving aside, publishing."""

from __future__ import annotations

import json

import ase.build
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from dens.data.aselmdb import AseLmdbDataset, write_aselmdb
from dens.runs import move_aside, publish, started_with


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
