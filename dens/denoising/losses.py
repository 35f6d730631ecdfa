"""DeNS training losses (dens.denoising): Eq. 1 for original-task structures and Eq. 6 for
DeNS ones, with the reductions of the module notes of dens.denoising."""

import math
from typing import get_args

import torch
from torch import Tensor

from dens.data.batch import Batch
from dens.denoising.checks import _check_real, _check_shape, _require
from dens.denoising.corruption import Corruption
from dens.denoising.settings import DeNSSettings, ErrorMetric, LossSettings


def per_atom_error(prediction: Tensor, target: Tensor, metric: ErrorMetric) -> Tensor:
    """Per-atom error of vectors [N, 3] -> [N] ("l2mae", "mse" or "mae", module notes)."""
    diff = prediction - target
    if metric == "l2mae":
        return torch.linalg.vector_norm(diff, dim=-1)
    if metric == "mse":
        return diff.square().sum(dim=-1)
    if metric == "mae":
        return diff.abs().mean(dim=-1)
    raise ValueError(f"metric must be one of {get_args(ErrorMetric)}, got {metric!r}")


def _per_structure_sum(values: Tensor, batch: Tensor, num_structures: int) -> Tensor:
    out = torch.zeros(num_structures, dtype=values.dtype, device=values.device)
    return out.index_add(0, batch, values)


def _check_loss_inputs(
    prediction: dict[str, Tensor],
    data: Batch,
    energy_target: Tensor,
    force_target: Tensor,
    coefficient: float,
) -> tuple[float, Tensor]:
    """``coefficient`` as a float and the free atoms (bool [N], from ``data.fixed``), after
    checking them and the shapes of the loss's tensors."""
    _require(data, ("batch", "natoms", "fixed"))
    coefficient = _check_real("coefficient", coefficient)
    if not (coefficient >= 0.0 and math.isfinite(coefficient)):
        raise ValueError(f"coefficient must be a finite number >= 0, got {coefficient!r}")
    for key in ("energy", "forces"):
        if key not in prediction:
            raise ValueError(f"prediction lacks {key!r}; it has {sorted(prediction)}")
    num_atoms = data.batch.numel()
    num_structures = data.natoms.numel()
    _check_shape('prediction["energy"]', prediction["energy"], (num_structures,))
    _check_shape('prediction["forces"]', prediction["forces"], (num_atoms, 3))
    _check_shape("energy_target", energy_target, (num_structures,))
    _check_shape("force_target", force_target, (num_atoms, 3))
    free = ~data.fixed.to(torch.bool)
    _check_shape("data.fixed", free, (num_atoms,))
    return coefficient, free


def _corrupted_atoms(corruption: Corruption | None, free: Tensor) -> Tensor:
    """m [N]: the corrupted atoms (none without ``corruption``), checked to be free ones."""
    if corruption is None:
        return torch.zeros_like(free)
    corrupted = corruption.corrupted
    _check_shape("corruption.corrupted", corrupted, (free.numel(),))
    if bool((corrupted & ~free).any()):
        raise ValueError("corruption.corrupted marks fixed atoms; DeNS never corrupts them")
    return corrupted


def _noise_error(
    prediction: dict[str, Tensor],
    corruption: Corruption | None,
    corrupted: Tensor,
    loss: LossSettings,
    coefficient: float,
) -> Tensor | None:
    """err_eps [N] on corrupted atoms, 0 elsewhere; None when no atom is corrupted or
    lambda_DeNS is 0."""
    num_corrupted = int(corrupted.sum())
    if not (num_corrupted > 0 and coefficient > 0.0):
        return None
    assert corruption is not None
    if "noise" not in prediction:
        raise ValueError(
            f"prediction lacks 'noise' but {num_corrupted} atoms are corrupted; "
            "call the model with predict_noise=True"
        )
    noise_pred = prediction["noise"]
    _check_shape('prediction["noise"]', noise_pred, (corrupted.numel(), 3))
    noise_error = per_atom_error(noise_pred, corruption.noise_target, loss.noise_metric)
    return torch.where(corrupted, noise_error, torch.zeros_like(noise_error))


def _energy_term(
    energy_pred: Tensor, energy_target: Tensor, loss: LossSettings, dropped: Tensor | None
) -> Tensor:
    """lambda_E sum_j |E'_j - E_hat_j| / B over the structures whose term is kept."""
    energy_error = (energy_pred - energy_target).abs()
    if dropped is None:
        energy_kept = energy_error
    else:
        energy_kept = torch.where(dropped, torch.zeros_like(energy_error), energy_error)
    return loss.energy_coefficient * energy_kept.sum() / energy_pred.numel()


def _per_structure_terms(
    loss: LossSettings,
    data: Batch,
    free: Tensor,
    force_error: Tensor,
    noise_error: Tensor | None,
    coefficient: float,
) -> tuple[Tensor, Tensor | None]:
    """Reduction "structure": the force term and the DeNS term (None without noise error),
    each atom's error divided by its structure's free-atom count |S_j|, then summed / B."""
    batch: Tensor = data.batch
    num_structures = data.natoms.numel()
    free_count = _per_structure_sum(free.to(force_error.dtype), batch, num_structures)
    free_count = free_count.clamp(min=1.0)
    force_per_structure = _per_structure_sum(force_error, batch, num_structures) / free_count
    forces = loss.force_coefficient * force_per_structure.sum() / num_structures
    if noise_error is None:
        return forces, None
    noise_per_structure = _per_structure_sum(noise_error, batch, num_structures)
    return forces, coefficient * (noise_per_structure / free_count).sum() / num_structures


