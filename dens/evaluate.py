"""Evaluation of a trained run: energy and force MAE on a test split, written to metrics.json.

Predictions use the best-validation weights (EMA weights when EMA is on) from
run_dir/checkpoints/best.pt, with no noise and no force input (DESIGN.md checklist item 7), and
are de-normalised with the training statistics stored in the checkpoint.

Metrics (the MD17/OC20 conventions, Section 4):
    energy MAE (meV)       mean over structures of |E_hat - E|, total energies
    force MAE (meV/Å)      mean over free atoms and x, y, z of |f_hat - f|
    zero-force baseline    the force MAE of predicting f_hat = 0, i.e. mean |f|
    reference baseline     the energy MAE of predicting the training mean (plus element
                           references), i.e. a model that learned nothing
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from dens.checkpoint import Normalizer, find_checkpoint, inference_weights, load_checkpoint

BuildModel = Callable[[dict], nn.Module]

_VERSIONED = ("dens", "torch", "e3nn", "torch-geometric", "ase", "numpy", "fairchem-core")


@dataclass(frozen=True)
class TrainedModel:
    """A model with inference weights loaded, in eval mode with frozen parameters."""

    model: nn.Module
    normalizer: Normalizer
    checkpoint: dict[str, Any]


def load_trained_model(
    path: Path,
    build_model: BuildModel,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TrainedModel:
    """Build the run's model and load its inference weights.

    path: a run directory (-> checkpoints/best.pt) or a checkpoint file (best.pt or last.pt).
    build_model: the model registry, called with the experiment dict stored in the checkpoint.
    """
    checkpoint = load_checkpoint(find_checkpoint(path))
    model = build_model(checkpoint["experiment"])
    model.load_state_dict(inference_weights(checkpoint))
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return TrainedModel(model, Normalizer.from_dict(checkpoint["normalizer"]), checkpoint)


def predict(model: nn.Module, batch: Batch, normalizer: Normalizer) -> tuple[Tensor, Tensor]:
    """Energy [B] (eV, float64) and forces [N,3] (eV/Å, model dtype) of a batch, de-normalised;
    no noise head, no force input. Gradient-force models get autograd enabled."""
    with torch.set_grad_enabled(bool(getattr(model, "gradient_forces", False))):
        out = model(batch)
    energy = normalizer.denormalize_energy(
        out["energy"].detach(), batch.atomic_numbers, batch.batch
    )
    return energy, normalizer.denormalize_forces(out["forces"].detach())


def mean_absolute_errors(
    model: nn.Module,
    dataset: Sequence[Data],
    normalizer: Normalizer,
    batch_size: int,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Energy and force MAE of `model` on `dataset` (see the module notes), plus baselines.

    Returns energy_mae_meV, forces_mae_meV_per_A, zero_forces_mae_meV_per_A,
    reference_energy_mae_meV, num_structures, num_free_atoms. Restores the model's mode.
    """
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    was_training = model.training
    model.eval()
    energy_abs = force_abs = zero_abs = reference_abs = 0.0
    num_free = 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = Batch.from_data_list(items).to(device)
        energy, forces = predict(model, batch, normalizer)
        label = batch.energy.to(torch.float64)
        reference = normalizer.denormalize_energy(
            torch.zeros_like(label), batch.atomic_numbers, batch.batch
        )
        free = ~batch.fixed
        energy_abs += float((energy - label).abs().sum())
        reference_abs += float((reference - label).abs().sum())
        force_abs += float((forces[free].double() - batch.forces[free].double()).abs().sum())
        zero_abs += float(batch.forces[free].double().abs().sum())
        num_free += int(free.sum())
    model.train(was_training)
    num_components = max(3 * num_free, 1)
    return {
        "energy_mae_meV": 1000.0 * energy_abs / len(dataset),
        "forces_mae_meV_per_A": 1000.0 * force_abs / num_components,
        "zero_forces_mae_meV_per_A": 1000.0 * zero_abs / num_components,
        "reference_energy_mae_meV": 1000.0 * reference_abs / len(dataset),
        "num_structures": len(dataset),
        "num_free_atoms": num_free,
    }


def _training_log(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "log.csv"
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path} (train the run first)")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def evaluate(
    run_dir: Path,
    test_set: Sequence[Data],
    build_model: BuildModel,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    metrics_path: Path | None = None,
) -> dict[str, Any]:
    """Evaluate run_dir's best checkpoint on `test_set`; write and return the metrics.

    batch_size: defaults to the experiment's optim.eval_batch_size.
    metrics_path: defaults to run_dir/metrics.json.
    Training wall time (sum of epoch times) and training throughput (samples per second of
    optimiser steps, over the whole run) come from run_dir/log.csv.
    """
    run_dir = Path(run_dir)
    trained = load_trained_model(run_dir, build_model, device)
    checkpoint = trained.checkpoint
    experiment = checkpoint["experiment"]
    batch_size = batch_size or int(experiment["optim"]["eval_batch_size"])
    errors = mean_absolute_errors(trained.model, test_set, trained.normalizer, batch_size, device)
    log = _training_log(run_dir)
    epoch_times = [float(row["epoch_time_s"]) for row in log]
    # Every epoch has the same number of samples, so the run's rate is the harmonic mean.
    rates = [float(row["train_samples_per_s"]) for row in log]
    samples_per_s = len(rates) / sum(1.0 / r for r in rates) if rates else math.nan
    metrics = {
        "experiment": experiment["name"],
        "scale": experiment["scale"],
        "seed": experiment["seed"],
        "dataset": experiment["dataset"],
        "split": "test",
        "energy_mae_meV": errors["energy_mae_meV"],
        "forces_mae_meV_per_A": errors["forces_mae_meV_per_A"],
        "zero_forces_mae_meV_per_A": errors["zero_forces_mae_meV_per_A"],
        "reference_energy_mae_meV": errors["reference_energy_mae_meV"],
        "n_test": errors["num_structures"],
        "n_test_free_atoms": errors["num_free_atoms"],
        "checkpoint": "best.pt",
        "weights": checkpoint["weights"],
        "best_epoch": checkpoint["epoch"],
        "val_forces_mae_meV_per_A": checkpoint["val"]["forces_mae_meV_per_A"],
        "epochs_trained": len(log),
        "train_time_s": sum(epoch_times),
        "train_hours": sum(epoch_times) / 3600.0,
        "train_samples_per_s": samples_per_s,
        "num_parameters": checkpoint["num_parameters"],
        "device": str(device),
        "versions": _versions(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    path = Path(metrics_path) if metrics_path is not None else run_dir / "metrics.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, path)
    return metrics
