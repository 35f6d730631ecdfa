"""The training engine shared by every model family, with or without DeNS.

One explicit loop, read top to bottom in `train`:

    build_trainee; start_or_resume                  (model, EMA, AdamW; or last.pt)
    for each epoch:                       (order: a permutation seeded by (seed, epoch))
        train_epoch: lambda_DeNS <- dens_coefficient (constant, or MD17's linear decay, per
                     epoch as the official MD17 code); for each batch:
            lr <- warm-up then cosine decay, per step or per epoch (`learning_rate`)
            loss <- Eq. 1, or with DeNS the mixed Eq. 1 / Eq. 6 batch (`loss_terms`)
            stop with NonFiniteLossError if the loss is NaN/inf (last good checkpoint kept)
            backward, clip the gradient norm, AdamW step, EMA update
            on SIGTERM or at stop_at: save last.pt (mid-epoch), exit with
            dens.stopping.STOPPED_EXIT_CODE
        validate (EMA weights if EMA is on); end_epoch: log.csv row; best.pt by val force
        MAE; last.pt

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

Mixed precision (``optim.mixed_precision``, ``dens train --[no-]mixed-precision``): float16
autocast of the forward pass and the loss with a GradScaler (the loss is scaled for backward and
the gradients unscaled before clipping; a step with inf/nan gradients is skipped), as the
official OC20/OC22 code's ``--amp`` (fairchem 1.x). On CUDA the experiment's
``optim.mixed_precision`` decides (default true); the MD17 experiments set it false, since the
official MD17 code trains in float32. The command-line switch overrides it; asking for it on
CPU is refused. Validation and evaluation run in float32.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dens.atomic_files import atomic_write, make_folder
from dens.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from dens.config_files import find_root
from dens.data.batch import Batch, Data
from dens.data.validation import check_elements_embedded
from dens.denoising import (
    Corruption,
    DeNSSettings,
    LossSettings,
    corrupt,
    dens_coefficient,
    dens_loss,
    force_encoding_input,
    original_task_loss,
)
from dens.distributed import Shard, World, process_group
from dens.errors import ConfigError
from dens.evaluate import mean_absolute_errors
from dens.models import build_model as build_registered_model
from dens.models import count_parameters
from dens.normalization import (
    NUM_ELEMENTS,
    EnergyReference,
    Normalizer,
    load_element_references,
)
from dens.runs import BEST_EPOCH_FILE, move_aside, publish, started_with
from dens.stopping import SIGTERM, TIME_LIMIT, StopRequested
from dens.training.settings import LabelSettings, OptimSettings, TrainSettings

BuildModel = Callable[[dict], nn.Module]

NORMALIZER_SAMPLES = 100_000

LOG_COLUMNS = (
    "epoch",
    "step",
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
"""log.csv, one row per epoch: train_samples_per_s counts the structures of the global batches per
second of optimiser steps (all processes together); epoch_time_s is the wall time of the epoch
with its validation; world_size, device ("cuda" or "cpu") and device_name (the GPU model, or the
CPU architecture) say what trained it: throughput per device and device-hours (dens.evaluate)."""
_LOSS_TERMS = ("total", "energy", "forces", "dens")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; last.pt still holds the last good state."""


def _training_stopped(
    checkpoint: Path, progress: Progress, reason: str, announce: bool
) -> StopRequested:
    """The stop of a training whose last.pt (``checkpoint``) was just saved."""
    return StopRequested(
        reason,
        f"after epoch {progress.epoch} + {progress.batch_in_epoch} batches (step {progress.step})",
        f"saved {checkpoint}; rerunning the job resumes there",
        announce,
    )


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs: int
    steps: int
    best_epoch: int
    best_val_forces_mae_meV_per_A: float
    train_time_s: float


# ---------------------------------------------------------------------------------------------
# Pieces of the loop


