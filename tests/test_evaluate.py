"""Tests of dens.evaluate: test-split MAE from the best EMA weights, metrics.json contents."""

from __future__ import annotations

import csv
import datetime
import json

import pytest
import torch
from toy_model import build_toy_model, make_emt_dataset, toy_experiment, train_toy_run

from dens.data.batch import Batch
from dens.evaluate import ErrorSums, evaluate, mean_absolute_errors, training_cost
from dens.normalization import Normalizer

EXPERIMENT = toy_experiment(dens=True, epochs=3, lr=3e-2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, train_toy_run(run_dir, EXPERIMENT, 52, seed=1)


def reference_errors(weights: dict, normalizer: dict, test_set: list) -> tuple[float, float]:
    """Energy (meV) and force (meV/Å) MAE recomputed one structure at a time in float64."""
    model = build_toy_model(EXPERIMENT)
    model.load_state_dict(weights)
    model.eval()
    energy_errors, force_errors = [], []
    for data in test_set:
        out = model(Batch.from_data_list([data]))  # no force input, no noise
        out = {key: value.detach() for key, value in out.items()}
        refs = normalizer["element_references"][data.atomic_numbers].sum()
        energy = out["energy"].double() * normalizer["std"] + normalizer["mean"] + refs
        forces = out["forces"].double() * normalizer["std"]
        energy_errors.append(float((energy - data.energy.double()).abs()))
        force_errors.append((forces - data.forces.double()).abs().flatten())
    return 1000 * sum(energy_errors) / len(test_set), 1000 * float(torch.cat(force_errors).mean())


def test_metrics_json_from_best_ema_weights(run):
    run_dir, test_set = run
    metrics = evaluate(run_dir, {"test": test_set}, build_toy_model)
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics

    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    energy_mae, forces_mae = reference_errors(best["model"], best["normalizer"], test_set)
    assert metrics["energy_mae_meV"] == pytest.approx(energy_mae, rel=1e-5)
    assert metrics["forces_mae_meV_per_A"] == pytest.approx(forces_mae, rel=1e-5)
    # The final raw (non-EMA) weights give other numbers: evaluation used best.pt's EMA weights.
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    raw_energy_mae, _ = reference_errors(last["model"], last["normalizer"], test_set)
    assert raw_energy_mae != pytest.approx(metrics["energy_mae_meV"], rel=1e-5)

    zero = 1000 * float(torch.cat([d.forces for d in test_set]).double().abs().mean())
    assert metrics["zero_forces_mae_meV_per_A"] == pytest.approx(zero, rel=1e-9)
    assert metrics["forces_mae_meV_per_A"] < metrics["zero_forces_mae_meV_per_A"]
    assert 0 < metrics["splits"]["test"]["forces_cos"] <= 1
    assert 0 <= metrics["splits"]["test"]["efwt"] <= 1
    assert metrics["n_test"] == len(test_set) == 12
    assert metrics["n_test_free_atoms"] == sum(int(d.natoms) for d in test_set)
    assert metrics["weights"] == "ema" and metrics["best_epoch"] == best["epoch"]
    assert metrics["num_parameters"] == sum(
        p.numel() for p in build_toy_model(EXPERIMENT).parameters()
    )
    assert (metrics["experiment"], metrics["scale"], metrics["seed"]) == (
        "toy/pair-dens",
        "smoke",
        0,
    )
    with open(run_dir / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert metrics["epochs_trained"] == 3
    assert metrics["train_time_s"] == pytest.approx(sum(float(r["epoch_time_s"]) for r in rows))
    assert metrics["train_samples_per_s"] > 0
    assert metrics["versions"]["torch"] == torch.__version__
    assert {"python", "ase", "e3nn"} <= set(metrics["versions"])
    assert datetime.datetime.fromisoformat(metrics["date"]).tzinfo is not None


def test_fixed_atoms_carry_no_force_error(run):
    run_dir, test_set = run
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    model = build_toy_model(EXPERIMENT)
    model.load_state_dict(best["model"])
    normalizer = Normalizer.from_dict(best["normalizer"])
    plain = mean_absolute_errors(model, test_set, normalizer, batch_size=5)
    flagged = []
    for data in test_set:
        data = data.clone()
        data.fixed = data.fixed.clone()
        data.fixed[0] = True
        data.forces = data.forces.clone()
        data.forces[0] = 1e3  # would dominate the MAE if fixed atoms counted
        flagged.append(data)
    masked = mean_absolute_errors(model, flagged, normalizer, batch_size=5)
    assert masked["num_free_atoms"] == plain["num_free_atoms"] - len(test_set)
    assert masked["forces_mae_meV_per_A"] < 2 * plain["forces_mae_meV_per_A"]
    assert masked["energy_mae_meV"] == pytest.approx(plain["energy_mae_meV"], rel=1e-6)


def test_evaluate_needs_a_trained_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="best.pt"):
        evaluate(tmp_path, {"test": make_emt_dataset(2, seed=0)}, build_toy_model)


def test_error_sums_agree_with_the_oc20_evaluator():
    """Force cosine and EFwT as fairchem's evaluator computes them (energy and forces within
    0.02 eV and 0.03 eV/Å), over batches added one at a time."""
    evaluator = pytest.importorskip("fairchem.core.modules.evaluator")
    generator = torch.Generator().manual_seed(0)
    natoms = torch.tensor([3, 1, 4, 2, 5])
    label_energy = torch.randn(5, generator=generator, dtype=torch.float64)
    energy = label_energy + torch.tensor([0.001, 0.05, -0.01, 0.019, 0.0], dtype=torch.float64)
    label_forces = torch.randn(int(natoms.sum()), 3, generator=generator)
    forces = label_forces + 0.02 * torch.randn(label_forces.shape, generator=generator)
    forces[:3] = label_forces[:3] + 0.001  # structure 0 within both thresholds
    structure = torch.repeat_interleave(torch.arange(5), natoms)
    sums = ErrorSums()
    for part in (slice(0, 2), slice(2, 5)):  # two batches, structure indices from 0 in each
        atoms = (structure >= part.start) & (structure < part.stop)
        sums.add(
            energy[part],
            label_energy[part],
            forces[atoms],
            label_forces[atoms],
            structure[atoms] - part.start,
        )
    result = sums.result()
    prediction = {"energy": energy, "forces": forces}
    target = {"energy": label_energy, "forces": label_forces, "natoms": natoms}
    efwt = evaluator.energy_forces_within_threshold(prediction, target)
    cosine = evaluator.cosine_similarity(prediction, target, "forces")
    forces_mae = evaluator.mae(prediction, target, "forces")
    energy_mae = evaluator.mae(prediction, target, "energy")
    assert result["efwt"] == pytest.approx(efwt["metric"]) and efwt["total"] >= 1
    assert result["forces_cos"] == pytest.approx(cosine["metric"], rel=1e-6)
    assert result["forces_mae_meV_per_A"] == pytest.approx(1000 * forces_mae["metric"], rel=1e-6)
    assert result["energy_mae_meV"] == pytest.approx(1000 * energy_mae["metric"])
    assert (result["num_structures"], result["num_free_atoms"]) == (5, 15)


def test_throughput_and_device_hours_from_the_training_log(run):
    """log.csv -> metrics: wall hours x devices, GPU-hours only for GPU runs, rates per device."""
    run_dir, _ = run
    with open(run_dir / "log.csv", newline="") as handle:
        cpu = training_cost(list(csv.DictReader(handle)))
    assert (cpu["train_device"], cpu["train_devices"], cpu["train_mixed_precision"]) == (
        "cpu",
        1,
        False,
    )
    assert "train_gpu_hours" not in cpu
    assert cpu["train_device_hours"] == pytest.approx(cpu["train_hours"])
    assert cpu["train_samples_per_s_per_device"] == pytest.approx(cpu["train_samples_per_s"])

    epoch = {"train_samples_per_s": "64", "world_size": "16", "device": "cuda"}
    epoch |= {"device_name": "Tesla V100-SXM2-32GB", "mixed_precision": "True"}
    gpu = training_cost([{**epoch, "epoch_time_s": "3600"}, {**epoch, "epoch_time_s": "1800"}])
    assert gpu["train_gpu_hours"] == gpu["train_device_hours"] == pytest.approx(16 * 1.5)
    assert (gpu["train_samples_per_s"], gpu["train_samples_per_s_per_device"]) == (64, 4)
    assert (gpu["train_device_name"], gpu["train_mixed_precision"]) == (
        "Tesla V100-SXM2-32GB",
        True,
    )

    # a validation inside an epoch (optim.val_every_steps) is no epoch: its time is counted in
    # the epoch row after it
    mid_epoch = {**epoch, "kind": "mid_epoch", "epoch_time_s": "900", "train_samples_per_s": "1"}
    rows = [mid_epoch, {**epoch, "kind": "epoch", "epoch_time_s": "3600"}]
    assert training_cost(rows) == training_cost([rows[1]])
    assert training_cost(rows)["train_gpu_hours"] == pytest.approx(16.0)

    before_devices = training_cost([{"epoch_time_s": "7200", "train_samples_per_s": "5"}])
    assert before_devices["train_device"] == "unknown" and "train_gpu_hours" not in before_devices
    assert before_devices["train_device_hours"] == 2.0
