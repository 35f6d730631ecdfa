"""Test splits: the evaluation server's submission file, test metrics, the server's results.

The labels of the OC20 S2EF and OC22 S2EF-Total test splits are not public; the paper's test
columns (Tables 2 and 3) come from the EvalAI evaluation server. :func:`write_submission`
predicts a trained run's test splits (dens.inference: best weights, no noise, no force input)
and writes the file the server takes, ``test/submission.npz`` in the run directory
(dens.layout.RunDirectory.submission), in the layout of fairchem 1.x (``OCPTrainer.predict`` and
``save_results``, then ``scripts/make_submission_file.py``): one compressed npz per challenge
holding every split of the challenge under split-prefixed keys,

    <split>_ids        str [n]: "<sid>_<fid>" ("<sid>" for rows without fid, as the trainer
                       names them), sorted (save_results keeps np.unique's order)
    <split>_energy     [n]: predicted energy (eV): OC20 the adsorption energy the labels are
                       referenced to, OC22 the total energy
    <split>_forces     [m, 3]: predicted forces (eV/Å) of the free atoms only, structure after
                       structure in the order of the ids
    <split>_chunk_idx  int64 [n - 1]: cumulative free-atom counts, where np.split(forces,
                       chunk_idx) gives each structure's forces

with <split> one of the challenge's splits (dens.pipeline.challenges.CHALLENGES; OC20: id, ood_ads,
ood_cat, ood_both; OC22: id, ood). Energy and forces are float16 for OC20 (the trainer's default
``prediction_dtype``) and float32 for OC22 (fairchem writes OC22 in float32; the official DeNS OC22
config sets it too). A test row's split is its ``subsplit`` key without ``test_`` (the OC20 test
LMDBs gathered into one split, dens.data.oc_convert), else the split's name without
``s2ef_test_`` when that is a challenge split (OC22), else its ``category`` key (generated
mini-OC20, dens.data.catalysts).

Where the test rows carry labels (the generated splits of the embedded scales), the same metrics
the server reports are computed locally from the predictions as written to the file
(dens.evaluate.ErrorSums: energy MAE, force MAE, force cosine, EFwT), per split and as the mean
over the challenge's splits (each weighted equally, as the OC20 leaderboard averages them).
``test/metrics.json`` records them with ``metrics_source: "local labels"``, or
``metrics_source: null`` when the rows have no labels (paper scale).

The server's results, read back from ``test/server_results.json`` in the run directory, and the
IS2RE files: dens.pipeline.challenges.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dens import atomic_files, layout
from dens.data.batch import Batch, Data
from dens.errors import InvalidDataError
from dens.evaluate import ErrorSums, run_identity
from dens.inference import BuildModel, TrainedModel, load_trained_model
from dens.layout import RunDirectory
from dens.models import build_model as build_registered_model
from dens.pipeline.challenges import LOCAL_LABELS, Challenge, split_means

IS2RE_VAL_PREFIX = "is2re_val_"
"""A split file named is2re_val_<split> holds that challenge split's IS2RE validation systems
(config/datasets.yaml role relax_val), scored like the test splits but with public labels."""


# -- reading test rows -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TestStructure:
    """One test row: model input (with ``energy`` and ``forces`` when labelled), its server id
    and the challenge split it belongs to."""

    data: Data
    id: str
    split: str
    labelled: bool


def challenge_split(
    file_split: str, keys: Mapping[str, Any], challenge: Challenge, where: str
) -> str:
    """The challenge split of a test row (module notes): ``subsplit``, the file's split name
    (without the challenge's ``file_prefix`` or :data:`IS2RE_VAL_PREFIX`) or ``category``;
    InvalidDataError naming ``where`` if none is a split of the challenge."""
    if "subsplit" in keys:
        split = str(keys["subsplit"]).removeprefix("test_")
    elif file_split.removeprefix(challenge.file_prefix) in challenge.splits:
        split = file_split.removeprefix(challenge.file_prefix)
    elif file_split.removeprefix(IS2RE_VAL_PREFIX) in challenge.splits:  # relax_val splits
        split = file_split.removeprefix(IS2RE_VAL_PREFIX)
    else:
        split = str(keys.get("category", ""))
    if split not in challenge.splits:
        raise InvalidDataError(
            f"{where}: no {challenge.name} test split (subsplit, file name or category gives "
            f"{split!r}; splits: {', '.join(challenge.splits)})"
        )
    return split


def read_test_rows(path: Path, challenge: Challenge) -> Iterator[TestStructure]:
    """The rows of one test split (a folder of aselmdb shards, or one aselmdb file) in order;
    labelled or not, all rows alike. A row's challenge split comes from the split's name."""
    from dens.data.split_folder import split_rows
    from dens.data.structures import atoms_to_data

    path = Path(path)
    labelled: bool | None = None
    for shard, row in split_rows(path):
        where = f"{shard}: row {row.id}"
        keys = row.key_value_pairs
        if "sid" not in keys:
            raise InvalidDataError(f"{where}: no sid (the server's ids are sid_fid)")
        has_labels = row.get("energy") is not None and row.get("forces") is not None
        if labelled is None:
            labelled = has_labels
        if has_labels != labelled:
            raise InvalidDataError(f"{where}: labelled and unlabelled rows mixed")
        atoms = row.toatoms()
        yield TestStructure(
            atoms_to_data(atoms, torch.float32, labels=has_labels),
            f"{keys['sid']}_{keys['fid']}" if "fid" in keys else str(keys["sid"]),
            challenge_split(path.stem, keys, challenge, where),
            has_labels,
        )


# -- predicting ------------------------------------------------------------------------------------
@dataclass
class SplitPredictions:
    """Predictions of one challenge split, one entry per structure: energy (eV), free-atom forces
    (eV/Å) and, for labelled rows, the labels of the same."""

    ids: list[str] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)
    forces: list[np.ndarray] = field(default_factory=list)
    label_energy: list[float] = field(default_factory=list)
    label_forces: list[np.ndarray] = field(default_factory=list)


def _predict_batch(
    trained: TrainedModel,
    structures: list[TestStructure],
    out: dict[str, SplitPredictions],
    device: str | torch.device,
) -> None:
    batch = Batch.from_data_list([s.data for s in structures]).to(device)
    energy, forces = trained.predict(batch)
    counts = batch.natoms.tolist()
    per_structure = zip(
        structures,
        energy.cpu().tolist(),
        torch.split(forces.cpu(), counts),
        torch.split(batch.fixed.cpu(), counts),
        strict=True,
    )
    for structure, e, f, fixed in per_structure:
        split = out[structure.split]
        split.ids.append(structure.id)
        split.energy.append(e)
        split.forces.append(f[~fixed].numpy())
        if structure.labelled:
            split.label_energy.append(float(structure.data.energy))
            split.label_forces.append(structure.data.forces[~fixed].numpy())


def predict_test(
    trained: TrainedModel,
    files: Mapping[str, Path],
    challenge: Challenge,
    batch_size: int,
    device: str | torch.device = "cpu",
) -> dict[str, SplitPredictions]:
    """Predictions for every row of the test split ``files`` ({split name: aselmdb file}), by
    challenge split; rows are read and predicted ``batch_size`` at a time."""
    out = {split: SplitPredictions() for split in challenge.splits}
    for path in files.values():
        pending: list[TestStructure] = []
        for structure in read_test_rows(path, challenge):
            pending.append(structure)
            if len(pending) == batch_size:
                _predict_batch(trained, pending, out, device)
                pending = []
        if pending:
            _predict_batch(trained, pending, out, device)
    return out


# -- the submission file ---------------------------------------------------------------------------
def submission_arrays(
    predictions: Mapping[str, SplitPredictions], challenge: Challenge
) -> dict[str, np.ndarray]:
    """The submission file's arrays (module notes; an IS2RE challenge: ``<split>_ids`` (sids)
    and ``<split>_energy`` only); every split of the challenge must have structures and unique
    ids."""
    arrays: dict[str, np.ndarray] = {}
    for split in challenge.splits:
        split_predictions = predictions.get(split)
        if split_predictions is None or not split_predictions.ids:
            raise InvalidDataError(
                f"{challenge.name}: the test files have no structure of split {split!r}; the "
                f"server needs all of {', '.join(challenge.splits)}"
            )
        ids = np.array(split_predictions.ids)
        order = np.argsort(ids, kind="stable")
        if len(np.unique(ids)) != len(ids):
            raise InvalidDataError(f"{challenge.name} split {split!r}: duplicate ids")
        arrays[f"{split}_ids"] = ids[order]
        arrays[f"{split}_energy"] = np.asarray(split_predictions.energy)[order].astype(
            challenge.dtype
        )
        if not challenge.forces:
            continue
        forces = [split_predictions.forces[i] for i in order]
        arrays[f"{split}_forces"] = np.concatenate(forces).reshape(-1, 3).astype(challenge.dtype)
        arrays[f"{split}_chunk_idx"] = np.cumsum([len(f) for f in forces], dtype=np.int64)[:-1]
    return arrays


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez_compressed to ``path``, written under a temporary name and then renamed."""
    with atomic_files.atomic_write(path, "writing submission") as handle:
        np.savez_compressed(handle, **arrays)


