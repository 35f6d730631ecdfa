"""Label normalisation (the units of Eq. 1), fitted on the training set in float64.

Energies are read in float64 (dens.data.structures) and the reference (the training mean, plus
per-element references with "linear" or from a published file) is subtracted in float64 before
anything becomes float32: at paper-scale MD17 totals (about -17,600 eV) the float32 spacing is
2 meV, so a float32 label would lose 1-2 meV before training starts. Predictions are
de-normalised in float64 likewise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

NUM_ELEMENTS = 119  # atomic numbers 0..118

EnergyReference = Literal["mean", "linear"]


@dataclass(frozen=True)
class Normalizer:
    """Label normalisation of the engine (the units of Eq. 1), fitted on the training set.

        E' = (E - sum_i ref[z_i] - mean) / std        f' = f / std        (eV -> unitless)

    `mean`/`std` are the mean and (unbiased) standard deviation of the per-structure training
    energies after subtracting the element references `ref` [119] (eV per atom). Forces share
    the energy std so that f' = -dE'/dpos holds for gradient-force models. Reference "mean"
    (default; the official Equiformer MD17 code) uses ref = 0; "linear" fits ref by least
    squares of E on the element counts (for total energies across compositions, e.g. OC22).
    With a single composition (one MD17 molecule) both give the same normalised labels.

    `elements` are the atomic numbers present in the training set, sorted (the ASE calculator
    refuses structures with other elements: the model and, with "linear", `ref` know nothing of
    them); None when unknown (a checkpoint written before dens stored them).

    `force_std`: a force scale of its own, f' = f / force_std, as the official OC20/OC22 configs
    normalise forces apart from energies (OC22: energy std 25.1 eV, force std 0.148 eV/Å; given
    to training by optim.normalizer, dens.training.labels.training_normalizer) and checkpoints
    imported from fairchem 1.x; None (a fitted normaliser) = `std`.
    """

    mean: float
    std: float
    element_references: Tensor  # float64 [119], eV per atom
    elements: tuple[int, ...] | None = None
    force_std: float | None = None

    @property
    def force_scale(self) -> float:
        """The std forces are divided by: `force_std`, or the energy `std`."""
        return self.std if self.force_std is None else self.force_std

    @classmethod
    def fit(
        cls,
        energies: Tensor,
        counts: Tensor,
        reference: EnergyReference | Tensor,
        elements: Iterable[int] | None = None,
    ) -> Normalizer:
        """energies float [S] (eV), counts [S, 119] element counts per structure. `reference`:
        "mean", "linear" (fitted here), or given element references [119] in eV per atom (a
        published linear reference, `load_element_references`) whose residuals give mean and
        std. `elements`: the atomic numbers of the whole training set when `counts` covers a
        subset of it (default: those `counts` has)."""
        energies = energies.to(torch.float64)
        counts = counts.to(torch.float64)
        if energies.numel() < 2:
            raise ValueError(
                f"need at least 2 training structures for energy statistics, got {energies.numel()}"
            )
        bad = torch.nonzero(~torch.isfinite(energies)).flatten()
        if bad.numel():
            raise ValueError(f"non-finite energy label in training structure(s) {bad.tolist()}")
        name = "given" if isinstance(reference, Tensor) else reference
        if isinstance(reference, Tensor):
            if tuple(reference.shape) != (NUM_ELEMENTS,):
                raise ValueError(
                    f"element references must have shape [{NUM_ELEMENTS}], "
                    f"got {list(reference.shape)}"
                )
            refs = reference.to(torch.float64)
        elif reference == "mean":
            refs = torch.zeros(NUM_ELEMENTS, dtype=torch.float64)
        elif reference == "linear":
            refs = torch.linalg.lstsq(counts, energies[:, None], driver="gelsd").solution[:, 0]
        else:
            raise ValueError(f"energy_reference must be 'mean' or 'linear', got {reference!r}")
        residual = energies - counts @ refs
        std = float(residual.std())
        if not (math.isfinite(std) and std > 0.0):
            raise ValueError(f"training energies have std {std} after the {name} reference")
        if elements is None:
            elements = torch.nonzero(counts.sum(dim=0) > 0).flatten().tolist()
        return cls(
            mean=float(residual.mean()),
            std=std,
            element_references=refs,
            elements=tuple(sorted({int(z) for z in elements})),
        )

    def _reference(self, atomic_numbers: Tensor, batch: Tensor, num_structures: int) -> Tensor:
        refs = self.element_references.to(atomic_numbers.device)[atomic_numbers]
        out = torch.zeros(num_structures, dtype=refs.dtype, device=refs.device)
        return out.index_add(0, batch, refs) + self.mean

    def normalize_energy(self, energy: Tensor, atomic_numbers: Tensor, batch: Tensor) -> Tensor:
        """E [B] (eV) -> E' [B] in float64: the reference is subtracted in float64 whatever the
        dtype of `energy` (cast the result to the model's dtype afterwards)."""
        ref = self._reference(atomic_numbers, batch, energy.shape[0])
        return (energy.to(ref.dtype) - ref) / self.std

    def denormalize_energy(self, energy: Tensor, atomic_numbers: Tensor, batch: Tensor) -> Tensor:
        """E' [B] -> E [B] (eV), float64 (a float32 total energy of a large molecule would lose
        meV: the float32 spacing near -17,000 eV is 2 meV)."""
        ref = self._reference(atomic_numbers, batch, energy.shape[0])
        return energy.to(ref.dtype) * self.std + ref

    def normalize_forces(self, forces: Tensor) -> Tensor:
        """f [N,3] (eV/Å) -> f' [N,3]."""
        return forces / self.force_scale

    def denormalize_forces(self, forces: Tensor) -> Tensor:
        """f' [N,3] -> f [N,3] (eV/Å)."""
        return forces * self.force_scale

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "element_references": self.element_references,
            "elements": None if self.elements is None else list(self.elements),
            "force_std": self.force_std,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Normalizer:
        """The inverse of `to_dict`; a dict without "elements" or "force_std" (an older
        checkpoint) gives None (unknown; forces scaled by `std`)."""
        elements = state.get("elements")
        return cls(
            mean=float(state["mean"]),
            std=float(state["std"]),
            element_references=state["element_references"].to(torch.float64),
            elements=None if elements is None else tuple(int(z) for z in elements),
            force_std=None if state.get("force_std") is None else float(state["force_std"]),
        )


def load_element_references(path: Path) -> Tensor:
    """Per-element energy references [119] float64 (eV per atom) from a published linear
    reference: an .npz whose ``coeff`` [K] is indexed by atomic number (fairchem's
    ``configs/oc22/linref/oc22_linfit_coeffs.npz``, K = 100, which the official OC22 config's
    ``lin_ref`` names; elements >= K get 0). Read with allow_pickle=False. As fairchem's
    OC22LmdbDataset (ocp 5d0f59e ``ocpmodels/datasets/oc22_lmdb_dataset.py``:115-119, 197-199)
    the target is then E - sum_i coeff[Z_i], normalised afterwards."""
    with np.load(path, allow_pickle=False) as archive:
        if "coeff" not in archive.files:
            raise ValueError(f"{path}: no 'coeff' array (has {archive.files})")
        coeff = torch.from_numpy(np.asarray(archive["coeff"], dtype=np.float64))
    if coeff.ndim != 1 or not 0 < coeff.numel() <= NUM_ELEMENTS:
        raise ValueError(f"{path}: 'coeff' must be 1-d with at most {NUM_ELEMENTS} entries")
    if not bool(torch.isfinite(coeff).all()):
        raise ValueError(f"{path}: 'coeff' has non-finite entries")
    refs = torch.zeros(NUM_ELEMENTS, dtype=torch.float64)
    refs[: coeff.numel()] = coeff
    return refs
