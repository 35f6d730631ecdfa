"""Evaluation of a trained run: energy and force MAE on held-out splits, written to metrics.json.

The run is loaded through dens.inference: the best-validation weights (EMA weights when EMA is
on) from run_dir/checkpoints/best.pt, no noise and no force input (DeNS is training only,
paper Sec. 3.2), de-normalised with the training statistics stored in the checkpoint. The
splits are the ones the dataset's ``evaluate`` role names (config/datasets.yaml): MD17's test
split, OC20 S2EF-2M's four validation splits, OC22's val_id and val_ood. With several splits the
top-level MAEs are the mean over splits (each split weighted equally, as OC20 reports its four
sub-splits; Table 1) and ``splits`` holds each split's own (OC22 reports ID and OOD apart; Table
3). Test splits without public labels go to the evaluation server instead
(dens.pipeline.submission).

Metrics (the MD17/OC20 conventions, Section 4):
    energy MAE (meV)       mean over structures of |E_hat - E| against the dataset's label:
                           total energies (MD17, OC22), adsorption energies referenced to the
                           clean slab and gas-phase molecules (OC20; dens.data.catalysts)
    force MAE (meV/Å)      mean over free atoms and x, y, z of |f_hat - f| (OC20's fixed
                           sub-surface atoms excluded; OC22 and MD17 have none)
    force cos, EFwT        OC20's force cosine similarity (mean over free atoms) and energy and
                           forces within threshold (:class:`ErrorSums`)
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
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dens import atomic_files
from dens.data.batch import Batch, Data
from dens.data.validation import check_elements_embedded
from dens.inference import BuildModel, load_trained_model, predict
from dens.layout import RunDirectory
from dens.models import build_model as build_registered_model
from dens.normalization import Normalizer
from dens.training.log import is_epoch_end

_VERSIONED = ("dens", "torch", "e3nn", "ase", "numpy", "fairchem-core")


EFWT_ENERGY_EV = 0.02
EFWT_FORCES_EV_PER_A = 0.03
"""OC20's EFwT thresholds: a structure counts when its energy is within 0.02 eV and every force
component of its free atoms within 0.03 eV/Å (fairchem 1.x modules/evaluator.py)."""


@dataclass
class ErrorSums:
    """Running sums of the S2EF metrics over batches, as the OC20 evaluator defines them
    (fairchem 1.x modules/evaluator.py): energy MAE per structure, force MAE per free-atom
    component, force cosine similarity per free atom, EFwT per structure. Free atoms only."""

    structures: int = 0
    free_atoms: int = 0
    energy_abs: float = 0.0
    forces_abs: float = 0.0
    forces_cos: float = 0.0
    within: int = 0

    def add(
        self,
        energy: Tensor,
        label_energy: Tensor,
        forces: Tensor,
        label_forces: Tensor,
        structure: Tensor,
    ) -> None:
        """Add structures: predicted and label energies [B] (eV); predicted and label forces
        [M, 3] (eV/Å) of the atoms to score (the free atoms); ``structure`` [M] the index in
        0..B-1 of each of those atoms' structure."""
        energy_error = (energy.double() - label_energy.double()).abs()
        force_error = (forces.double() - label_forces.double()).abs()
        cosine = torch.cosine_similarity(forces.double(), label_forces.double(), dim=-1)
        worst = torch.zeros_like(energy_error).scatter_reduce(
            0, structure, force_error.amax(dim=-1), "amax"
        )
        within = (energy_error < EFWT_ENERGY_EV) & (worst < EFWT_FORCES_EV_PER_A)
        self.structures += int(energy_error.numel())
        self.free_atoms += int(structure.numel())
        self.energy_abs += float(energy_error.sum())
        self.forces_abs += float(force_error.sum())
        self.forces_cos += float(cosine.sum())
        self.within += int(within.sum())

    def result(self) -> dict[str, float]:
        """energy_mae_meV, forces_mae_meV_per_A, forces_cos, efwt (a fraction),
        num_structures, num_free_atoms."""
        if self.structures == 0:
            raise ValueError("cannot evaluate on an empty dataset")
        atoms = max(self.free_atoms, 1)
        return {
            "energy_mae_meV": 1000.0 * self.energy_abs / self.structures,
            "forces_mae_meV_per_A": 1000.0 * self.forces_abs / (3 * atoms),
            "forces_cos": self.forces_cos / atoms,
            "efwt": self.within / self.structures,
            "num_structures": self.structures,
            "num_free_atoms": self.free_atoms,
        }


