"""The training engine shared by every model family, with or without DeNS.

One explicit loop, read top to bottom in `train`:

    TrainSettings.from_experiment         (the experiment's optim and dens, read and checked once)
    build_trainee; start_or_resume                  (model, EMA, AdamW; or last.pt)
    for each epoch:                       (order: a permutation seeded by (seed, epoch))
        train_epoch: lambda_DeNS <- dens_coefficient (constant, or MD17's linear decay, per
                     epoch as the official MD17 code); for each batch:
            lr <- warm-up then cosine decay, per step or per epoch (`learning_rate`)
            loss <- Eq. 1, or with DeNS the mixed Eq. 1 / Eq. 6 batch (`loss_terms`)
            stop with NonFiniteLossError if the loss is NaN/inf (last good checkpoint kept)
            backward, clip the gradient norm, AdamW step, EMA update
            every optim.val_every_steps steps (if set): validate, a log.csv row (mid_epoch)
            on SIGTERM or at stop_at: save last.pt (mid-epoch), exit with
            dens.stopping.STOPPED_EXIT_CODE
        validate (EMA weights if EMA is on); end_epoch: log.csv row; best.pt by val force
        MAE; last.pt

Its pieces are the modules of dens.training: settings (``TrainSettings``), schedule
(``learning_rate``, ``epoch_batches``), optimizer (``weight_decay_exempt``, ``update_ema``),
labels (``training_normalizer``), losses (``batch_loss``, ``draw_corruption``, ``loss_terms``,
``free_atoms_per_process``), trainee (``build_trainee``, ``corruption_seed``, ``decision_seed``,
``use_mixed_precision``), state (``Progress``, the run context ``TrainingRun``,
``start_or_resume`` and the checkpoints), epoch (``train_epoch``, ``validate``, ``end_epoch``),
log (log.csv, console lines) and stop (SIGTERM, ``stop_at``).

Labels are normalised (`dens.normalization.Normalizer`, in float64, ``training_normalizer``):
E' = (E - mean) / std per structure (optionally after per-element references, fitted or from a
published file: optim.energy_reference_file), f' = f / force std; mean, std and force std are
fitted on the training set (force std = energy std) or given by optim.normalizer, as the official
OC20/OC22 configs give them. With DeNS the corrupted atoms' forces are encoded in the units the
experiment's ``dens.force_encoding_units`` names (Algorithm 2's normalised f', the raw eV/Å of
the official OC20/OC22 trainer, or the raw kcal/mol/Å of the official MD17 code) and the noise
head predicts eps / sigma; without DeNS the model gets no force input and no noise is predicted.
A batch's loss is ``batch_loss`` given its DeNS draw (``draw_corruption``, or a Corruption built
from injected draws); ``loss_terms`` chains the two.

AdamW (``weight_decay_exempt``): as the official code of each family: a model with
``no_weight_decay()`` (EquiformerV2, eSCN) is the fairchem trainer's case, exactly the listed
names are exempt; any other (the MD17 Equiformer) timm's, 1-d parameters and `*.bias`.
EMA: after every step, ema <- decay * ema + (1 - decay) * weights (floating-point entries of
the state dict; other buffers are copied).

Resume: if run_dir/checkpoints/last.pt exists, training continues from it (weights, EMA,
optimiser, step, position inside the epoch, RNG states, running epoch sums, best, log); on CPU
the result is bit-identical to an uninterrupted run. The experiment must be the same.
Checkpoint layout: see dens.checkpoint.

Determinism: the model is built after torch.manual_seed(seed); the data order, the DeNS
corruption (a torch.Generator seeded with `seed`, and for dens.decision "batch" a decision
generator seeded from `seed`, ``decision_seed``; both saved in checkpoints) and the data-loader
worker seeds depend only on the seed. The CPU kernels the models use (matmul, index_add,
index_select, scatter_reduce amax) are deterministic for a given number of threads, so a
resumed CPU run equals an uninterrupted one (tests/test_checkpoint.py, tests/test_reruns.py).
torch.use_deterministic_algorithms is not switched on: on CPU it changes none of these kernels,
and switching it imports torch._inductor (0.4 s of every training process beyond torch._dynamo,
which the optimizer imports anyway; measured with python -X importtime).

Data parallelism (dens.distributed; torchrun on one node, srun across nodes): optim.batch_size
is the global batch and each of the P processes takes an equal contiguous share of every batch
of the seeded order; DistributedDataParallel averages the gradients over processes. With the
per-structure normalisation of Algorithm 2 (loss = sum_j L_j / B) the mean over processes of
sum_{j in share} L_j / (B / P) is exactly the loss of the global batch, so the gradient is the
single-process gradient of the same batch (tests/test_distributed.py). optim.loss_reduction
"free_atoms" does what the official OC20/OC22 trainer does under DDP: the energy term and the
plain force (or corrupt-all noise) term are fairchem DDPLoss means (ocp 5d0f59e
``ocpmodels/modules/loss.py``: a process's error sum times P over the all-reduced count), i.e.
means over the structures and the free atoms of the GLOBAL batch (``free_atoms_per_process``,
one all-reduce per step), but a DeNS batch with partial corruption takes each process's own
free-atom mean (the official hybrid loss is a local torch.mean, DeNS
``denoising_forces_trainer.py``:216), so its gradient is the mean over processes of each share's
gradient, not the global batch's: as in the official code, and tested so. "atom" (a mean over
each share's atoms) is refused with several processes. The DeNS generator of process r is seeded
from (seed, r) (``corruption_seed``; rank 0 uses the single-process seed), so masks and noise are
independent per process and reproducible; with dens.decision "batch" the decision generator is
seeded alike on every process, so all take the same decision for the global batch, as the
official trainer's numpy draw (seeded alike on every rank by its base trainer). last.pt keeps
every process's RNG states and is resumed by as many processes. The logged loss terms are
averaged over processes, as are the NaN/inf check and a SIGTERM (any process's), so all
processes stop at the same step.
Validation is split over the processes and the error sums are added up. Rank 0 alone writes
checkpoints, log.csv and the console lines; the others wait for last.pt before stopping.

Validation draws none of the training's random numbers (torch's global generators are restored
after it: dens.training.epoch.validate), so the validations inside epochs that
optim.val_every_steps adds (learning curves with points between epoch ends) leave the weights,
best.pt (still chosen at epoch ends) and every metric as they are without them.

Mixed precision (``optim.mixed_precision``, ``dens train --[no-]mixed-precision``): float16
autocast of the forward pass and the loss with a GradScaler (the loss is scaled for backward and
the gradients unscaled before clipping; a step with inf/nan gradients is skipped), as the
official OC20/OC22 code's ``--amp`` (fairchem 1.x). On CUDA the experiment's
``optim.mixed_precision`` decides (default true); the MD17 experiments set it false, since the
official MD17 code trains in float32. The command-line switch overrides it; asking for it on
CPU is refused. Validation and evaluation run in float32.
"""

