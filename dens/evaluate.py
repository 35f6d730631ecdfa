"""Evaluation of a trained run: energy and force MAE on held-out splits, written to metrics.json.

The run is loaded through dens.inference: the best-validation weights (EMA weights when EMA is
on) from run_dir/checkpoints/best.pt, no noise and no force input (DeNS is training only,
paper Sec. 3.2), de-normalised with the training statistics stored in the checkpoint. The
splits are the ones the dataset's ``evaluate`` role names (config/datasets.yaml): MD17's test
split, OC20 S2EF-2M's four validation splits. With several splits the top-level MAEs are the
mean over splits (each split weighted equally, as OC20 reports them) and ``splits`` holds each
split's own.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_geometric.data import Batch, Data

from dens.inference import BuildModel, load_trained_model, predict
from dens.models import build_model as build_registered_model
from dens.normalization import Normalizer

_VERSIONED = ("dens", "torch", "e3nn", "torch-geometric", "ase", "numpy", "fairchem-core")


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


MAE_KEYS = (
    "energy_mae_meV",
    "forces_mae_meV_per_A",
    "zero_forces_mae_meV_per_A",
    "reference_energy_mae_meV",
)


def evaluate(
    run_dir: Path,
    splits: Mapping[str, Sequence[Data]],
    build_model: BuildModel = build_registered_model,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    metrics_path: Path | None = None,
) -> dict[str, Any]:
    """Evaluate run_dir's best checkpoint on each of ``splits`` ({name: dataset}); write and
    return the metrics.

    batch_size: defaults to the experiment's optim.eval_batch_size.
    metrics_path: defaults to run_dir/metrics.json.
    Training wall time (sum of epoch times) and training throughput (samples per second of
    optimiser steps, over the whole run) come from run_dir/log.csv.
    """
    if not splits:
        raise ValueError("evaluate needs at least one split")
    run_dir = Path(run_dir)
    trained = load_trained_model(run_dir, build_model, device)
    checkpoint = trained.checkpoint
    experiment = checkpoint["experiment"]
    batch_size = batch_size or int(experiment["optim"]["eval_batch_size"])
    per_split = {
        name: mean_absolute_errors(trained.model, dataset, trained.normalizer, batch_size, device)
        for name, dataset in splits.items()
    }
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
        "split": "+".join(per_split),
        **{key: sum(e[key] for e in per_split.values()) / len(per_split) for key in MAE_KEYS},
        "n_test": sum(e["num_structures"] for e in per_split.values()),
        "n_test_free_atoms": sum(e["num_free_atoms"] for e in per_split.values()),
        "splits": per_split,
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
