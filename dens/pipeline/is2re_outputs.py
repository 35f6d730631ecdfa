"""The outputs of a relax job (dens.pipeline.is2re, whose notes describe them): the relaxed
structures, the submission file and the metrics."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dens import atomic_files, layout
from dens.evaluate import run_identity
from dens.layout import RunDirectory
from dens.pipeline.challenges import LOCAL_LABELS, Challenge, split_means
from dens.pipeline.submission import SplitPredictions, save_npz, submission_arrays
from dens.relaxation.lbfgs import LBFGSSettings

if TYPE_CHECKING:
    from dens.pipeline.is2re import InitialStructure

EWT_THRESHOLD_EV = 0.02
"""OC20's IS2RE energy-within-threshold: |predicted - DFT relaxed energy| < 0.02 eV."""


def write_json(path: Path, document: Any) -> None:
    atomic_files.write_text(path, json.dumps(document, indent=2) + "\n", "writing relaxations")


def write_relaxed(path: Path, structures: list[InitialStructure], records: Mapping) -> int:
    """The relaxed structures (module notes) as an aselmdb file."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    from dens.data.aselmdb import write_aselmdb

    rows = []
    for structure in structures:
        record = records[structure.system.key]
        data = structure.system.data
        atoms = Atoms(
            numbers=data.atomic_numbers.numpy(),
            positions=np.asarray(record["positions"]),
            cell=data.cell[0].double().numpy() if "cell" in data else None,
            pbc=data.pbc[0].numpy() if "pbc" in data else False,
            tags=data.tags.numpy() if "tags" in data else None,
        )
        if data.fixed.any():
            atoms.set_constraint(FixAtoms(mask=data.fixed.numpy()))
        atoms.calc = SinglePointCalculator(
            atoms, energy=record["energy"], forces=np.asarray(record["forces"])
        )
        atoms.info = {
            "sid": structure.sid,
            "split": structure.split,
            "source_split": structure.source_split,
            "steps": record["steps"],
            "converged": record["converged"],
            "max_force": record["max_force"],
        }
        if structure.label is not None:
            atoms.info["y_relaxed"] = structure.label
        rows.append(atoms)
    return write_aselmdb(path, rows, {"content": "IS2RE relaxed structures (dens.relaxation)"})


def is2re_metrics(records: list[dict[str, Any]], challenge: Challenge) -> dict[str, Any]:
    """Per challenge split, the relaxed-energy MAE (meV) and EwT of labelled records, and their
    mean over the splits."""
    per_split = {}
    for split in challenge.splits:
        errors = np.array(
            [r["energy"] - r["label"] for r in records if r["split"] == split], dtype=np.float64
        )
        per_split[split] = {
            "energy_mae_meV": float(1000.0 * np.abs(errors).mean()),
            "ewt": float((np.abs(errors) < EWT_THRESHOLD_EV).mean()),
        }
    return {**split_means(per_split), "splits": per_split}


def write_submission(
    run: RunDirectory, records: list[dict[str, Any]], challenge: Challenge
) -> dict[str, SplitPredictions]:
    """The evaluation server's IS2RE file of the records; the predictions per challenge split."""
    predictions = {split: SplitPredictions() for split in challenge.splits}
    for record in records:
        predictions[record["split"]].ids.append(record["sid"])
        predictions[record["split"]].energy.append(record["energy"])
    save_npz(run.submission("relax"), submission_arrays(predictions, challenge))
    return predictions


def relax_metrics(
    experiment: dict[str, Any],
    records: list[dict[str, Any]],
    challenge: Challenge,
    files: Mapping[str, Path],
    predictions: dict[str, SplitPredictions],
    unseen: dict[str, int],
    settings: LBFGSSettings,
    batch_size: int,
    max_systems: int | None,
    counts: tuple[int, int, float],
    device: str | torch.device,
) -> dict[str, Any]:
    """The metrics of a relax job (module notes of dens.pipeline.is2re); ``counts``: the systems
    relaxed by this invocation, those it resumed, and its wall time (s)."""
    relaxed_now, resumed, wall = counts
    labelled = all(r["label"] is not None for r in records)
    steps = np.array([r["steps"] for r in records])
    return {
        **run_identity(experiment),
        "challenge": challenge.key,
        "submission": layout.SUBMISSION_FILES["relax"],
        "split_files": {name: str(path) for name, path in files.items()},
        "num_systems": {split: len(p.ids) for split, p in predictions.items()},
        "systems_with_unseen_elements": unseen,
        "metrics_source": LOCAL_LABELS if labelled else None,
        **(is2re_metrics(records, challenge) if labelled else {}),
        "converged_fraction": float(np.mean([r["converged"] for r in records])),
        "mean_steps": float(steps.mean()),
        "max_steps_taken": int(steps.max()),
        "optimizer": {"name": "batched L-BFGS (dens.relaxation)", **dataclasses.asdict(settings)},
        "batch_size": batch_size,
        "max_systems_per_split": max_systems,
        "systems_relaxed_now": relaxed_now,
        "systems_resumed": resumed,
        "relax_wall_s": wall,
        "systems_per_s": relaxed_now / wall if relaxed_now else None,
        "device": str(device),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