from __future__ import annotations

import functools
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dens.atomic_files import make_folder
from dens.checkpoint import save_checkpoint
from dens.data.batch import Data
from dens.data.validation import check_elements_embedded
from dens.denoising import LossSettings
from dens.distributed import World, process_group
from dens.errors import ConfigError
from dens.models import build_model as build_registered_model
from dens.runs import publish, started_with
from dens.training.epoch import NonFiniteLossError, end_epoch, train_epoch, validate
from dens.training.log import reporter, write_log
from dens.training.schedule import Schedule
from dens.training.settings import TrainSettings
from dens.training.state import Progress, TrainingRun, best_checkpoint, save_last, start_or_resume
from dens.training.stop import StopFlag, stop_flag, training_stopped
from dens.training.trainee import build_trainee, use_mixed_precision

__all__ = ["NonFiniteLossError", "TrainResult", "train"]

BuildModel = Callable[[dict], nn.Module]


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs: int
    steps: int
    best_epoch: int
    best_val_forces_mae_meV_per_A: float
    train_time_s: float


def train(
    experiment: Mapping[str, Any],
    train_set: Sequence[Data],
    val_set: Sequence[Data],
    run_dir: Path,
    build_model: BuildModel = build_registered_model,
    *,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    mixed_precision: bool | None = None,
    stop_at: float | None = None,
) -> TrainResult:
    """Train ``experiment`` (a resolved experiment dict) into run_dir, resuming from last.pt if it
    was started with the same experiment, data and code (else the old run is moved aside).

    build_model: builds the network from the experiment dict (default: the model families of
        dens.models; its model.hyperparameters switch the force encoding and the noise head).
    train_set, val_set: indexable datasets of ``Data`` (dens.data.structures).
    device: "cuda" is the GPU of this process's local rank when several processes train.
    progress: a progress bar (stderr) and one line per epoch with the time left (stdout).
    mixed_precision: float16 autocast + GradScaler; None = optim.mixed_precision (default true)
        on CUDA, off on CPU.
    stop_at: a wall-clock time (time.time()) at which to stop as on SIGTERM, with last.pt saved
        (a Slurm job ends itself this way before its time limit and continues in a requeued job:
        dens.pipeline.slurm).
    Under torchrun or srun the processes train together (dens.distributed; module notes).
    Writes run_dir/log.csv and run_dir/checkpoints/{last,best}.pt, every time it returns (a
    finished run asked again re-publishes them). Raises NonFiniteLossError on a NaN/inf loss and
    dens.stopping.StopRequested (a SystemExit with STOPPED_EXIT_CODE) on SIGTERM or at ``stop_at``.
    """
    settings = TrainSettings.from_experiment(experiment)
    world = World.from_environment()
    schedule = Schedule.of(settings.optim, len(train_set), world.size)
    device = world.device(torch.device(device))
    amp = use_mixed_precision(mixed_precision, device, settings.optim.mixed_precision)
    _check_splittable(settings.loss, val_set, world)
    new_model = functools.partial(build_model, experiment)
    with (
        process_group(world, device),
        stop_flag(stop_at) as stop,
        build_trainee(settings, new_model, device, world, amp) as trainee,
    ):
        run = TrainingRun(
            settings,
            trainee,
            schedule,
            started_with(experiment, train_set, val_set),
            Path(run_dir),
            train_set,
            val_set,
            device,
            world,
            _hardware(world, device, amp),
            num_workers,
            progress and world.is_main,
        )
        return _train(run, stop)


