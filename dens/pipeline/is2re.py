"""The relax job of a trained run: IS2RE by relaxation (paper Sec. 4.1.2 and 4.2, Tables 2, 3).

The initial structures of the dataset's relax splits (config/datasets.yaml role ``relax``: OC20
``is2re_test``, OC22 ``is2re_test_id`` / ``is2re_test_ood``) are relaxed with the run's best
weights (dens.inference: no noise, no force input) by the batched L-BFGS of
dens.relaxation.driver, and the energy the model predicts for the relaxed structure is the IS2RE
prediction, as fairchem 1.x's ``OCPTrainer.run_relaxations`` does.

Outputs in ``<run>/relax/`` (dens.pipeline.paths):

``systems.jsonl``
    One JSON line per finished system, appended (and flushed to disk) as each one leaves the
    batch: ``key`` (``<split file>/<sid>``), ``split`` (the challenge split), ``sid``,
    ``energy`` (eV), ``label`` (``y_relaxed`` where the row has it, else null), ``steps``,
    ``converged``, ``max_force`` (eV/Å, free atoms), ``positions`` (Å, float64). A job killed
    part-way resumes from it: finished systems are not relaxed again. ``state.json`` beside it
    records what the lines were computed with (checkpoint digest, L-BFGS settings, the split
    files' sizes and times, the systems per split); when any of it differs the lines are
    discarded and every system is relaxed afresh. A rerun with everything unchanged (Snakemake's
    ``--forcerun relax``) only rewrites the outputs; delete ``systems.jsonl`` to relax again,
    e.g. after changing dens.relaxation itself.
``relaxed.aselmdb``
    The relaxed structures in row order, one row per system (positions, the predicted energy and
    forces; key-value pairs ``sid``, ``split``, ``steps``, ``converged``, ``max_force``,
    ``y_relaxed`` where known, ``source_split``): readable by ``ase db`` and fairchem's
    AseDBDataset.
``submission.npz``
    The evaluation server's IS2RE file (dens.pipeline.submission, ``IS2RE_CHALLENGES``).
``metrics.json`` (written last)
    Where every row has a relaxed-energy label (generated data; OC22 IS2RE-Total where the
    release has them): ``energy_mae_meV`` and ``ewt`` (the fraction within 0.02 eV, OC20's
    ``energy_within_threshold``) per challenge split under ``splits`` and as the mean over the
    splits (each weighted equally, as the servers average), with ``metrics_source: "local
    labels"``; else ``metrics_source: null`` and the server's results come back through
    ``relax/server_results.json``. Always: systems per split, converged fraction, mean and
    maximum steps, the settings, wall time and systems per second of this invocation.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dens import atomic_files, layout
from dens.atomic_files import file_digest
from dens.data.validation import MAX_ATOMIC_NUMBER, check_atoms, model_max_atomic_number
from dens.errors import DataError, InvalidDataError
from dens.evaluate import run_identity
from dens.inference import BuildModel, load_trained_model
from dens.layout import RunDirectory
from dens.models import build_model as build_registered_model
from dens.pipeline.challenges import LOCAL_LABELS, Challenge, split_means
from dens.pipeline.submission import (
    SplitPredictions,
    challenge_split,
    save_npz,
    submission_arrays,
)
from dens.relaxation.driver import Predict, Relaxed, System, relax_systems
from dens.relaxation.lbfgs import LBFGSSettings

EWT_THRESHOLD_EV = 0.02
"""OC20's IS2RE energy-within-threshold: |predicted - DFT relaxed energy| < 0.02 eV."""


@dataclass(frozen=True)
class InitialStructure:
    """One row of a relax split: the system to relax, its challenge split, sid (as the row has
    it; the server's id is ``str(sid)``), relaxed-energy label (None when the row has none) and
    the elements the run's training data lacks (symbols; relaxed all the same)."""

    system: System
    split: str
    sid: int | str
    label: float | None
    source_split: str
    unseen: tuple[str, ...] = ()


