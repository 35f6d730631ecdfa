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

with <split> one of the challenge's splits (:data:`CHALLENGES`; OC20: id, ood_ads, ood_cat,
ood_both; OC22: id, ood). Energy and forces are float16 for OC20 (the trainer's default
``prediction_dtype``) and float32 for OC22 (fairchem writes OC22 in float32; the official DeNS
OC22 config sets it too). A test row's split is its ``subsplit`` key without ``test_`` (the OC20
test LMDBs gathered into one file, dens.data.oc_convert), else the file's split name without
``s2ef_test_`` when that is a challenge split (OC22), else its ``category`` key (generated
mini-OC20, dens.data.catalysts).

Where the test rows carry labels (the generated splits of the embedded scales), the same metrics
the server reports are computed locally from the predictions as written to the file
(dens.evaluate.ErrorSums: energy MAE, force MAE, force cosine, EFwT), per split and as the mean
over the challenge's splits (each weighted equally, as the OC20 leaderboard averages them).
``test/metrics.json`` records them with ``metrics_source: "local labels"``, or
``metrics_source: null`` when the rows have no labels (paper scale).

The server's results are read back from ``test/server_results.json`` in the run directory
(dens.layout.RunDirectory.server_results), a file the user writes from the numbers EvalAI shows
for the submission, validated against workflow/schemas/server_results.schema.yaml::

    {"challenge": "oc20_s2ef",                  # or "oc22_s2ef_total"
     "submission": "EvalAI submission 123456, 2024-05-01",   # optional: where it comes from
     "units": {"energy": "eV", "forces": "eV/Å"},            # or meV, meV/Å
     "splits": {"id": {"energy_mae": 0.2197, "forces_mae": 0.0127,
                       "forces_cos": 0.512, "efwt": 0.0081},  # forces_cos, efwt optional
                "ood_ads": {...}, "ood_cat": {...}, "ood_both": {...}}}

Every split of the challenge must be there; the tables (dens.pipeline.tables) prefer it to local
labels.

IS2RE (:data:`IS2RE_CHALLENGES`, Tables 2 and 3: relaxed energies from dens.pipeline.is2re)
works the same way with its own files in the run directory: ``relax/submission.npz``
(RunDirectory.submission("relax")) holds ``<split>_ids`` (the systems' sids as str,
sorted) and ``<split>_energy`` (float64, eV: the relaxed energy, OC20 adsorption / OC22 total), the
layout of fairchem's ``make_submission_file.py --is2re-relaxations``; a relax split's rows are
assigned to challenge splits like test rows (file prefix ``is2re_test_``). The server's IS2RE
results go to ``relax/server_results.json`` (RunDirectory.server_results("relax"))::

    {"challenge": "oc20_is2re",                 # or "oc22_is2re_total"
     "units": {"energy": "eV"},
     "splits": {"id": {"energy_mae": 0.309, "ewt": 0.093},   # ewt (within 0.02 eV) optional
                "ood_ads": {...}, "ood_cat": {...}, "ood_both": {...}}}
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
from dens.config_files import find_root, validate
from dens.data.batch import Batch, Data
from dens.errors import ConfigError, DataError, DensError, InvalidDataError
from dens.evaluate import ErrorSums, run_identity
from dens.inference import BuildModel, TrainedModel, load_trained_model
from dens.layout import RunDirectory
from dens.models import build_model as build_registered_model

LOCAL_LABELS = "local labels"
SERVER = "evaluation server"
METRICS = ("energy_mae_meV", "forces_mae_meV_per_A", "forces_cos", "efwt", "ewt")
"""Test metrics per split and as the mean over splits (units: meV, meV/Å, 1, fraction,
fraction); ``ewt`` (IS2RE: energy within 0.02 eV) only for IS2RE challenges, the others but
``energy_mae_meV`` only for S2EF ones."""


class ServerResultsError(DensError, ValueError):
    """An evaluation-server results file is unreadable or invalid; the message names the file and
    the key."""


@dataclass(frozen=True)
class Challenge:
    """One task of an evaluation server: S2EF (energy and forces per frame) or IS2RE (relaxed
    energy per system, ``forces`` False)."""

    key: str  # the ``challenge`` of a server results file
    name: str
    splits: tuple[str, ...]  # the server's splits: the key prefixes of the submission file
    dtype: type[np.floating]  # precision of energy (and forces) in the file
    forces: bool = True  # the file holds forces (S2EF) or energies only (IS2RE)
    file_prefix: str = "s2ef_test_"  # a split file named <file_prefix><split> holds that split


CHALLENGES = {
    "oc20": Challenge(
        "oc20_s2ef", "OC20 S2EF", ("id", "ood_ads", "ood_cat", "ood_both"), np.float16
    ),
    "oc22": Challenge("oc22_s2ef_total", "OC22 S2EF-Total", ("id", "ood"), np.float32),
}
"""Challenge of each dataset family whose test labels only the evaluation server has."""

