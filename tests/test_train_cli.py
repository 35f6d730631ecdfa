"""`dens train --evaluate`: the training job scores its run in the same process (the CPU scales'
evaluate_in_train_job), with the same metrics.json `dens evaluate` writes."""

from __future__ import annotations

import json
from pathlib import Path

import ase
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from dens.data.aselmdb import write_aselmdb
from dens.pipeline.cli import main

EXPERIMENT = ["md17-ethanol/equiformer-l2", "--scale", "smoke", "--device", "cpu"]
SCORES = ("energy_mae_meV", "forces_mae_meV_per_A", "zero_forces_mae_meV_per_A", "n_test")


@pytest.fixture(autouse=True)
def _cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine


def write_split(path: Path, n: int) -> Path:
    """n ethanol-like structures with random positions, energies and forces."""
    rng = np.random.default_rng(len(path.name) + n)
    structures = []
    for _ in range(n):
        atoms = ase.Atoms("C2H6O", positions=rng.normal(0.0, 1.5, size=(9, 3)))
        forces = rng.normal(0.0, 0.5, size=(9, 3))
        atoms.calc = SinglePointCalculator(atoms, energy=rng.normal(-10.0, 0.3), forces=forces)
        structures.append(atoms)
    write_aselmdb(path, structures)
    return path


def train_argv(tmp_path: Path, test: Path) -> list[str]:
    return [
        "train", *EXPERIMENT, "--run-dir", str(tmp_path / "run"),
        "--train", str(write_split(tmp_path / "train.aselmdb", n=16)),
        "--val", str(write_split(tmp_path / "val.aselmdb", n=4)),
        "--evaluate", str(test),
    ]  # fmt: skip


def test_train_scores_its_run_as_dens_evaluate_does(tmp_path: Path) -> None:
    test = write_split(tmp_path / "test.aselmdb", n=5)
    assert main(train_argv(tmp_path, test)) == 0
    metrics_path = tmp_path / "run" / "metrics.json"
    scored_in_training = json.loads(metrics_path.read_text())
    assert scored_in_training["split"] == "test" and scored_in_training["n_test"] == 5
    assert scored_in_training["epochs_trained"] == 2  # smoke: 2 epochs
    metrics_path.unlink()
    assert main(["evaluate", *EXPERIMENT, "--run-dir", str(tmp_path / "run"), str(test)]) == 0
    scored_apart = json.loads(metrics_path.read_text())
    assert {k: scored_in_training[k] for k in SCORES} == {k: scored_apart[k] for k in SCORES}


def test_a_missing_split_to_score_stops_before_training(tmp_path: Path) -> None:
    assert main(train_argv(tmp_path, tmp_path / "missing.aselmdb")) == 2
    assert not (tmp_path / "run" / "checkpoints").exists()