def learning_rate(step: int, optim: OptimSettings, steps_per_epoch: int) -> float:
    """LR of optimiser step `step` (0-based). ``lr_schedule: cosine_epoch_timm`` (the official
    MD17 code) is constant within an epoch: `timm_cosine_lr` of epoch step // steps_per_epoch.
    The others are per step: f(step + 1) with t = steps completed,
    W = round(warmup_epochs * steps_per_epoch), T = epochs * steps_per_epoch, s =
    ``warmup_start_factor`` (default 0):

        f(t) = lr * (s + (1 - s) t / W)                               for t <= W (warm-up)
        f(t) = min_lr + (lr - min_lr) / 2 * (1 + cos(pi * p))          for t > W,

    with p = (t - W) / (T - W) for ``lr_schedule: cosine`` (the cosine starts after the warm-up
    and reaches min_lr at the last step; a per-step variant of timm's, not the official MD17
    one) or p = t / T for ``cosine_total`` (the cosine runs over all steps and the warm-up
    replaces its start: fairchem 1.x ``CosineLRLambda``, the official OC20/OC22 configs with
    warmup_factor 0.2 and lr_min_factor 0.01). ``multistep`` (fairchem 1.x
    ``multistep_lr_lambda``, the official eSCN and DeNS eSCN configs; min_lr unused) after the
    warm-up is

        f(t) = lr * decay_rate^k,   k = |{d in decay_epochs: int(d * steps_per_epoch) <= t}|."""
    if optim.lr_schedule == "cosine_epoch_timm":
        return timm_cosine_lr(step // steps_per_epoch, optim)
    lr, min_lr = optim.lr, optim.min_lr
    warmup = round(optim.warmup_epochs * steps_per_epoch)
    total = optim.epochs * steps_per_epoch
    done = step + 1
    if done <= warmup:
        start = optim.warmup_start_factor
        return lr * (start + (1.0 - start) * done / warmup)
    if optim.lr_schedule == "multistep":  # decay_epochs and decay_rate set (OptimSettings)
        passed = sum(int(d * steps_per_epoch) <= done for d in optim.decay_epochs)
        return lr * optim.decay_rate**passed
    if optim.lr_schedule == "cosine_total":
        progress = min(done / total, 1.0)
    else:
        progress = (done - warmup) / max(total - warmup, 1)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def timm_cosine_lr(epoch: int, optim: OptimSettings) -> float:
    """LR of (0-based) ``epoch`` under ``lr_schedule: cosine_epoch_timm``: timm 0.4.12's
    ``CosineLRScheduler`` as the official MD17 code builds and steps it (atomicarchitects/
    equiformer 64cb7866, pinned timm==0.4.12 in env/env_equiformer.yml:376). main_md17.py:196 /
    main_md17_dens.py:198 call ``create_scheduler(args, optimizer)`` (timm
    scheduler/scheduler_factory.py:25-40: t_initial = epochs, lr_min = --min-lr, warmup_t =
    --warmup-epochs, warmup_lr_init = --warmup-lr, cycle_limit 1, t_in_epochs, no noise) and
    main_md17.py:229 / main_md17_dens.py:236 call ``lr_scheduler.step(epoch)`` once before each
    epoch's training, so every step of the epoch trains at (cosine_lr.py:68-95, warmup_prefix
    False: the cosine is of the epoch itself, not of the epochs after the warm-up)

        lr(e) = warmup_lr + e * (lr - warmup_lr) / warmup_epochs               for e < warmup_epochs
        lr(e) = min_lr + (lr - min_lr) / 2 * (1 + cos(pi * e / epochs))       for e < epochs
        lr(e) = min_lr                              for e >= epochs (past the one cycle)

    in timm's order of operations, so the values are timm's to the last bit. The official
    defaults: --warmup-lr 1e-6, --min-lr 1e-6, --warmup-epochs 10 (main_md17.py:73-81,
    main_md17_dens.py:83-91); --decay-rate only scales later cycles, which a run never
    reaches (its loop is ``range(args.epochs)``)."""
    lr, min_lr, epochs = optim.lr, optim.min_lr, optim.epochs
    warmup_epochs, warmup_lr = optim.warmup_epochs, optim.warmup_lr  # set (OptimSettings)
    if epoch < warmup_epochs:
        return warmup_lr + epoch * ((lr - warmup_lr) / warmup_epochs)
    if epoch >= epochs:
        return min_lr
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs))