def _train(run: TrainingRun, stop: StopFlag) -> TrainResult:
    """Start or resume, train the epochs left, publish best.pt."""
    progress = _begin(run)
    report = reporter(run)
    report(progress, None)
    while not run.schedule.finished(progress.epoch, progress.step):
        _epoch(run, progress, stop, report)
    if run.world.is_main:
        publish(run.best_epoch_path, run.files.checkpoint("best"))
    return TrainResult(
        run_dir=run.run_dir,
        epochs=progress.epoch,
        steps=progress.step,
        best_epoch=progress.best["epoch"],
        best_val_forces_mae_meV_per_A=progress.best["val_forces_mae_meV_per_A"],
        train_time_s=progress.timing["train_time_s"],
    )


def _begin(run: TrainingRun) -> Progress:
    """Check the datasets' elements against the model, start or resume, write log.csv as it
    stands."""
    for role, dataset in (("training", run.train_set), ("validation", run.val_set)):
        check_elements_embedded(dataset, run.trainee.model, _split_name(dataset, role))
    progress = start_or_resume(run)
    if run.world.is_main:
        make_folder(run.run_dir, "creating run folder")
        write_log(run.log_path, progress.history)
    return progress


def _epoch(
    run: TrainingRun,
    progress: Progress,
    stop: StopFlag,
    report: Callable[[Progress, Mapping[str, float] | None], None],
) -> None:
    """Train one epoch (the rest of it after a resume), validate, log, save best.pt where it is
    the best and last.pt; raise StopRequested where asked to stop (last.pt saved)."""
    world = run.world
    if not train_epoch(run, progress, stop):
        save_last(run, progress)
        raise training_stopped(run.last_path, progress, stop.reason, announce=world.is_main)
    val_start = time.perf_counter()
    val = validate(run, progress)
    progress.epoch_sums["time_s"] += time.perf_counter() - val_start  # epoch time incl. val
    best = end_epoch(run, progress, val)
    if world.is_main and best:
        save_checkpoint(best_checkpoint(run, progress, val), run.best_epoch_path)
    if world.is_main:
        write_log(run.log_path, progress.history)
    save_last(run, progress)
    report(progress, val)
    finished = run.schedule.finished(progress.epoch, progress.step)
    if _anyone(stop.is_set(), world, run.device) and not finished:
        raise training_stopped(run.last_path, progress, stop.reason, announce=world.is_main)


def _hardware(world: World, device: torch.device, mixed_precision: bool) -> dict[str, Any]:
    """The columns of a log.csv row that say what trained it."""
    return {
        "world_size": world.size,
        "device": device.type,
        "device_name": _device_name(device),
        "mixed_precision": mixed_precision,
    }


def _split_name(dataset: Sequence[Data], role: str) -> str:
    """How an error names a dataset: its file (dens.data.aselmdb.AseLmdbDataset), else its role."""
    path = getattr(dataset, "path", None)
    return str(path) if path is not None else f"the {role} set"


def _check_splittable(losses: LossSettings, val_set: Sequence[Data], world: World) -> None:
    """Several processes need the per-structure loss (their mean is then the global batch's
    loss) or the official OC trainer's free-atom reduction (module notes), and at least one
    validation structure each."""
    if world.size == 1:
        return
    if losses.reduction == "atom":
        raise ConfigError(
            "optim.loss_reduction 'atom' averages over the atoms of each process's share, "
            "which is not the loss of the global batch; train with one process or with "
            "loss_reduction 'structure' (Algorithm 2) or 'free_atoms' (the official OC trainer's "
            "reduction across processes)"
        )
    if len(val_set) < world.size:
        raise ConfigError(
            f"{len(val_set)} validation structures cannot be split over {world.size} processes"
        )


def _anyone(flag: bool, world: World, device: torch.device) -> bool:
    """True on every process if ``flag`` is True on any."""
    return world.sum(torch.tensor([float(flag)], device=device)).item() > 0


def _device_name(device: torch.device) -> str:
    """The GPU model on CUDA, the CPU architecture on CPU (log.csv's device_name)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
