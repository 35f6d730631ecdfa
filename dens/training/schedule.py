"""How long a run is (``Schedule``), the order of its data (``epoch_batches``) and the learning
rate of each optimiser step (``learning_rate``; ``timm_cosine_lr`` for the official MD17 code's
per-epoch schedule)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dens.errors import ConfigError
from dens.training.settings import OptimSettings


@dataclass(frozen=True)
class Schedule:
    """How long a run is: epochs, batches of batch_size (the last partial batch is dropped), and
    at most max_steps optimiser steps (None: no cap; optim.max_steps)."""

    epochs: int
    batch_size: int
    steps_per_epoch: int
    max_steps: int | None = None

    def capped(self, step: int) -> bool:
        """Whether ``step`` optimiser steps reach the run's cap (max_steps)."""
        return self.max_steps is not None and step >= self.max_steps

    def finished(self, epoch: int, step: int) -> bool:
        """Whether a run that completed ``epoch`` epochs and ``step`` steps is done."""
        return epoch >= self.epochs or self.capped(step)

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
        return cls(optim.epochs, batch_size, train_size // batch_size, optim.max_steps)


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of epoch `epoch` (0-based): a permutation seeded by (seed, epoch), cut into
    full batches (the last partial batch is dropped, as in the official MD17 code)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_samples, generator=generator).tolist()
    return [order[k : k + batch_size] for k in range(0, num_samples - batch_size + 1, batch_size)]


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