def weight_decay_exempt(model: nn.Module) -> set[str]:
    """Names of the trainable parameters AdamW does not decay, as the official code of the
    model's family decides:

    - a model with ``no_weight_decay()`` (EquiformerV2, eSCN: the fairchem trainer): exactly the
      parameters whose names end with a name it lists (fairchem 1.x 31c0963
      ``trainers/base_trainer.py``:707-725; ocp 5d0f59e, the base of the official DeNS trainer,
      ``ocpmodels/trainers/base_trainer.py``:573-590); no rule on dimensions or biases;
    - any other model (the MD17 Equiformer: timm ``create_optimizer`` in atomicarchitects/
      equiformer ``optim_factory.py``, ``add_weight_decay``): parameters of <= 1 dimension and
      names ending in ".bias"."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if hasattr(model, "no_weight_decay"):
        listed = tuple(model.no_weight_decay())
        return {name for name, _ in named if name.endswith(listed)}
    return {name for name, p in named if p.ndim <= 1 or name.endswith(".bias")}


def build_optimizer(model: nn.Module, optim: OptimSettings) -> torch.optim.AdamW:
    """AdamW with ``optim.weight_decay`` on the parameters ``weight_decay_exempt`` does not
    name and none on those it names; ``amsgrad`` (default false) as the official eSCN configs
    set it (fairchem 1.x ``optimizer_params: {amsgrad: True}``). The fused implementation
    updates all parameters in one kernel: on CPU a step of the mini Equiformer's 112 tensors
    takes 0.4 ms instead of 2.6 ms with the default loop (measured)."""
    exempt = weight_decay_exempt(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name in exempt else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=optim.lr, amsgrad=optim.amsgrad, fused=True)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, entry by entry of the state dicts."""
    for averaged, current in zip(
        ema.state_dict().values(), model.state_dict().values(), strict=True
    ):
        if averaged.dtype.is_floating_point:
            averaged.lerp_(current, 1.0 - decay)
        else:
            averaged.copy_(current)


def draw_corruption(
    batch: Batch,
    normalizer: Normalizer,
    denoising: DeNSSettings,
    generator: torch.Generator,
    decision_generator: torch.Generator | None = None,
) -> Corruption:
    """This batch's DeNS draw (dens.denoising.corrupt): the forces to encode in
    ``denoising.force_encoding_units`` ("normalized": f / the normaliser's force std), ``generator``
    (this process's) for the masks and the noise and, with ``denoising.decision == "batch"``,
    ``decision_generator`` (the same on every process) for the batch's DeNS decision."""
    units = denoising.force_encoding_units
    forces = force_encoding_input(batch.forces, normalizer.force_scale, units)
    return corrupt(batch, denoising, generator, forces=forces, batch_generator=decision_generator)


def batch_loss(
    model: nn.Module,
    batch: Batch,
    normalizer: Normalizer,
    losses: LossSettings,
    denoising: DeNSSettings | None,
    corruption: Corruption | None,
    coefficient: float,
    free_atoms_per_process: float | None = None,
) -> dict[str, Tensor]:
    """The training loss of one batch given its DeNS draw: {"total", "energy", "forces",
    "dens"} 0-dim tensors.

    Without DeNS (``denoising`` and ``corruption`` None): Eq. 1 on the batch, no force input, no
    noise. With DeNS: the model runs on ``corruption.pos`` with ``corruption.force_input``
    encoded and the noise head on, and the batch takes Eq. 1 / Eq. 6 (dens.denoising.dens_loss).
    ``corruption`` comes from ``draw_corruption`` in training, or is built directly (draws
    injected from the official code). Energy targets are normalised in float64, then cast to
    the model's dtype. ``free_atoms_per_process``: see dens.denoising.dens_loss.
    """
    if (denoising is None) != (corruption is None):
        raise ValueError("batch_loss needs both dens settings and a corruption, or neither")
    energy_target = normalizer.normalize_energy(batch.energy, batch.atomic_numbers, batch.batch)
    energy_target = energy_target.to(batch.pos.dtype)
    force_target = normalizer.normalize_forces(batch.forces)
    if denoising is None or corruption is None:
        prediction = model(batch)
        return original_task_loss(
            prediction, batch, energy_target, force_target, losses, free_atoms_per_process
        )
    inputs = batch.clone()
    inputs.pos = corruption.pos
    prediction = model(inputs, corruption.force_input, predict_noise=True)
    return dens_loss(
        prediction,
        batch,
        corruption,
        energy_target,
        force_target,
        losses,
        denoising,
        coefficient,
        free_atoms_per_process,
    )


def loss_terms(
    model: nn.Module,
    batch: Batch,
    normalizer: Normalizer,
    losses: LossSettings,
    denoising: DeNSSettings | None,
    generator: torch.Generator,
    coefficient: float,
    decision_generator: torch.Generator | None = None,
    free_atoms_per_process: float | None = None,
) -> dict[str, Tensor]:
    """The training loss of one batch with its DeNS draw sampled here: ``draw_corruption`` (with
    DeNS) then ``batch_loss``."""
    corruption = None
    if denoising is not None:
        corruption = draw_corruption(batch, normalizer, denoising, generator, decision_generator)
    return batch_loss(
        model, batch, normalizer, losses, denoising, corruption, coefficient, free_atoms_per_process
    )


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of epoch `epoch` (0-based): a permutation seeded by (seed, epoch), cut into
    full batches (the last partial batch is dropped, as in the official MD17 code)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_samples, generator=generator).tolist()
    return [order[k : k + batch_size] for k in range(0, num_samples - batch_size + 1, batch_size)]