def _atom_denominators(
    reduction: str,
    free: Tensor,
    force_atoms: Tensor,
    corrupted: Tensor,
    hybrid: bool,
    free_atoms_per_process: float | None,
) -> tuple[float, float]:
    """Reductions "atom" and "free_atoms": what the summed force errors and the summed noise
    errors are divided by (``dens_loss``)."""
    if reduction == "atom":
        return max(int(force_atoms.sum()), 1), int(corrupted.sum())
    count = max(int(free.sum()), 1)
    if not hybrid and free_atoms_per_process is not None:
        count = free_atoms_per_process
    return count, count


def _dropped_and_hybrid(
    data: Batch, corruption: Corruption | None, dens: DeNSSettings | None
) -> tuple[Tensor | None, bool]:
    """The structures whose energy term is dropped (bool [B], None: none) and whether the batch
    is a hybrid one (a DeNS batch with partial corruption), see ``dens_loss``."""
    dropped = None
    hybrid = False
    if corruption is not None:
        if dens is None:
            raise ValueError("dens_loss: a corruption needs the DeNS settings (dens), got None")
        _check_shape(
            "corruption.dens_structures", corruption.dens_structures, (data.natoms.numel(),)
        )
        hybrid = dens.partial_corruption and bool(corruption.dens_structures.any())
        if not dens.energy_loss and dens.decision == "batch":
            dropped = corruption.dens_structures
        elif not dens.energy_loss:
            corrupted = corruption.corrupted.to(torch.float64)
            dropped = _per_structure_sum(corrupted, data.batch, data.natoms.numel()) > 0
    return dropped, hybrid


def dens_loss(
    prediction: dict[str, Tensor],
    data: Batch,
    corruption: Corruption | None,
    energy_target: Tensor,
    force_target: Tensor,
    loss: LossSettings,
    dens: DeNSSettings | None,
    coefficient: float,
    free_atoms_per_process: float | None = None,
) -> dict[str, Tensor]:
    """Training loss of a mixed batch: Eq. 1 for original-task structures, Eq. 6 for DeNS ones.

    prediction: model output on the corrupted batch, ``"energy"`` [B], ``"forces"`` [N, 3]
        and ``"noise"`` [N, 3] (needed when an atom is corrupted and coefficient > 0).
    data: the batch (``batch`` [N], ``natoms`` [B], ``fixed`` [N]).
    corruption: the draw from ``corrupt``; None = no DeNS (Eq. 1 for every structure; ``dens``
        may then be None). coefficient: lambda_DeNS for this epoch (``dens_coefficient``).
    energy_target: E' [B] (normalised, of the ORIGINAL structures). force_target: f' [N, 3].
    dens: ``energy_loss`` (Eq. 6 energy term kept or dropped), ``decision``, ``partial_corruption``
        (which reduction "free_atoms" applies, module notes).
    free_atoms_per_process: reduction "free_atoms" with several processes: the free atoms of
        the global batch / world size (fairchem's DDPLoss mean), except in a hybrid batch (a DeNS
        batch with partial corruption: each process's own count, as the official hybrid loss);
        None = this batch's own count (one process).

    Per structure j with free-atom count |S_j| and corruption mask m (Algorithm 2):
        L_j = [kept] lambda_E |E'_j - E_hat_j|
              + lambda_F / |S_j| sum_{free i in j} (1 - m_i) err_F(f_hat_i, f'_i)
              + lambda_DeNS / |S_j| sum_{i in j} m_i err_eps(eps_hat_i, eps_i / sigma),
    and the loss is sum_j L_j / B (``reduction="atom"`` and ``"free_atoms"``: see the module
    notes). When ``dens.energy_loss`` is False the energy term is dropped for structures with a
    corrupted atom (decision "structure") or for every structure of a DeNS batch ("batch").

    Returns 0-dim tensors ``"energy"``, ``"forces"``, ``"dens"`` (each term's weighted share,
    already divided by B) and ``"total"`` = their sum, the tensor to back-propagate.
    """
    energy_dropped, hybrid = _dropped_and_hybrid(data, corruption, dens)
    coefficient, free = _check_loss_inputs(
        prediction, data, energy_target, force_target, coefficient
    )
    corrupted = _corrupted_atoms(corruption, free)
    energy = _energy_term(prediction["energy"], energy_target, loss, energy_dropped)
    force_atoms = free & ~corrupted
    force_error = per_atom_error(prediction["forces"], force_target, loss.force_metric)
    force_error = torch.where(force_atoms, force_error, torch.zeros_like(force_error))
    noise_error = _noise_error(prediction, corruption, corrupted, loss, coefficient)
    if loss.reduction == "structure":
        forces, dens_term = _per_structure_terms(
            loss, data, free, force_error, noise_error, coefficient
        )
    else:
        force_count, noise_count = _atom_denominators(
            loss.reduction, free, force_atoms, corrupted, hybrid, free_atoms_per_process
        )
        forces = loss.force_coefficient * force_error.sum() / force_count
        dens_term = None if noise_error is None else coefficient * noise_error.sum() / noise_count
    dens_term = prediction["energy"].new_zeros(()) if dens_term is None else dens_term
    terms = {"energy": energy, "forces": forces, "dens": dens_term}
    return {"total": energy + forces + dens_term, **terms}
