"""What a run optimises (``Trainee``: the model, its EMA, AdamW, the gradient scaler, the DeNS
generators), how it is built (``build_trainee``) and one optimiser step on it (``forward_loss``,
``update``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dens.data.batch import Batch
from dens.distributed import World
from dens.errors import ConfigError
from dens.training.losses import LOSS_TERMS
from dens.training.optimizer import build_optimizer, update_ema
from dens.training.settings import OptimSettings, TrainSettings


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
    stacked = [terms[term].detach().double() for term in LOSS_TERMS]
    flag = torch.tensor(float(stop), dtype=torch.float64, device=device)
    totals = world.sum(torch.stack([*stacked, flag])).tolist()  # one sync
    values = {term: totals[k] / world.size for k, term in enumerate(LOSS_TERMS)}
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