def _energy_sample(train_set: Sequence[Data], seed: int) -> tuple[Tensor, Tensor]:
    """Energies [S] (float64, eV) and element counts [S, 119] of the training set, in one pass;
    above NORMALIZER_SAMPLES structures, of a random subset of that size seeded by `seed` (a
    pass over the millions of OC20/OC22 frames would take about an hour at aselmdb read
    speed)."""
    indices: Sequence[int] = range(len(train_set))
    if len(train_set) > NORMALIZER_SAMPLES:
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(len(train_set), generator=generator)[:NORMALIZER_SAMPLES].tolist()
    energies, counts = [], []
    for index in indices:
        data = train_set[index]
        energies.append(float(data.energy))
        counts.append(torch.bincount(data.atomic_numbers, minlength=NUM_ELEMENTS))
    return torch.tensor(energies, dtype=torch.float64), torch.stack(counts)


def fit_normalizer(
    train_set: Sequence[Data], reference: EnergyReference | Tensor, seed: int
) -> Normalizer:
    """Energy statistics (Normalizer.fit) of the training set (``_energy_sample``). The
    elements recorded are the whole set's where the dataset knows them (``elements``, as
    AseLmdbDataset does), so a rare element outside the subset is still known."""
    energies, counts = _energy_sample(train_set, seed)
    return Normalizer.fit(energies, counts, reference, getattr(train_set, "elements", None))


def training_normalizer(
    labels: LabelSettings, train_set: Sequence[Data], seed: int, root: Path | None = None
) -> Normalizer:
    """The label normaliser of a run (start of training; resumed runs keep last.pt's).

    - ``labels.energy_reference_file``: a published linear reference
      (dens.normalization.load_element_references; the official OC22 config's ``lin_ref``,
      fairchem ``configs/oc22/linref/oc22_linfit_coeffs.npz``), a path relative to the pipeline
      directory ``root`` (default dens.config_files.find_root(); e.g. under results/downloads/) or
      absolute. It is the per-element reference instead of one fitted here.
    - ``labels.normalizer`` {energy_mean, energy_std, force_std}: the official configs'
      normaliser (``dataset.transforms.normalizer``; fairchem divides forces by their own std),
      used as given: E' = (E - sum_i ref[Z_i] - energy_mean) / energy_std, f' = f / force_std,
      with ref from the file or 0.
    - neither: ``fit_normalizer`` with ``labels.reference`` ("mean" or "linear"); forces share
      the energy std.
    """
    reference: EnergyReference | Tensor = labels.reference
    path = labels.energy_reference_file
    if path is not None:
        full = Path(path) if Path(path).is_absolute() else (root or find_root()) / path
        if not full.is_file():
            raise ConfigError(f"optim.energy_reference_file: {full} does not exist")
        reference = load_element_references(full)
    given = labels.normalizer
    if given is None:
        return fit_normalizer(train_set, reference, seed)
    elements = getattr(train_set, "elements", None)
    if elements is None:
        counts = _energy_sample(train_set, seed)[1]
        elements = torch.nonzero(counts.sum(dim=0) > 0).flatten().tolist()
    refs = reference if isinstance(reference, Tensor) else torch.zeros(NUM_ELEMENTS)
    return Normalizer(
        mean=given.energy_mean,
        std=given.energy_std,
        element_references=refs.to(torch.float64),
        elements=tuple(sorted({int(z) for z in elements})),
        force_std=given.force_std,
    )


