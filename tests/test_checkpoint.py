"""Checkpoint integrity: a missing, truncated, corrupt or foreign checkpoint is one DataError that
names the file and says how to retrain the run; intact ones load with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import ase
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from toy_model import build_toy_model, make_emt_dataset, toy_experiment

from dens.checkpoint import (
    FORMAT_VERSION,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from dens.data.aselmdb import write_aselmdb
from dens.errors import CheckpointError, DataError, DensError, MissingDataError
from dens.normalization import NUM_ELEMENTS, Normalizer
from dens.pipeline.cli import main

RUN = Path("results/smoke/runs/md17-ethanol/equiformer-l2/seed0")
TARGET = RUN / "checkpoints" / "best.pt"


def write_split(path: Path) -> Path:
    """A small valid aselmdb split (EMT-labelled Cu/Au clusters)."""
    structures = []
    for data in make_emt_dataset(3, seed=0):
        atoms = ase.Atoms(numbers=data.atomic_numbers.numpy(), positions=data.pos.double().numpy())
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(data.energy), forces=data.forces.double().numpy()
        )
        structures.append(atoms)
    write_aselmdb(path, structures)
    return path


def checkpoint_state() -> dict:
    """A best.pt as dens.train writes it, for the toy model."""
    experiment = toy_experiment(dens=True)
    torch.manual_seed(0)
    model = build_toy_model(experiment)
    counts = torch.zeros(3, NUM_ELEMENTS)
    counts[:, 29] = 6
    normalizer = Normalizer.fit(torch.tensor([-1.0, -2.0, -4.0]), counts, "mean")
    return {
        "format_version": FORMAT_VERSION,
        "kind": "best",
        "experiment": experiment,
        "epoch": 1,
        "step": 4,
        "normalizer": normalizer.to_dict(),
        "num_parameters": 1,
        "model": model.state_dict(),
        "weights": "model",
        "val": {"energy_mae_meV": 1.0, "forces_mae_meV_per_A": 2.0},
    }


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("checkpoint") / "best.pt"
    save_checkpoint(checkpoint_state(), path)
    return path.read_bytes()


def run_checkpoint(root: Path, content: bytes) -> Path:
    path = root / TARGET
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_intact_checkpoint_loads(tmp_path: Path, original: bytes) -> None:
    state = load_checkpoint(run_checkpoint(tmp_path, original))
    assert state["kind"] == "best" and state["normalizer"]["elements"] == [29]


@pytest.mark.parametrize("size", [0, 1, 100, 0.5, 0.9, -22, -1])
@pytest.mark.usefixtures("pipeline_remedies")
def test_truncated_checkpoint_names_the_file_and_the_retraining(
    tmp_path: Path, original: bytes, size: float
) -> None:
    if isinstance(size, float):
        keep = int(size * len(original))
    else:
        keep = size if size >= 0 else len(original) + size
    path = run_checkpoint(tmp_path, original[:keep])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path} is damaged (") and "\n" not in message
    assert f"delete {tmp_path / RUN}/ and rerun snakemake (`snakemake {TARGET}`)" in message
    assert isinstance(error.value, DataError) and isinstance(error.value, ValueError)


def test_corrupt_bytes_fail_the_crc_check(tmp_path: Path, original: bytes) -> None:
    corrupt = bytearray(original)
    middle = len(corrupt) // 2
    corrupt[middle : middle + 4] = bytes(255 - b for b in corrupt[middle : middle + 4])
    path = run_checkpoint(tmp_path, bytes(corrupt))
    with pytest.raises(CheckpointError, match=r"is damaged \(Bad CRC-32 for file 'archive/"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = run_checkpoint(tmp_path, b"this is not a zip archive\n" * 100)
    with pytest.raises(CheckpointError, match=r"not a complete torch archive"):
        load_checkpoint(path)
    # Outside the pipeline's layout, or without the pipeline, the remedy is the library's.
    with pytest.raises(CheckpointError, match=r"retrain the run that wrote it"):
        load_checkpoint(path)
    other = tmp_path / "model.pt"
    other.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"retrain the run that wrote it"):
        load_checkpoint(other)


def test_pickled_objects_are_refused_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "numpy.pt"
    torch.save({"format_version": FORMAT_VERSION, "mean": np.float64(1.0)}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "torch.load(weights_only=True) refused it (Unsupported global" in message
    assert "\n" not in message and "\x1b" not in message


def test_other_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"format_version": 0}, path)
    with pytest.raises(CheckpointError, match=r"not a dens checkpoint of format 1 \(format_vers"):
        load_checkpoint(path)


def test_checkpoint_saved_without_crc32_still_loads(tmp_path: Path) -> None:
    if not hasattr(torch.serialization, "set_crc32_options"):
        pytest.skip("this torch has no set_crc32_options")
    path = tmp_path / "nocrc.pt"
    torch.serialization.set_crc32_options(False)
    try:
        save_checkpoint(checkpoint_state(), path)
    finally:
        torch.serialization.set_crc32_options(True)
    assert load_checkpoint(path)["kind"] == "best"


def test_missing_checkpoint(tmp_path: Path, pipeline_remedies: None) -> None:
    with pytest.raises(MissingDataError) as error:
        load_checkpoint(tmp_path / "none.pt")
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, DensError)
    (tmp_path / RUN).mkdir(parents=True)
    with pytest.raises(MissingDataError) as error:
        find_checkpoint(tmp_path / RUN)
    assert str(error.value) == (
        f"no checkpoint at {tmp_path / TARGET}; train it with `snakemake {TARGET}`"
    )


def test_damaged_checkpoint_through_dens_evaluate_is_one_line(
    tmp_path: Path,
    original: bytes,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # the job's pipeline directory: its run is under results/
    path = run_checkpoint(tmp_path, original[: len(original) // 3])
    split = write_split(tmp_path / "test.aselmdb")
    code = main(
        ["evaluate", "md17-ethanol/equiformer-l2", "--scale", "smoke", "--device", "cpu"]
        + ["--run-dir", str(tmp_path / RUN), str(split)]
    )
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"dens: error: {path} is damaged (not a complete torch archive")
    assert "rerun snakemake" in captured.err