def local_metrics(
    predictions: Mapping[str, SplitPredictions],
    arrays: Mapping[str, np.ndarray],
    challenge: Challenge,
) -> dict[str, Any]:
    """Per split, the server's metrics (dens.pipeline.challenges.METRICS) of the predictions as
    written in ``arrays`` against the rows' labels, and their mean over the splits."""
    per_split: dict[str, dict[str, float]] = {}
    for split in challenge.splits:
        found = predictions[split]
        order = np.argsort(np.array(found.ids), kind="stable")
        counts = [len(found.label_forces[i]) for i in order]
        sums = ErrorSums()
        sums.add(
            torch.from_numpy(arrays[f"{split}_energy"].astype(np.float64)),
            torch.tensor([found.label_energy[i] for i in order], dtype=torch.float64),
            torch.from_numpy(arrays[f"{split}_forces"].astype(np.float64)),
            torch.from_numpy(np.concatenate([found.label_forces[i] for i in order]).reshape(-1, 3)),
            torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)),
        )
        per_split[split] = sums.result()
    return {**split_means(per_split), "splits": per_split}


def write_submission(
    run_dir: Path,
    files: Mapping[str, Path],
    challenge: Challenge,
    build_model: BuildModel = build_registered_model,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Predict the test split ``files`` ({split name: aselmdb file}) with ``run_dir``'s best
    checkpoint; write ``test/submission.npz`` and ``test/metrics.json`` (module notes) and return
    the metrics. batch_size: defaults to the experiment's optim.eval_batch_size."""
    if not files:
        raise ValueError("write_submission needs at least one test split file")
    run_dir = Path(run_dir)
    trained = load_trained_model(run_dir, build_model, device)
    experiment = trained.experiment
    batch_size = batch_size or int(experiment["optim"]["eval_batch_size"])
    predictions = predict_test(trained, files, challenge, batch_size, device)
    arrays = submission_arrays(predictions, challenge)
    save_npz(RunDirectory(run_dir).submission(), arrays)
    labelled = all(len(p.label_energy) == len(p.ids) for p in predictions.values())
    metrics = {
        **run_identity(experiment),
        "challenge": challenge.key,
        "submission": layout.SUBMISSION_FILES["test"],
        "precision": np.dtype(challenge.dtype).name,
        "split_files": {name: str(path) for name, path in files.items()},
        "num_structures": {split: len(p.ids) for split, p in predictions.items()},
        "metrics_source": LOCAL_LABELS if labelled else None,
        **(local_metrics(predictions, arrays, challenge) if labelled else {}),
        "device": str(device),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    path = RunDirectory(run_dir).metrics("test")
    atomic_files.write_text(path, json.dumps(metrics, indent=2) + "\n", "writing metrics")
    return metrics