def read_initial_structures(
    path: Path,
    challenge: Challenge,
    limit: int | None = None,
    elements: tuple[int, ...] | None = None,
    max_atomic_number: int = MAX_ATOMIC_NUMBER,
) -> list[InitialStructure]:
    """The first ``limit`` (default all) rows of one relax split file (aselmdb). Every row needs
    a ``sid``; ``elements``: the atomic numbers the model was trained on (a row with others is
    relaxed all the same, as S2EF evaluation scores such rows, and says which in ``unseen``:
    mini-OC20's ood_cat / ood_both systems hold out whole metals). Every row passes
    dens.data.validation with atomic numbers up to ``max_atomic_number`` (the model's table):
    a refusal (InvalidStructureError) names the file, the row, its sid, the atom and the
    value."""
    import ase.db
    import lmdb
    from ase.data import chemical_symbols

    from dens.data.aselmdb_integrity import REBUILD, check_aselmdb
    from dens.data.structures import atoms_to_data

    path = Path(path)
    check_aselmdb(path)
    out: list[InitialStructure] = []
    try:
        db = ase.db.connect(path, readonly=True)
        try:
            for row in db.select(limit=limit):
                where = f"{path}: row {row.id}"
                keys = row.key_value_pairs
                if "sid" not in keys:
                    raise InvalidDataError(f"{where}: no sid (the server's IS2RE ids are sids)")
                sid = keys["sid"]
                atoms = row.toatoms()
                check_atoms(atoms, f"{where} (sid {sid})", max_atomic_number)
                unknown = set(atoms.numbers.tolist()) - set(elements or atoms.numbers.tolist())
                try:
                    data = atoms_to_data(atoms, torch.float32)
                except ValueError as error:
                    raise InvalidDataError(f"{where}: {error}") from error
                label = keys.get("y_relaxed")
                out.append(
                    InitialStructure(
                        System(
                            f"{path.stem}/{sid}",
                            data,
                            torch.tensor(atoms.positions, dtype=torch.float64),
                        ),
                        challenge_split(path.stem, keys, challenge, where),
                        sid,
                        None if label is None else float(label),
                        path.stem,
                        tuple(chemical_symbols[z] for z in sorted(unknown)),
                    )
                )
        finally:
            db.close()
    except lmdb.Error as error:
        raise DataError(f"{path} is damaged (LMDB: {error})", path, REBUILD) from error
    if not out:
        raise InvalidDataError(f"{path}: no rows to relax")
    return out


# -- resuming ------------------------------------------------------------------------------------
def read_finished(path: Path) -> dict[str, dict[str, Any]]:
    """The systems a previous invocation finished (``systems.jsonl``), by key; a last line cut
    short by a kill is ignored."""
    finished: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return finished
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                break  # written when the job was killed
            raise InvalidDataError(f"{path}: line {number} is not JSON ({error})") from error
        finished[record["key"]] = record
    return finished


def _record(result: Relaxed, structure: InitialStructure) -> dict[str, Any]:
    return {
        "key": result.key,
        "split": structure.split,
        "sid": str(structure.sid),
        "energy": result.energy,
        "label": structure.label,
        "steps": result.steps,
        "converged": result.converged,
        "max_force": result.max_force,
        "positions": result.positions.tolist(),
        "forces": result.forces.tolist(),
    }


def _write_json(path: Path, document: Any) -> None:
    atomic_files.write_text(path, json.dumps(document, indent=2) + "\n", "writing relaxations")