IS2RE_CHALLENGES = {
    "oc20": Challenge(
        "oc20_is2re", "OC20 IS2RE", CHALLENGES["oc20"].splits, np.float64, False, "is2re_test_"
    ),
    "oc22": Challenge(
        "oc22_is2re_total",
        "OC22 IS2RE-Total",
        CHALLENGES["oc22"].splits,
        np.float64,
        False,
        "is2re_test_",
    ),
}
"""IS2RE challenge of each dataset family (relaxed energies, dens.pipeline.is2re). Energies are
float64: fairchem's make_submission_file.py (``write_is2re_relaxations``) stores the energies of
the trajectories' last frames as they are."""


IS2RE_VAL_PREFIX = "is2re_val_"
"""A split file named is2re_val_<split> holds that challenge split's IS2RE validation systems
(config/datasets.yaml role relax_val), scored like the test splits but with public labels."""


def challenge_for(family: str, task: str = "s2ef") -> Challenge:
    """The evaluation-server challenge of a dataset family (config/datasets.yaml ``family``) for
    ``task`` "s2ef" (:data:`CHALLENGES`) or "is2re" (:data:`IS2RE_CHALLENGES`)."""
    challenges = {"s2ef": CHALLENGES, "is2re": IS2RE_CHALLENGES}[task]
    if family not in challenges:
        raise ConfigError(
            f"dataset family {family!r} has no evaluation-server challenge; the {task.upper()} "
            f"test submission is for {', '.join(challenges)}"
        )
    return challenges[family]


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
    """The rows of one test split file (aselmdb) in order; labelled or not, all rows alike."""
    import ase.db
    import lmdb

    from dens.data.aselmdb import REBUILD, check_aselmdb
    from dens.data.structures import atoms_to_data

    path = Path(path)
    check_aselmdb(path)
    labelled: bool | None = None
    try:
        db = ase.db.connect(path, readonly=True)
        try:
            for row in db.select():
                where = f"{path}: row {row.id}"
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
        finally:
            db.close()
    except lmdb.Error as error:
        raise DataError(f"{path} is damaged (LMDB: {error})", path, REBUILD) from error


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
    """Per split, the server's metrics (:data:`METRICS`) of the predictions as written in
    ``arrays`` against the rows' labels, and their mean over the splits."""
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


def split_means(per_split: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The mean of each of :data:`METRICS` over the splits (each split weighted equally); a metric
    some split lacks is left out."""
    return {
        key: sum(values[key] for values in per_split.values()) / len(per_split)
        for key in METRICS
        if all(key in values for values in per_split.values())
    }


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


# -- the server's results --------------------------------------------------------------------------
ENERGY_UNITS = {"eV": 1000.0, "meV": 1.0}
FORCE_UNITS = {"eV/Å": 1000.0, "eV/A": 1000.0, "meV/Å": 1.0, "meV/A": 1.0}


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number the server reports")


def read_server_results(
    path: Path, challenge: Challenge, root: Path | None = None
) -> dict[str, Any]:
    """The server's results of a submission (module notes; S2EF or IS2RE) as test metrics in meV
    and meV/Å, per split and as the mean over the splits, with ``metrics_source: "evaluation
    server"``. ServerResultsError names the file and the key of any problem. root: where
    workflow/schemas/ is (default: dens.config_files.find_root())."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(), parse_constant=_refuse_constant)
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise ServerResultsError(f"{path}: not valid JSON: {error}") from error
    try:
        validate(document, "server_results", str(path), find_root() if root is None else root)
    except ConfigError as error:
        raise ServerResultsError(str(error)) from error
    if document["challenge"] != challenge.key:
        raise ServerResultsError(
            f"{path}: challenge: {document['challenge']!r}, but this run's test split goes to "
            f"{challenge.name} ({challenge.key!r})"
        )
    splits = document["splits"]
    missing = [split for split in challenge.splits if split not in splits]
    unknown = [split for split in splits if split not in challenge.splits]
    if missing or unknown:
        raise ServerResultsError(
            f"{path}: splits: "
            + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}")
            + f" ({challenge.name} has {', '.join(challenge.splits)})"
        )
    energy_scale = ENERGY_UNITS[document["units"]["energy"]]
    per_split = {}
    for split in challenge.splits:
        values = splits[split]
        converted = {"energy_mae_meV": energy_scale * values["energy_mae"]}
        if challenge.forces:
            force_scale = FORCE_UNITS[document["units"]["forces"]]
            converted["forces_mae_meV_per_A"] = force_scale * values["forces_mae"]
        converted |= {key: values[key] for key in ("forces_cos", "efwt", "ewt") if key in values}
        per_split[split] = converted
    return {
        "challenge": challenge.key,
        "metrics_source": SERVER,
        "submission": document.get("submission", ""),
        **split_means(per_split),
        "splits": per_split,
    }
