"""Where a run stands (``Progress``), what it works with (``TrainingRun``), and its checkpoints:
``start_or_resume`` from last.pt, ``last_checkpoint`` / ``save_last``, ``best_checkpoint``
(layouts: dens.checkpoint)."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dens.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from dens.data.batch import Data
from dens.distributed import World
from dens.errors import ConfigError
from dens.layout import RunDirectory
from dens.models import count_parameters
from dens.normalization import Normalizer
from dens.runs import move_aside
from dens.training.labels import training_normalizer
from dens.training.schedule import Schedule
from dens.training.settings import TrainSettings
from dens.training.trainee import Trainee


@dataclass
class Progress:
    """Where a run stands; saved in last.pt (dens.checkpoint lists the fields)."""

    normalizer: Normalizer
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    epoch_sums: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] = field(
        default_factory=lambda: {"epoch": 0, "val_forces_mae_meV_per_A": math.inf}
    )
    history: list[dict[str, Any]] = field(default_factory=list)
    timing: dict[str, float] = field(
        default_factory=lambda: {"train_time_s": 0.0, "step_time_s": 0.0, "samples_seen": 0}
    )

    SAVED = ("epoch", "batch_in_epoch", "step", "epoch_sums", "best", "history", "timing")
    """The fields saved in last.pt as they are (the normalizer is saved as its dict)."""

    def to_state(self) -> dict[str, Any]:
        """The fields as last.pt holds them."""
        saved = {name: getattr(self, name) for name in self.SAVED}
        return {"normalizer": self.normalizer.to_dict(), **saved}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Progress:
        """Where the run of a last.pt's ``state`` stands."""
        saved = {name: state[name] for name in cls.SAVED}
        return cls(normalizer=Normalizer.from_dict(state["normalizer"]), **saved)


@dataclass(frozen=True)
class TrainingRun:
    """What a run works with from its start to its end (where it stands is ``Progress``): the
    settings, the trainee, the run's length, what it was started with (``started_with``: last.pt
    resumes only with the same), its directory, the datasets, the device and the processes, the
    hardware columns of log.csv (world_size, device, device_name, mixed_precision), the data
    loader's workers and whether this process shows a progress bar and console lines."""

    settings: TrainSettings
    trainee: Trainee
    schedule: Schedule
    start: Mapping[str, Any]
    run_dir: Path
    train_set: Sequence[Data]
    val_set: Sequence[Data]
    device: torch.device
    world: World
    hardware: Mapping[str, Any]
    num_workers: int = 0
    show_progress: bool = False

    @property
    def files(self) -> RunDirectory[Path]:
        return RunDirectory(self.run_dir)

    @property
    def last_path(self) -> Path:
        return self.files.checkpoint("last")

    @property
    def best_epoch_path(self) -> Path:
        return self.files.best_epoch_checkpoint

    @property
    def log_path(self) -> Path:
        return self.files.log


def start_or_resume(run: TrainingRun) -> Progress:
    """Resume from the run's last.pt when it was started with the same ``run.start``
    (``started_with``); otherwise move the old run aside (``move_aside``) and start afresh:
    the normaliser (``training_normalizer``), step 0. Says which in the log (stderr). Rank 0
    decides, moves and makes the normaliser; the other processes follow (they read last.pt
    themselves, each restoring its own RNG states)."""
    world, trainee, last_path = run.world, run.trainee, run.last_path
    state = _last_state(run.run_dir, run.start) if world.is_main else None
    if not world.from_main(state is not None):
        normalizer = None
        if world.is_main:
            normalizer = training_normalizer(run.settings.labels, run.train_set, run.settings.seed)
        return Progress(world.from_main(normalizer))
    if state is None:
        state = load_checkpoint(last_path)
    # One RNG dict per process (a dict: a checkpoint written before data parallelism).
    rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
    if len(rng) != world.size:
        raise ConfigError(
            f"{last_path} was written by {len(rng)} training process(es) and is resumed by "
            f"{world.size}: resume it with {len(rng)} (its DeNS draws are per process), or move "
            "the run directory away to start afresh"
        )
    trainee.model.load_state_dict(state["model"])
    if trainee.ema is not None:
        trainee.ema.load_state_dict(state["ema"])
    trainee.optimizer.load_state_dict(state["optimizer"])
    if state.get("grad_scaler"):  # {} when saved without mixed precision
        trainee.scaler.load_state_dict(state["grad_scaler"])
    _set_rng_state(rng[world.rank], trainee, run.device)
    progress = Progress.from_state(state)
    if world.is_main:
        print(
            f"resuming {last_path}: {progress.epoch} epochs and {progress.batch_in_epoch} "
            "batches done, same experiment, data and code",
            file=sys.stderr,
        )
    return progress


