"""One epoch of a run: its optimiser steps (``train_epoch``, with the validations inside the
epoch that optim.val_every_steps asks for), validation (``validate``) and log.csv row
(``end_epoch``)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dens.data.batch import Batch
from dens.distributed import Shard
from dens.evaluate import mean_absolute_errors
from dens.training.log import EPOCH_END, MID_EPOCH, write_log
from dens.training.losses import (
    LOSS_TERMS,
    LossFunction,
    dens_weight,
    free_atoms_per_process,
    loss_terms,
)
from dens.training.schedule import epoch_batches, learning_rate
from dens.training.state import Progress, TrainingRun
from dens.training.stop import StopFlag
from dens.training.trainee import forward_loss, update


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; last.pt still holds the last good state."""


def train_epoch(run: TrainingRun, progress: Progress, stop_flag: StopFlag) -> bool:
    """Optimise the rest of epoch ``progress.epoch`` (from ``progress.batch_in_epoch``);
    return False if SIGTERM or stop_at (on any process) stopped it before its last batch. Updates
    ``progress`` in place.

    Per step: lr (warm-up + cosine, per step), the loss of this process's share of the global
    batch (lambda_DeNS of this epoch), a stop on a non-finite loss, backward, gradient clipping,
    AdamW, EMA; every optim.val_every_steps steps (not at the epoch's last) a validation and its
    log.csv row, before a stop asked for at that step (so a resumed run neither repeats nor
    misses it). An epoch ends early at the run's step cap (optim.max_steps)."""
    schedule, world = run.schedule, run.world
    if progress.batch_in_epoch == 0:
        progress.epoch_sums = {"time_s": 0.0, "step_time_s": 0.0, "samples": 0}
        progress.epoch_sums |= {term: 0.0 for term in LOSS_TERMS}
    sums = progress.epoch_sums
    epoch_start = time.perf_counter() - sums["time_s"]
    loss = _loss_of_epoch(run, progress)
    run.trainee.model.train()
    bar = _epoch_bar(run, progress)
    for batch in bar:
        step_start = time.perf_counter()
        batch = batch.to(run.device)
        values, lr, stop = _step(run, progress, batch, loss, stop_flag.is_set())
        for term in LOSS_TERMS:
            sums[term] += values[term]
        sums["samples"] += int(batch.natoms.numel()) * world.size
        sums["step_time_s"] += time.perf_counter() - step_start
        if _validation_due(run, progress):
            _validate_mid_epoch(run, progress, epoch_start)
        sums["time_s"] = time.perf_counter() - epoch_start
        bar.set_postfix(loss=f"{values['total']:.4g}", lr=f"{lr:.2e}")
        if stop and progress.batch_in_epoch < schedule.steps_per_epoch:
            return False
        if schedule.capped(progress.step):  # optim.max_steps: the epoch ends here, as the run
            break
    bar.close()
    return True


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


def _validation_due(run: TrainingRun, progress: Progress) -> bool:
    """Whether the step just taken is one of optim.val_every_steps's inside the epoch (the
    epoch's last step is validated by ``end_epoch``'s caller)."""
    every = run.settings.evaluation.every_steps
    inside = progress.batch_in_epoch < run.schedule.steps_per_epoch
    return every is not None and inside and progress.step % every == 0


def _validate_mid_epoch(run: TrainingRun, progress: Progress, epoch_start: float) -> None:
    """A validation inside the epoch: its log.csv row (kind MID_EPOCH), written at once; no
    checkpoint (best.pt is chosen at epoch ends)."""
    val = validate(run, progress)
    elapsed = time.perf_counter() - epoch_start
    progress.history.append(log_row(run, progress, val, MID_EPOCH, elapsed))
    if run.world.is_main:
        write_log(run.log_path, progress.history)


def validate(run: TrainingRun, progress: Progress) -> dict[str, float]:
    """Validation energy and force MAE (dens.evaluate.mean_absolute_errors) of the whole
    validation set with the inference weights (EMA where on): each process scores its contiguous
    ``Shard`` (eval_batch_size structures per forward pass) and the error sums are added up over
    processes. torch's global generators (CPU, and this process's GPU) are restored afterwards:
    a model that draws from them in eval mode (edge_roll "random") leaves the training's draws
    (dropout, edge rolls) as they were, so validating more often changes no weight."""
    devices = [run.device] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return _errors(run, progress)


def _errors(run: TrainingRun, progress: Progress) -> dict[str, float]:
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


def log_row(
    run: TrainingRun, progress: Progress, val: Mapping[str, float], kind: str, epoch_time: float
) -> dict[str, Any]:
    """The log.csv row (dens.training.log.LOG_COLUMNS) of a validation after
    ``progress.batch_in_epoch`` steps of epoch ``progress.epoch``: the training losses are the
    means over those steps, ``epoch_time`` the epoch's wall time so far."""
    sums, done, settings = progress.epoch_sums, progress.batch_in_epoch, run.settings
    return {
        "epoch": progress.epoch + 1,
        "step": progress.step,
        "kind": kind,
        "lr": learning_rate(progress.step - 1, settings.optim, run.schedule.steps_per_epoch),
        "lambda_dens": dens_weight(settings.denoising, progress.epoch, run.schedule.epochs),
        "train_loss": sums["total"] / done,
        "train_energy_loss": sums["energy"] / done,
        "train_forces_loss": sums["forces"] / done,
        "train_dens_loss": sums["dens"] / done,
        "val_energy_mae_meV": val["energy_mae_meV"],
        "val_forces_mae_meV_per_A": val["forces_mae_meV_per_A"],
        "train_samples_per_s": sums["samples"] / max(sums["step_time_s"], 1e-12),
        "epoch_time_s": epoch_time,
        **run.hardware,
    }


def end_epoch(run: TrainingRun, progress: Progress, val: Mapping[str, float]) -> bool:
    """Close the epoch: its log.csv row (kind EPOCH_END); return True if it is the best so far
    (lowest validation force MAE)."""
    sums = progress.epoch_sums
    progress.timing["train_time_s"] += sums["time_s"]
    progress.timing["step_time_s"] += sums["step_time_s"]
    progress.timing["samples_seen"] += sums["samples"]
    progress.history.append(log_row(run, progress, val, EPOCH_END, sums["time_s"]))
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
