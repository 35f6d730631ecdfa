"""A training run's directory: what the run was started with, and its outputs.

A run (one experiment, scale and training seed: dens.pipeline.paths.run) resumes from
checkpoints/last.pt only when it was started with the same experiment, data and code
(``started_with``); otherwise the old run is moved aside, never deleted (``move_aside``). The
best epoch's checkpoint is kept inside the run and checkpoints/best.pt, the file the pipeline
declares (and Snakemake deletes before rerunning a job), is published from it (``publish``), so a
finished run asked again writes its outputs again without training. Each output the training job
declares also has a second name in the run (``keep_outputs``), from which a run moved aside gets
back what Snakemake deleted before the job that moved it (``move_aside``).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dens import atomic_files
from dens.checkpoint import FORMAT_VERSION
from dens.data.batch import Data
from dens.layout import TRAIN_OUTPUTS, RunDirectory


def publish(source: Path, target: Path) -> None:
    """Make ``target`` a copy of ``source`` (a hard link where possible), atomically. Nothing
    to do when it is one already (renaming a second link of the same file over it would leave
    the temporary name behind: rename(2) does nothing for two links of one file)."""
    if target.exists() and os.path.samefile(source, target):
        return
    with atomic_files.atomic_path(target, "publishing") as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def started_with(
    experiment: Mapping[str, Any], train_set: Sequence[Data], val_set: Sequence[Data]
) -> dict[str, Any]:
    """What a run was started with, saved in last.pt: a run resumes only if this is unchanged.

    The resolved experiment, the code version that matters (dens and the checkpoint format),
    and per dataset its number of structures and, for files, their size and the SHA-256 of the
    provenance.json written beside them (a regenerated dataset has a new one; a touched file
    keeps it). The training seed is part of the experiment."""
    return {
        "experiment": dict(experiment),
        "code": {"dens": _dens_version(), "checkpoint_format": FORMAT_VERSION},
        "train_set": _dataset_fingerprint(train_set),
        "val_set": _dataset_fingerprint(val_set),
    }


def _dens_version() -> str:
    try:
        return importlib.metadata.version("dens")
    except importlib.metadata.PackageNotFoundError:
        return "source"


def _dataset_fingerprint(dataset: Sequence[Data]) -> dict[str, Any]:
    """The dataset's size and, for a file, atomic_files.file_fingerprint (the provenance's
    digest only where there is one: the keys runs saved in last.pt since they started)."""
    fingerprint: dict[str, Any] = {"structures": len(dataset)}
    path = getattr(dataset, "path", None)
    if path is not None:
        file = atomic_files.file_fingerprint(path)
        fingerprint.update({key: value for key, value in file.items() if value is not None})
    return fingerprint


def keep_outputs(run_dir: Path) -> None:
    """Give each of the run's ``TRAIN_OUTPUTS`` (dens.layout) that exists a second name in its
    ``kept_dir``, <run>/.kept/<its path> (``publish``: a hard link, no space taken, where the
    file system has them), after the training job wrote it: Snakemake deletes the declared names
    before a rerun of the job (``remove_existing_output``), the second names stay."""
    for name in TRAIN_OUTPUTS:
        path = run_dir / name
        if path.is_file():
            kept = RunDirectory(run_dir).kept_dir / name
            if kept.is_file() and os.path.samefile(path, kept):
                continue  # already its second name: nothing to write (a full or read-only disk)
            kept.parent.mkdir(parents=True, exist_ok=True)
            publish(path, kept)


def move_aside(run_dir: Path, reason: str) -> Path:
    """Move a run directory whose last.pt no longer matches aside (never delete a run):
    <run>.previous-<UTC time>/, with the reason in <that>/MOVED_ASIDE.txt. The training outputs
    Snakemake deleted before the job that moves it come back from their second names
    (``keep_outputs``), so the moved run holds everything it had."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = run_dir.with_name(f"{run_dir.name}.previous-{stamp}")
    run_dir.rename(target)
    restored = []
    for name in TRAIN_OUTPUTS:
        kept = RunDirectory(target).kept_dir / name
        if kept.is_file() and not (target / name).exists():
            publish(kept, target / name)
            restored.append(name)
    note = f"moved aside from {run_dir}: {reason}\n"
    if restored:
        note += f"restored from {RunDirectory(target).kept_dir.name}/ (deleted by Snakemake before "
        note += "the job): "
        note += ", ".join(restored) + "\n"
    (target / "MOVED_ASIDE.txt").write_text(note)
    return target