def write_log(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """Write the run's log.csv atomically (dens.atomic_files)."""
    with atomic_write(path, "writing training log", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(history)


class StopFlag(threading.Event):
    """Set by SIGTERM or at the ``stop_at`` time; ``reason`` says which came first."""

    reason = SIGTERM

    def stop(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
            self.set()


@contextlib.contextmanager
def _stop_flag(stop_at: float | None) -> Iterator[StopFlag]:
    """A flag set by SIGTERM, or by a timer at the wall-clock time ``stop_at`` (time.time()),
    while the block runs (the handler is restored and the timer cancelled afterwards)."""
    flag = StopFlag()
    timer = None
    if stop_at is not None:
        timer = threading.Timer(max(0.0, stop_at - time.time()), flag.stop, (TIME_LIMIT,))
        timer.daemon = True
        timer.start()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.stop(SIGTERM))
    try:
        yield flag
    finally:
        if timer is not None:
            timer.cancel()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


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


def _differences(a: Any, b: Any, where: str = "experiment") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{where}.{key}")
        return out
    return [] if a == b else [f"{where}: {a!r} in last.pt, {b!r} now"]


# ---------------------------------------------------------------------------------------------
# The steps of a run


@dataclass(frozen=True)
class Schedule:
    """How long a run is: epochs, batches of batch_size (the last partial batch is dropped)."""

    epochs: int
    batch_size: int
    steps_per_epoch: int

    @classmethod
    def of(cls, optim: OptimSettings, train_size: int, processes: int = 1) -> Schedule:
        """The schedule of ``optim``; batch_size is the global batch of all ``processes``."""
        batch_size = optim.batch_size
        if batch_size % processes:
            raise ConfigError(
                f"optim.batch_size {batch_size} is the global batch, split equally over the "
                f"{processes} training processes: it must be a multiple of {processes}"
            )
        if train_size < batch_size:
            raise ValueError(
                f"training set of {train_size} structures is smaller than batch_size {batch_size}"
            )
        return cls(optim.epochs, batch_size, train_size // batch_size)


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


@dataclass
class Trainee:
    """What a run optimises: the model, its EMA copy (None without EMA), AdamW, the gradient
    scaler of mixed precision (a pass-through when off), the DeNS corruption generator of this
    process, ``network``: what the training forward pass calls (the model, inside
    DistributedDataParallel with several processes), and the DeNS decision generator (CPU, the
    same on every process: dens.decision "batch")."""

    model: nn.Module
    ema: nn.Module | None
    optimizer: torch.optim.AdamW
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    network: nn.Module
    decision_generator: torch.Generator

    @property
    def eval_model(self) -> nn.Module:
        return self.model if self.ema is None else self.ema

    def __enter__(self) -> Trainee:
        return self

    def __exit__(self, *exc: object) -> None:
        """Drop DistributedDataParallel while the process group still exists: a gloo group
        destroyed first hangs the process when the wrapper is freed afterwards."""
        self.network = self.model


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
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def best_epoch_path(self) -> Path:
        return self.run_dir / "checkpoints" / BEST_EPOCH_FILE

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.csv"


def corruption_seed(seed: int, rank: int) -> int:
    """Seed of the DeNS generator of process ``rank``: (seed, rank) packed into 64 bits, so every
    process draws its own corruption, rank 0 with ``seed`` as a single process does (a seed is in
    [0, 2**32): TrainSettings.seed)."""
    return seed + (rank << 32)


def decision_seed(seed: int) -> int:
    """Seed of the DeNS decision generator (dens.decision "batch"): the same on every process,
    and apart from every process's corruption seed (``corruption_seed``; bit 63 set)."""
    return corruption_seed(seed, 0) + (1 << 63)


def build_trainee(
    settings: TrainSettings,
    new_model: Callable[[], nn.Module],
    device: torch.device,
    world: World | None = None,
    mixed_precision: bool = False,
) -> Trainee:
    """The model (``new_model()``: the experiment's network) built after
    torch.manual_seed(seed) (the same on every process), its EMA copy, AdamW, the gradient
    scaler, the generator seeded from (seed, rank), the network that averages gradients over
    processes (``World.wrap``) and the decision generator seeded alike on every process
    (``decision_seed``)."""
    world = world or World()
    seed = settings.seed
    torch.manual_seed(seed)
    model = new_model().to(device)
    ema = None
    if settings.optim.ema_decay is not None:
        ema = new_model().to(device).requires_grad_(False)
        ema.load_state_dict(model.state_dict())
    generator = torch.Generator(device).manual_seed(corruption_seed(seed, world.rank))
    decisions = torch.Generator().manual_seed(decision_seed(seed))
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision)
    optimizer = build_optimizer(model, settings.optim)
    network = world.wrap(model, device)
    return Trainee(model, ema, optimizer, scaler, generator, network, decisions)


def use_mixed_precision(requested: bool | None, device: torch.device, recipe: bool = True) -> bool:
    """The mixed-precision switch: None = the experiment's ``recipe`` (optim.mixed_precision) on
    CUDA, off on CPU; True on CPU is refused (CPU autocast is not what the paper's GPUs ran, and
    float16 kernels on CPU are slow)."""
    if requested is None:
        return recipe and device.type == "cuda"
    if requested and device.type != "cuda":
        raise ConfigError(
            f"mixed precision (float16 autocast + GradScaler) runs on CUDA only, not on {device}; "
            "leave it off on CPU"
        )
    return requested


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
    progress = Progress(
        normalizer=Normalizer.from_dict(state["normalizer"]),
        epoch=state["epoch"],
        batch_in_epoch=state["batch_in_epoch"],
        step=state["step"],
        epoch_sums=state["epoch_sums"],
        best=state["best"],
        history=state["history"],
        timing=state["timing"],
    )
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
    last_path = run_dir / "checkpoints" / "last.pt"
    if not last_path.is_file():
        return None
    state = load_checkpoint(last_path)
    changed = _differences(state.get("started_with"), dict(start), "run")
    if state["best"]["epoch"] > 0 and not (last_path.parent / BEST_EPOCH_FILE).is_file():
        changed.append(f"{BEST_EPOCH_FILE} is missing")
    if not changed:
        return state
    moved = move_aside(run_dir, "; ".join(changed))
    print(
        f"{last_path} was started with something else ({'; '.join(changed)}): "
        f"moved the previous run to {moved} and starting afresh",
        file=sys.stderr,
    )
    return None


def last_checkpoint(run: TrainingRun, progress: Progress) -> dict[str, Any]:
    """The state of last.pt (layout: dens.checkpoint); every process takes part (each one's RNG
    states are gathered)."""
    trainee = run.trainee
    return {
        "format_version": FORMAT_VERSION,
        "kind": "last",
        "experiment": dict(run.start["experiment"]),
        "started_with": dict(run.start),
        "epoch": progress.epoch,
        "batch_in_epoch": progress.batch_in_epoch,
        "step": progress.step,
        "train_size": len(run.train_set),
        "model": trainee.model.state_dict(),
        "ema": None if trainee.ema is None else trainee.ema.state_dict(),
        "optimizer": trainee.optimizer.state_dict(),
        "normalizer": progress.normalizer.to_dict(),
        "rng": run.world.gather(_rng_state(trainee, run.device)),
        "grad_scaler": trainee.scaler.state_dict(),
        "epoch_sums": progress.epoch_sums,
        "best": progress.best,
        "history": progress.history,
        "timing": progress.timing,
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


def forward_loss(
    trainee: Trainee,
    batch: Batch,
    loss: Callable[[nn.Module, Batch], dict[str, Tensor]],
    world: World,
    stop: bool,
) -> tuple[Tensor, dict[str, float], bool]:
    """The loss of this process's share of a global batch (``loss(trainee.network, batch)``,
    under float16 autocast with mixed precision), with its terms averaged over processes (the
    global batch's loss with per-structure normalisation) and whether any process asked to
    ``stop``, in one collective: (the tensor to back-propagate, the terms, stop)."""
    device = batch.pos.device
    with torch.autocast(device.type, dtype=torch.float16, enabled=trainee.scaler.is_enabled()):
        terms = loss(trainee.network, batch)
    # float64 holds float32 and float16 values exactly: one process logs what it did before.
    stacked = [terms[term].detach().double() for term in _LOSS_TERMS]
    flag = torch.tensor(float(stop), dtype=torch.float64, device=device)
    totals = world.sum(torch.stack([*stacked, flag])).tolist()  # one sync
    values = {term: totals[k] / world.size for k, term in enumerate(_LOSS_TERMS)}
    return terms["total"], values, totals[-1] > 0


def update(trainee: Trainee, loss: Tensor, optim: OptimSettings) -> None:
    """Backward (DistributedDataParallel averages the gradients over processes), gradient
    clipping, AdamW, EMA. With mixed precision the loss is scaled for backward and the gradients
    unscaled before clipping; GradScaler skips a step whose gradients are not finite."""
    trainee.optimizer.zero_grad(set_to_none=True)
    trainee.scaler.scale(loss).backward()
    trainee.scaler.unscale_(trainee.optimizer)
    if optim.grad_clip_norm is not None:
        nn.utils.clip_grad_norm_(trainee.model.parameters(), optim.grad_clip_norm)
    trainee.scaler.step(trainee.optimizer)
    trainee.scaler.update()
    if trainee.ema is not None:
        update_ema(trainee.ema, trainee.model, optim.ema_decay)


def free_atoms_per_process(batch: Batch, losses: LossSettings, world: World) -> float | None:
    """With optim.loss_reduction "free_atoms" and several processes: the free atoms of the
    global batch divided by the number of processes (one all-reduce), fairchem's DDPLoss
    denominator (dens.denoising.dens_loss); None otherwise (each batch counts its own)."""
    if world.size == 1 or losses.reduction != "free_atoms":
        return None
    free = (~batch.fixed.to(torch.bool)).sum().to(torch.float64).reshape(1)
    return world.sum(free).item() / world.size


def train_epoch(run: TrainingRun, progress: Progress, stop_flag: StopFlag) -> bool:
    """Optimise the rest of epoch ``progress.epoch`` (from ``progress.batch_in_epoch``);
    return False if SIGTERM or stop_at (on any process) stopped it before its last batch. Updates
    ``progress`` in place.

    Per step: lr (warm-up + cosine, per step), the loss of this process's share of the global
    batch (lambda_DeNS of this epoch), a stop on a non-finite loss, backward, gradient clipping,
    AdamW, EMA."""
    schedule, world = run.schedule, run.world
    if progress.batch_in_epoch == 0:
        progress.epoch_sums = {"time_s": 0.0, "step_time_s": 0.0, "samples": 0}
        progress.epoch_sums |= {term: 0.0 for term in _LOSS_TERMS}
    sums = progress.epoch_sums
    epoch_start = time.perf_counter() - sums["time_s"]
    loss = _loss_of_epoch(run, progress)
    run.trainee.model.train()
    bar = _epoch_bar(run, progress)
    for batch in bar:
        step_start = time.perf_counter()
        batch = batch.to(run.device)
        values, lr, stop = _step(run, progress, batch, loss, stop_flag.is_set())
        for term in _LOSS_TERMS:
            sums[term] += values[term]
        sums["samples"] += int(batch.natoms.numel()) * world.size
        sums["step_time_s"] += time.perf_counter() - step_start
        sums["time_s"] = time.perf_counter() - epoch_start
        bar.set_postfix(loss=f"{values['total']:.4g}", lr=f"{lr:.2e}")
        if stop and progress.batch_in_epoch < schedule.steps_per_epoch:
            return False
    bar.close()
    return True


LossFunction = Callable[[nn.Module, Batch], dict[str, Tensor]]


def _loss_of_epoch(run: TrainingRun, progress: Progress) -> LossFunction:
    """The loss of a batch in epoch ``progress.epoch`` (lambda_DeNS of this epoch), the DeNS draw
    from the trainee's generators."""
    settings, trainee = run.settings, run.trainee
    coefficient = dens_weight(settings.denoising, progress.epoch, run.schedule.epochs)

    def loss(network: nn.Module, batch: Batch) -> dict[str, Tensor]:
        return loss_terms(
            network,
            batch,
            progress.normalizer,
            settings.loss,
            settings.denoising,
            trainee.generator,
            coefficient,
            trainee.decision_generator,
            free_atoms_per_process(batch, settings.loss, run.world),
        )

    return loss


def dens_weight(denoising: DeNSSettings | None, epoch: int, epochs: int) -> float:
    """lambda_DeNS of (0-based) ``epoch`` (dens.denoising.dens_coefficient); 0 without DeNS."""
    return 0.0 if denoising is None else dens_coefficient(denoising, epoch, epochs)


def _epoch_bar(run: TrainingRun, progress: Progress) -> tqdm:
    """The batches of the rest of the epoch (this process's share of each global batch, in the
    order seeded by (seed, epoch)) behind a progress bar."""
    seed, epoch, schedule = run.settings.seed, progress.epoch, run.schedule
    batches = epoch_batches(len(run.train_set), schedule.batch_size, seed, epoch)
    loader = DataLoader(
        run.train_set,
        batch_sampler=[run.world.share(b) for b in batches[progress.batch_in_epoch :]],
        collate_fn=Batch.from_data_list,
        num_workers=run.num_workers,
        generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch),
    )
    return tqdm(
        loader,
        total=schedule.steps_per_epoch,
        initial=progress.batch_in_epoch,
        desc=f"{run.settings.name} epoch {epoch + 1}/{schedule.epochs}",
        disable=not run.show_progress,
        leave=False,
    )


def _step(
    run: TrainingRun, progress: Progress, batch: Batch, loss: LossFunction, stop: bool
) -> tuple[dict[str, float], float, bool]:
    """One optimiser step: the loss terms (averaged over processes), the lr and whether any
    process asked to stop; NonFiniteLossError on a NaN/inf loss, before any weight changes."""
    trainee = run.trainee
    lr = learning_rate(progress.step, run.settings.optim, run.schedule.steps_per_epoch)
    for group in trainee.optimizer.param_groups:
        group["lr"] = lr
    total, values, stop = forward_loss(trainee, batch, loss, run.world, stop)
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteLossError(
            f"experiment {run.settings.name!r}: non-finite loss {values} at epoch "
            f"{progress.epoch + 1} (1-based), batch {progress.batch_in_epoch} of the epoch, "
            f"global step {progress.step}; last.pt keeps the last good state"
        )
    update(trainee, total, run.settings.optim)
    progress.step += 1
    progress.batch_in_epoch += 1
    return values, lr, stop


def validate(run: TrainingRun, progress: Progress) -> dict[str, float]:
    """Validation energy and force MAE (dens.evaluate.mean_absolute_errors) of the whole
    validation set with the inference weights (EMA where on): each process scores its contiguous
    ``Shard`` (eval_batch_size structures per forward pass) and the error sums are added up over
    processes."""
    model, world, device = run.trainee.eval_model, run.world, run.device
    batch_size, normalizer = run.settings.evaluation.batch_size, progress.normalizer
    if world.size == 1:
        return mean_absolute_errors(model, run.val_set, normalizer, batch_size, device)
    part = mean_absolute_errors(model, Shard(run.val_set, world), normalizer, batch_size, device)
    structures, free = part["num_structures"], part["num_free_atoms"]
    energy, forces = part["energy_mae_meV"] * structures, part["forces_mae_meV_per_A"] * free
    sums = torch.tensor([energy, forces, structures, free], dtype=torch.float64, device=device)
    energy, forces, structures, free = world.sum(sums).tolist()
    return {"energy_mae_meV": energy / structures, "forces_mae_meV_per_A": forces / max(free, 1)}


def end_epoch(run: TrainingRun, progress: Progress, val: Mapping[str, float]) -> bool:
    """Close the epoch: its log.csv row; return True if it is the best so far (lowest
    validation force MAE)."""
    sums, steps, settings = progress.epoch_sums, run.schedule.steps_per_epoch, run.settings
    epoch_time = sums["time_s"]
    progress.timing["train_time_s"] += epoch_time
    progress.timing["step_time_s"] += sums["step_time_s"]
    progress.timing["samples_seen"] += sums["samples"]
    progress.history.append(
        {
            "epoch": progress.epoch + 1,
            "step": progress.step,
            "lr": learning_rate(progress.step - 1, settings.optim, steps),
            "lambda_dens": dens_weight(settings.denoising, progress.epoch, run.schedule.epochs),
            "train_loss": sums["total"] / steps,
            "train_energy_loss": sums["energy"] / steps,
            "train_forces_loss": sums["forces"] / steps,
            "train_dens_loss": sums["dens"] / steps,
            "val_energy_mae_meV": val["energy_mae_meV"],
            "val_forces_mae_meV_per_A": val["forces_mae_meV_per_A"],
            "train_samples_per_s": sums["samples"] / max(sums["step_time_s"], 1e-12),
            "epoch_time_s": epoch_time,
            **run.hardware,
        }
    )
    progress.epoch += 1
    progress.batch_in_epoch = 0
    progress.epoch_sums = {}
    if val["forces_mae_meV_per_A"] >= progress.best["val_forces_mae_meV_per_A"]:
        return False
    progress.best = {
        "epoch": progress.epoch,
        "val_forces_mae_meV_per_A": val["forces_mae_meV_per_A"],
    }
    return True


def _reporter(run: TrainingRun) -> Callable[[Progress, Mapping[str, float] | None], None]:
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
            seconds = progress.timing["train_time_s"] / max(len(progress.history), 1)
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


# ---------------------------------------------------------------------------------------------
# The loop


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
    start = started_with(experiment, train_set, val_set)
    new_model = functools.partial(build_model, experiment)
    with (
        process_group(world, device),
        _stop_flag(stop_at) as stop,
        build_trainee(settings, new_model, device, world, amp) as trainee,
    ):
        run = TrainingRun(
            settings,
            trainee,
            schedule,
            start,
            Path(run_dir),
            train_set,
            val_set,
            device,
            world,
            _hardware(world, device, amp),
            num_workers,
            progress and world.is_main,
        )
        state = _begin(run)
        report = _reporter(run)
        report(state, None)
        while state.epoch < schedule.epochs:
            _epoch(run, state, stop, report)
        if world.is_main:
            publish(run.best_epoch_path, run.run_dir / "checkpoints" / "best.pt")
    return TrainResult(
        run_dir=run.run_dir,
        epochs=state.epoch,
        steps=state.step,
        best_epoch=state.best["epoch"],
        best_val_forces_mae_meV_per_A=state.best["val_forces_mae_meV_per_A"],
        train_time_s=state.timing["train_time_s"],
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
        raise _training_stopped(run.last_path, progress, stop.reason, announce=world.is_main)
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
    if _anyone(stop.is_set(), world, run.device) and progress.epoch < run.schedule.epochs:
        raise _training_stopped(run.last_path, progress, stop.reason, announce=world.is_main)


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
