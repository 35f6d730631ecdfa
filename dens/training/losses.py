"""The training loss of a batch: ``batch_loss`` given its DeNS draw (``draw_corruption``, or a
dens.denoising.Corruption built from injected draws), ``loss_terms`` both in one; the free-atom
count of the official OC trainer's reduction across processes (``free_atoms_per_process``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dens.data.batch import Batch
from dens.denoising import (
    Corruption,
    DeNSSettings,
    LossSettings,
    corrupt,
    dens_coefficient,
    dens_loss,
    force_encoding_input,
)
from dens.distributed import World
from dens.normalization import Normalizer

LOSS_TERMS = ("total", "energy", "forces", "dens")


LossFunction = Callable[[nn.Module, Batch], dict[str, Tensor]]


def dens_weight(denoising: DeNSSettings | None, epoch: int, epochs: int) -> float:
    """lambda_DeNS of (0-based) ``epoch`` (dens.denoising.dens_coefficient); 0 without DeNS."""
    return 0.0 if denoising is None else dens_coefficient(denoising, epoch, epochs)


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
    if corruption is None:
        prediction = model(batch)
    else:
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


def free_atoms_per_process(batch: Batch, losses: LossSettings, world: World) -> float | None:
    """With optim.loss_reduction "free_atoms" and several processes: the free atoms of the
    global batch divided by the number of processes (one all-reduce), fairchem's DDPLoss
    denominator (dens.denoising.dens_loss); None otherwise (each batch counts its own)."""
    if world.size == 1 or losses.reduction != "free_atoms":
        return None
    free = (~batch.fixed.to(torch.bool)).sum().to(torch.float64).reshape(1)
    return world.sum(free).item() / world.size