def _last_state(run_dir: Path, start: Mapping[str, Any]) -> dict[str, Any] | None:
    """last.pt if the run was started with ``start``; else None, after moving an old run
    aside."""
    files = RunDirectory(run_dir)
    last_path = files.checkpoint("last")
    if not last_path.is_file():
        return None
    state = load_checkpoint(last_path)
    changed = _differences(state.get("started_with"), dict(start), "run")
    if state["best"]["epoch"] > 0 and not files.best_epoch_checkpoint.is_file():
        changed.append(f"{files.best_epoch_checkpoint.name} is missing")
    if not changed:
        return state
    moved = move_aside(run_dir, "; ".join(changed))
    print(
        f"{last_path} was started with something else ({'; '.join(changed)}): "
        f"moved the previous run to {moved} and starting afresh",
        file=sys.stderr,
    )
    return None


def _differences(a: Any, b: Any, where: str = "experiment") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{where}.{key}")
        return out
    return [] if a == b else [f"{where}: {a!r} in last.pt, {b!r} now"]


def _rng_state(trainee: Trainee, device: torch.device) -> dict[str, Any]:
    cuda = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
    return {
        "dens": trainee.generator.get_state(),
        "dens_decision": trainee.decision_generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def _set_rng_state(state: Mapping[str, Any], trainee: Trainee, device: torch.device) -> None:
    """The RNG states of last.pt; one written before the batch decision (no "dens_decision")
    leaves the decision generator at its seed (it draws only with dens.decision "batch", which
    such a run did not have)."""
    trainee.generator.set_state(state["dens"])
    if "dens_decision" in state:
        trainee.decision_generator.set_state(state["dens_decision"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state(state["cuda"][0], device)


def last_checkpoint(run: TrainingRun, progress: Progress) -> dict[str, Any]:
    """The state of last.pt (layout: dens.checkpoint); every process takes part (each one's RNG
    states are gathered)."""
    trainee = run.trainee
    return {
        "format_version": FORMAT_VERSION,
        "kind": "last",
        "experiment": dict(run.start["experiment"]),
        "started_with": dict(run.start),
        "train_size": len(run.train_set),
        "model": trainee.model.state_dict(),
        "ema": None if trainee.ema is None else trainee.ema.state_dict(),
        "optimizer": trainee.optimizer.state_dict(),
        **progress.to_state(),
        "rng": run.world.gather(_rng_state(trainee, run.device)),
        "grad_scaler": trainee.scaler.state_dict(),
        "num_parameters": count_parameters(trainee.model),
    }


def save_last(run: TrainingRun, progress: Progress) -> None:
    """Rank 0 writes last.pt; no process goes on (or stops) before the file is complete."""
    state = last_checkpoint(run, progress)
    if run.world.is_main:
        save_checkpoint(state, run.last_path)
    run.world.barrier()


def best_checkpoint(
    run: TrainingRun, progress: Progress, val: Mapping[str, float]
) -> dict[str, Any]:
    """The state of best.pt: the inference weights of this epoch (layout: dens.checkpoint)."""
    trainee = run.trainee
    return {
        "format_version": FORMAT_VERSION,
        "kind": "best",
        "experiment": dict(run.start["experiment"]),
        "epoch": progress.epoch,
        "step": progress.step,
        "model": trainee.eval_model.state_dict(),
        "weights": "model" if trainee.ema is None else "ema",
        "normalizer": progress.normalizer.to_dict(),
        "val": {key: val[key] for key in ("energy_mae_meV", "forces_mae_meV_per_A")},
        "num_parameters": count_parameters(trainee.model),
    }
