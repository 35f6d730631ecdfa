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
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dens import atomic_files
from dens.atomic_files import file_digest
from dens.data.validation import MAX_ATOMIC_NUMBER, check_atoms, model_max_atomic_number
from dens.errors import InvalidDataError
from dens.inference import BuildModel, TrainedModel, load_trained_model
from dens.layout import RunDirectory
from dens.models import build_model as build_registered_model
from dens.pipeline.challenges import Challenge
from dens.pipeline.is2re_outputs import relax_metrics, write_json, write_relaxed, write_submission
from dens.pipeline.submission import challenge_split
from dens.relaxation.driver import Predict, Relaxed, System, relax_systems
from dens.relaxation.lbfgs import LBFGSSettings


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
    """The first ``limit`` (default all) rows of one relax split (a folder of aselmdb shards, or
    one aselmdb file). Every row needs
    a ``sid``; ``elements``: the atomic numbers the model was trained on (a row with others is
    relaxed all the same, as S2EF evaluation scores such rows, and says which in ``unseen``:
    mini-OC20's ood_cat / ood_both systems hold out whole metals). Every row passes
    dens.data.validation with atomic numbers up to ``max_atomic_number`` (the model's table):
    a refusal (InvalidStructureError) names the file, the row, its sid, the atom and the
    value."""
    from dens.data.split_folder import split_rows

    path = Path(path)
    out = [
        _initial_structure(row, path, challenge, elements, max_atomic_number, shard)
        for shard, row in split_rows(path, limit)
    ]
    if not out:
        raise InvalidDataError(f"{path}: no rows to relax")
    return out


def _initial_structure(
    row: Any,
    path: Path,
    challenge: Challenge,
    elements: tuple[int, ...] | None,
    max_atomic_number: int,
    shard: Path,
) -> InitialStructure:
    """One row of the relax split ``path`` (an ase.db row of its file ``shard``), checked (see
    :func:`read_initial_structures`)."""
    from ase.data import chemical_symbols

    from dens.data.structures import atoms_to_data

    where = f"{shard}: row {row.id}"
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
    return InitialStructure(
        System(f"{path.stem}/{sid}", data, torch.tensor(atoms.positions, dtype=torch.float64)),
        challenge_split(path.stem, keys, challenge, where),
        sid,
        None if label is None else float(label),
        path.stem,
        tuple(chemical_symbols[z] for z in sorted(unknown)),
    )


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


# -- the job -------------------------------------------------------------------------------------
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
    structures = read_relax_splits(files, challenge, max_systems, trained)
    unseen = check_structures(structures, files, challenge)
    run = RunDirectory(run_dir)
    atomic_files.make_folder(run.stage_dir("relax"), "creating relaxation folder")
    start_afresh_if_changed(run, checkpoint, settings, max_systems, files)
    systems_file = run.relax_systems
    resumed = len(read_finished(systems_file))
    relax = relax_structures(
        structures, trained.predict, settings, batch_size, systems_file, device, progress, stop_at
    )
    new = list(relax)
    wall = time.perf_counter() - start
    finished = read_finished(systems_file)
    records = [finished[s.system.key] for s in structures]
    write_relaxed(run.relaxed_structures, structures, finished)
    predictions = write_submission(run, records, challenge)
    metrics = relax_metrics(
        trained.experiment,
        records,
        challenge,
        files,
        predictions,
        unseen,
        settings,
        batch_size,
        max_systems,
        (len(new), resumed, wall),
        device,
    )
    write_json(run.metrics("relax"), metrics)
    return metrics


def read_relax_splits(
    files: Mapping[str, Path],
    challenge: Challenge,
    max_systems: int | None,
    trained: TrainedModel,
) -> list[InitialStructure]:
    """The first ``max_systems`` rows of each relax split file, checked against the elements and
    the atomic numbers of the ``trained`` model (:func:`read_initial_structures`)."""
    max_atomic_number = model_max_atomic_number(trained.model)
    return [
        structure
        for path in files.values()
        for structure in read_initial_structures(
            path, challenge, max_systems, trained.normalizer.elements, max_atomic_number
        )
    ]


def check_structures(
    structures: list[InitialStructure], files: Mapping[str, Path], challenge: Challenge
) -> dict[str, int]:
    """The systems of a relax job, checked: labelled all or none, of every challenge split, each
    sid once in a split. Returns the systems per challenge split with elements the run was not
    trained on (a warning on stderr names them)."""
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
    return unseen


def start_afresh_if_changed(
    run: RunDirectory,
    checkpoint: Path,
    settings: LBFGSSettings,
    max_systems: int | None,
    files: Mapping[str, Path],
) -> None:
    """``state.json`` of the run's relaxations: when what ``systems.jsonl`` was computed with
    differs (module notes), the lines are discarded and the new state written."""
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
        write_json(state_file, state)