def relax_structures(
    structures: list[InitialStructure],
    predict: Predict,
    settings: LBFGSSettings,
    batch_size: int,
    systems_file: Path,
    device: str | torch.device = "cpu",
    progress: bool = True,
    stop_at: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Relax the ``structures`` not yet in ``systems_file`` and append each finished one to it
    (flushed and synced); yield the new records. A tqdm bar on stderr counts all systems.
    stop_at: see dens.relaxation.driver.relax_systems (StopRequested)."""
    finished = read_finished(systems_file)
    if systems_file.is_file():  # cut off a line the killed job left unfinished
        content = systems_file.read_bytes()
        if not content.endswith(b"\n"):
            with open(systems_file, "r+b") as handle:
                handle.truncate(content.rfind(b"\n") + 1)
    pending = [s for s in structures if s.system.key not in finished]
    by_key = {s.system.key: s for s in pending}
    with (
        open(systems_file, "a") as out,
        tqdm(
            total=len(structures),
            initial=len(structures) - len(pending),
            desc="relaxed systems",
            unit="system",
            file=sys.stderr,
            disable=not progress,
        ) as bar,
    ):
        systems = (s.system for s in pending)
        for result in relax_systems(systems, predict, settings, batch_size, device, stop_at):
            record = _record(result, by_key[result.key])
            out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())
            bar.update()
            yield record


# -- outputs ---------------------------------------------------------------------------------------
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


def relax_run(
    run_dir: Path,
    files: Mapping[str, Path],
    challenge: Challenge,
    settings: LBFGSSettings,
    batch_size: int,
    max_systems: int | None = None,
    build_model: BuildModel = build_registered_model,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    stop_at: float | None = None,
) -> dict[str, Any]:
    """Relax the first ``max_systems`` (default all) rows of each relax split file ``files``
    ({split name: aselmdb}) with ``run_dir``'s best checkpoint, ``batch_size`` systems at a
    time; write the outputs of the module notes (resuming from ``systems.jsonl``) and return the
    metrics. stop_at: stop then (StopRequested) and continue in the next call."""
    from dens.checkpoint import find_checkpoint

    if not files:
        raise ValueError("relax_run needs at least one relax split file")
    start = time.perf_counter()
    run_dir = Path(run_dir)
    checkpoint = find_checkpoint(run_dir)
    trained = load_trained_model(checkpoint, build_model, device)
    structures = [
        structure
        for path in files.values()
        for structure in read_initial_structures(
            path,
            challenge,
            max_systems,
            trained.normalizer.elements,
            model_max_atomic_number(trained.model),
        )
    ]
    labelled = [s.label is not None for s in structures]
    if any(labelled) and not all(labelled):
        raise InvalidDataError(
            f"{', '.join(map(str, files.values()))}: some rows have y_relaxed and some not"
        )
    missing = [split for split in challenge.splits if split not in {s.split for s in structures}]
    if missing:
        raise InvalidDataError(
            f"{', '.join(map(str, files.values()))}: no system of {challenge.name} split(s) "
            f"{', '.join(missing)}; the server needs all of {', '.join(challenge.splits)}"
        )
    unseen = {
        split: sum(bool(s.unseen) for s in structures if s.split == split)
        for split in challenge.splits
    }
    if any(unseen.values()):
        symbols = sorted({symbol for s in structures for symbol in s.unseen})
        print(
            f"warning: {sum(unseen.values())} system(s) contain element(s) "
            f"{', '.join(symbols)} absent from the run's training data; relaxed all the same",
            file=sys.stderr,
        )
    keys = [s.system.key for s in structures]
    if len(set(keys)) != len(keys):
        raise InvalidDataError(f"{', '.join(map(str, files.values()))}: duplicate sids in a split")

    run = RunDirectory(run_dir)
    atomic_files.make_folder(run.stage_dir("relax"), "creating relaxation folder")
    systems_file, state_file = run.relax_systems, run.relax_state
    state = {
        "checkpoint_sha256": file_digest(checkpoint),
        "settings": dataclasses.asdict(settings),
        "max_systems": max_systems,
        "split_files": {
            name: {"size": Path(p).stat().st_size, "mtime_ns": Path(p).stat().st_mtime_ns}
            for name, p in files.items()
        },
    }
    previous = json.loads(state_file.read_text()) if state_file.is_file() else None
    if previous != state:
        if systems_file.exists():
            print(f"{systems_file}: computed with other settings; relaxing afresh", file=sys.stderr)
        systems_file.unlink(missing_ok=True)
        _write_json(state_file, state)
    resumed = len(read_finished(systems_file))
    new = list(
        relax_structures(
            structures,
            trained.predict,
            settings,
            batch_size,
            systems_file,
            device,
            progress,
            stop_at,
        )
    )
    wall = time.perf_counter() - start
    finished = read_finished(systems_file)
    records = [finished[key] for key in keys]

    write_relaxed(run.relaxed_structures, structures, finished)
    predictions = {split: SplitPredictions() for split in challenge.splits}
    for record in records:
        predictions[record["split"]].ids.append(record["sid"])
        predictions[record["split"]].energy.append(record["energy"])
    save_npz(run.submission("relax"), submission_arrays(predictions, challenge))

    steps = np.array([r["steps"] for r in records])
    experiment = trained.experiment
    metrics = {
        **run_identity(experiment),
        "challenge": challenge.key,
        "submission": layout.SUBMISSION_FILES["relax"],
        "split_files": {name: str(path) for name, path in files.items()},
        "num_systems": {split: len(p.ids) for split, p in predictions.items()},
        "systems_with_unseen_elements": unseen,
        "metrics_source": LOCAL_LABELS if all(labelled) else None,
        **(is2re_metrics(records, challenge) if all(labelled) else {}),
        "converged_fraction": float(np.mean([r["converged"] for r in records])),
        "mean_steps": float(steps.mean()),
        "max_steps_taken": int(steps.max()),
        "optimizer": {"name": "batched L-BFGS (dens.relaxation)", **state["settings"]},
        "batch_size": batch_size,
        "max_systems_per_split": max_systems,
        "systems_relaxed_now": len(new),
        "systems_resumed": resumed,
        "relax_wall_s": wall,
        "systems_per_s": len(new) / wall if new else None,
        "device": str(device),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _write_json(run.metrics("relax"), metrics)
    return metrics
