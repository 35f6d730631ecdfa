"""What a run tells: its log.csv (``LOG_COLUMNS``, ``write_log``; ``is_epoch_end`` tells an
epoch's row from a mid-epoch validation's) and a console line per epoch (``reporter``)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dens.atomic_files import atomic_write

if TYPE_CHECKING:
    from dens.training.state import Progress, TrainingRun

EPOCH_END, MID_EPOCH = "epoch", "mid_epoch"
"""log.csv's ``kind``: the row of an epoch's end, or of a validation inside an epoch."""

LOG_COLUMNS = (
    "epoch",
    "step",
    "kind",
    "lr",
    "lambda_dens",
    "train_loss",
    "train_energy_loss",
    "train_forces_loss",
    "train_dens_loss",
    "val_energy_mae_meV",
    "val_forces_mae_meV_per_A",
    "train_samples_per_s",
    "epoch_time_s",
    "world_size",
    "device",
    "device_name",
    "mixed_precision",
)
"""log.csv, one row per epoch (kind EPOCH_END) and, with optim.val_every_steps, one per
validation inside an epoch (kind MID_EPOCH; rows written before this column have it empty, and
are epoch ends), in the order of their step. epoch is the (1-based) epoch the row belongs to;
step the optimiser steps taken; lr that of the last step; the train_* losses are means over the
epoch's steps so far; train_samples_per_s counts the structures of the global batches per second
of optimiser steps (all processes together); epoch_time_s is the wall time of the epoch (so far,
at a mid-epoch row) with its validations; world_size, device ("cuda" or "cpu") and device_name
(the GPU model, or the CPU architecture) say what trained it: throughput per device and
device-hours (dens.evaluate.training_cost, which reads the epoch rows)."""


def is_epoch_end(row: Mapping[str, Any]) -> bool:
    """Whether a log.csv row (as written, or as read back by csv.DictReader) closes an epoch."""
    return row.get("kind") in (None, "", EPOCH_END)


def write_log(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """Write the run's log.csv atomically (dens.atomic_files)."""
    with atomic_write(path, "writing training log", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(history)


def reporter(run: TrainingRun) -> Callable[[Progress, Mapping[str, float] | None], None]:
    """One line per epoch on stdout (the pipeline shows it in the Snakemake console): the run,
    the epoch, the validation MAEs and an estimate of the time left from the mean epoch time."""
    name, schedule = f"{run.settings.name} seed{run.settings.seed}", run.schedule

    def report(progress: Progress, val: Mapping[str, float] | None) -> None:
        if not run.show_progress:
            return
        if val is None:
            done = "starting" if progress.epoch == progress.batch_in_epoch == 0 else "resuming"
            line = f"{name}: {done} at epoch {progress.epoch + 1}/{schedule.epochs}"
        else:
            epochs = sum(map(is_epoch_end, progress.history))
            seconds = progress.timing["train_time_s"] / max(epochs, 1)
            left = seconds * (schedule.epochs - progress.epoch)
            line = (
                f"{name}: epoch {progress.epoch}/{schedule.epochs}, val force MAE "
                f"{val['forces_mae_meV_per_A']:.4g} meV/Å, energy MAE "
                f"{val['energy_mae_meV']:.4g} meV, {seconds:.1f} s/epoch, "
                f"about {_duration(left)} left"
            )
        print(line, flush=True)

    return report


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