def mean_absolute_errors(
    model: nn.Module,
    dataset: Sequence[Data],
    normalizer: Normalizer,
    batch_size: int,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Energy and force MAE of `model` on `dataset` (see the module notes), plus force cosine,
    EFwT (:class:`ErrorSums`) and the baselines.

    Returns energy_mae_meV, forces_mae_meV_per_A, forces_cos, efwt, zero_forces_mae_meV_per_A,
    reference_energy_mae_meV, num_structures, num_free_atoms. Restores the model's mode.
    """
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    was_training = model.training
    model.eval()
    sums = ErrorSums()
    zero_abs = reference_abs = 0.0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = Batch.from_data_list(items).to(device)
        energy, forces = predict(model, batch, normalizer)
        free = ~batch.fixed
        sums.add(energy, batch.energy, forces[free], batch.forces[free], batch.batch[free])
        label = batch.energy.to(torch.float64)
        reference = normalizer.denormalize_energy(
            torch.zeros_like(label), batch.atomic_numbers, batch.batch
        )
        reference_abs += float((reference - label).abs().sum())
        zero_abs += float(batch.forces[free].double().abs().sum())
    model.train(was_training)
    errors = sums.result()
    return {
        **errors,
        "zero_forces_mae_meV_per_A": 1000.0 * zero_abs / (3 * max(errors["num_free_atoms"], 1)),
        "reference_energy_mae_meV": 1000.0 * reference_abs / len(dataset),
    }


def _training_log(run_dir: Path) -> list[dict[str, str]]:
    path = RunDirectory(run_dir).log
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path} (train the run first)")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def training_cost(log: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """What training took, from the epoch rows of log.csv (dens.training.log.LOG_COLUMNS; the
    rows of validations inside an epoch are left out, ``is_epoch_end``):

    train_time_s, train_hours          wall time: the sum of the epoch times (with validation)
    train_samples_per_s                structures per second of optimiser steps, all devices
    train_samples_per_s_per_device     the same per device (the paper's samples per GPU-second)
    train_devices, train_device,       how many devices of which kind ("cuda" or "cpu") and
      train_device_name                model trained it; train_mixed_precision
    train_device_hours                 wall hours x devices
    train_gpu_hours                    the same, only when every epoch trained on GPUs

    Every epoch has the same number of samples, so a run's rate is the harmonic mean of its
    epochs'. Rows written before the device columns existed count as one device of unknown
    kind (no GPU-hours)."""
    log = [row for row in log if is_epoch_end(row)]
    seconds = [float(row["epoch_time_s"]) for row in log]
    devices = [int(row.get("world_size") or 1) for row in log]
    rates = [float(row["train_samples_per_s"]) for row in log]
    kinds = sorted({row.get("device") or "unknown" for row in log})
    names = sorted({row.get("device_name") or "unknown" for row in log})
    mixed = {row.get("mixed_precision") == "True" for row in log}
    cost = {
        "train_time_s": sum(seconds),
        "train_hours": sum(seconds) / 3600.0,
        "train_samples_per_s": _harmonic_mean(rates),
        "train_samples_per_s_per_device": _harmonic_mean(
            [rate / count for rate, count in zip(rates, devices, strict=True)]
        ),
        "train_devices": max(devices, default=0),
        "train_device": "+".join(kinds),
        "train_device_name": "+".join(names),
        "train_mixed_precision": mixed == {True},
        "train_device_hours": sum(s * d for s, d in zip(seconds, devices, strict=True)) / 3600.0,
    }
    if kinds == ["cuda"]:
        cost["train_gpu_hours"] = cost["train_device_hours"]
    return cost


def _harmonic_mean(values: Sequence[float]) -> float:
    return len(values) / sum(1.0 / value for value in values) if values else math.nan


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


RUN_IDENTITY = {"experiment": "name", "scale": "scale", "seed": "seed", "dataset": "dataset"}
"""Metrics-file key: key of the resolved experiment."""


def run_identity(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """The keys that open every metrics file of a run (evaluation, S2EF test submission, IS2RE
    relaxation): the experiment's name, scale, seed and dataset."""
    return {key: experiment[name] for key, name in RUN_IDENTITY.items()}


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
    Training wall time, throughput and device-hours come from run_dir/log.csv
    (``training_cost``); a run imported from a fairchem checkpoint (dens.pipeline.checkpoint_import)
    has none, and its metrics say where it came from (``imported_from``) instead.
    """
    if not splits:
        raise ValueError("evaluate needs at least one split")
    run_dir = Path(run_dir)
    trained = load_trained_model(run_dir, build_model, device)
    checkpoint = trained.checkpoint
    experiment = checkpoint["experiment"]
    batch_size = batch_size or int(experiment["optim"]["eval_batch_size"])
    for name, dataset in splits.items():
        check_elements_embedded(dataset, trained.model, str(getattr(dataset, "path", name)))
    per_split = {
        name: mean_absolute_errors(trained.model, dataset, trained.normalizer, batch_size, device)
        for name, dataset in splits.items()
    }
    imported = checkpoint.get("imported_from")  # dens.pipeline.checkpoint_import: no training here
    log = [] if imported else _training_log(run_dir)
    metrics = {
        **run_identity(experiment),
        "split": "+".join(per_split),
        **{key: sum(e[key] for e in per_split.values()) / len(per_split) for key in MAE_KEYS},
        "n_test": sum(e["num_structures"] for e in per_split.values()),
        "n_test_free_atoms": sum(e["num_free_atoms"] for e in per_split.values()),
        "splits": per_split,
        "checkpoint": RunDirectory(run_dir).checkpoint().name,
        "weights": checkpoint["weights"],
        "best_epoch": checkpoint["epoch"],
        "val_forces_mae_meV_per_A": (checkpoint["val"] or {}).get("forces_mae_meV_per_A"),
        "epochs_trained": sum(map(is_epoch_end, log)),
        **(training_cost(log) if log else {"imported_from": imported}),
        "num_parameters": checkpoint["num_parameters"],
        "device": str(device),
        "versions": _versions(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    path = Path(metrics_path) if metrics_path is not None else RunDirectory(run_dir).metrics()
    atomic_files.write_text(path, json.dumps(metrics, indent=2) + "\n", "writing metrics")
    return metrics
