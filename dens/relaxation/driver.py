"""Relax a stream of structures with a model, a batch at a time, systems leaving and entering.

At most ``batch_size`` systems are relaxed together by one :class:`~dens.relaxation.lbfgs.
BatchedLBFGS`. Each round evaluates the model once on the whole batch (energy [B], forces
[N, 3]); a system whose largest force on a free atom is below ``fmax``, or that has taken
``max_steps`` steps, leaves with the energy and forces of its current positions (ASE's
``Optimizer.irun`` order: forces, convergence check, step), and the next systems of the stream
take its place with an empty history. The others take one L-BFGS step. fairchem 1.x
(``ml_relax`` with ``mask_converged``) instead keeps converged systems in the batch until every
system of it is done; here they leave, so the batch stays full while the stream lasts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dens.data.batch import Batch, Data
from dens.data.validation import MAX_ATOMIC_NUMBER, check_structure
from dens.relaxation.lbfgs import BatchedLBFGS, LBFGSSettings
from dens.stopping import TIME_LIMIT, StopRequested

Predict = Callable[[Batch], tuple[Tensor, Tensor]]
"""Model of a batch: energy [B] (eV) and forces [N, 3] (eV/Å), e.g. dens.inference.TrainedModel
.predict."""


@dataclass(frozen=True)
class System:
    """One structure to relax: ``key`` names it in the results; ``data`` is its model input
    (dens.data.structures.atoms_to_data: pos, atomic_numbers, natoms, fixed, cell, pbc, tags, in
    the model's dtype); ``positions`` [n, 3] the starting positions in float64 (default:
    ``data.pos``), which the optimiser updates."""

    key: str
    data: Data
    positions: Tensor | None = None

    def start(self) -> Tensor:
        """The starting positions [n, 3], float64."""
        pos = self.data.pos if self.positions is None else self.positions
        return pos.to(torch.float64)


@dataclass(frozen=True)
class Relaxed:
    """The end of one relaxation: positions [n, 3] (Å), energy (eV) and forces [n, 3] (eV/Å) at
    them, the largest force on a free atom, the L-BFGS steps taken and whether it converged
    (largest free-atom force below fmax)."""

    key: str
    positions: np.ndarray
    energy: float
    forces: np.ndarray
    max_force: float
    steps: int
    converged: bool


def _check_system(system: System) -> None:
    """dens.data.validation of a system's start (InvalidStructureError naming its key, the atom
    and the value): the input check of every relaxation, whoever made the systems."""
    data = system.data
    periodic = getattr(data, "pbc", None)
    check_structure(
        data.atomic_numbers.cpu().numpy(),
        system.start().cpu().numpy(),
        f"system {system.key}",
        cell=None if periodic is None else data.cell[0].double().cpu().numpy(),
        pbc=None if periodic is None else periodic[0].cpu().numpy(),
        max_atomic_number=MAX_ATOMIC_NUMBER,
    )


def _next_systems(stream: Iterator[System], count: int) -> tuple[list[System], bool]:
    """Up to ``count`` systems from ``stream``, and whether it ran out."""
    entering: list[System] = []
    while len(entering) < count:
        system = next(stream, None)
        if system is None:
            return entering, True
        entering.append(system)
    return entering, False


def _enter(optimizer: BatchedLBFGS, entering: list[System]) -> None:
    """Check the systems ``entering`` and add them to the optimiser with an empty history."""
    for system in entering:
        _check_system(system)
    optimizer.add(
        [s.start() for s in entering],
        [s.data.fixed for s in entering],
    )


def _check_time(stop_at: float | None, active: int) -> None:
    """StopRequested once the wall-clock time reaches ``stop_at``."""
    if stop_at is not None and time.time() >= stop_at:
        raise StopRequested(
            TIME_LIMIT,
            f"with {active} system(s) in the batch",
            "rerunning the job relaxes them and the systems not started, not the finished ones",
        )


def _relaxed(
    active: list[System],
    optimizer: BatchedLBFGS,
    energy: Tensor,
    forces: Tensor,
    largest: Tensor,
    converged: Tensor,
    done: Tensor,
) -> Iterator[Relaxed]:
    """The systems ``done`` [B] marks, at their current positions."""
    for index in done.nonzero().flatten().tolist():
        atoms = optimizer.batch == index
        yield Relaxed(
            key=active[index].key,
            positions=optimizer.positions[atoms].cpu().numpy(),
            energy=float(energy[index]),
            forces=forces[atoms].to(torch.float64).cpu().numpy(),
            max_force=float(largest[index]),
            steps=int(optimizer.steps[index]),
            converged=bool(converged[index]),
        )


def relax_systems(
    systems: Iterable[System],
    predict: Predict,
    settings: LBFGSSettings | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    stop_at: float | None = None,
) -> Iterator[Relaxed]:
    """Relax every system of ``systems`` (module notes) and yield each as it finishes (in the
    order they finish). settings: OC20's by default. The model sees positions in the dtype of
    the systems' ``pos``. At the wall-clock time ``stop_at`` (time.time(); a Slurm job ending
    itself before its limit, dens.pipeline.slurm) it raises StopRequested before the next model
    call: the systems still in the batch start afresh when the relaxation is run again. Each
    system passes dens.data.validation as it enters (InvalidStructureError naming its key)."""
    settings = settings or LBFGSSettings()
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    stream = iter(systems)
    optimizer = BatchedLBFGS(settings, device)
    active: list[System] = []
    batch: Batch | None = None
    exhausted = False
    while True:
        entering: list[System] = []
        if not exhausted:
            entering, exhausted = _next_systems(stream, batch_size - len(active))
        if entering:
            _enter(optimizer, entering)
            active += entering
            batch = None
        if not active:
            return
        _check_time(stop_at, len(active))
        if batch is None:
            batch = Batch.from_data_list([s.data for s in active]).to(device)
        batch.pos = optimizer.positions.to(active[0].data.pos.dtype)
        energy, forces = predict(batch)
        largest = optimizer.max_force(forces)
        converged = largest < settings.fmax
        done = converged | (optimizer.steps >= settings.max_steps)
        if done.any():
            leaving_atoms = done[optimizer.batch]
            yield from _relaxed(active, optimizer, energy, forces, largest, converged, done)
            optimizer.remove(done)
            active = [s for s, d in zip(active, done.tolist(), strict=True) if not d]
            forces = forces[~leaving_atoms]
            batch = None
        if active:
            optimizer.step(forces)
