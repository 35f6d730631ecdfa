"""Observables of a simulation (dens.simulate): bonds and the stability criterion, h(r) and its
MAE."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase.data import covalent_radii

from dens.errors import InvalidDataError
from dens.simulate.settings import BOND_SKIN_A, HR_BINS, HR_RANGE_A


def bonded_pairs(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Bonds [B, 2] (i < j) of a molecule: pairs closer than r_cov(i) + r_cov(j) + 2 * 0.3 Å.

    numbers [N]; positions [N, 3] (Å). Raises InvalidDataError when there is no bond."""
    radii = covalent_radii[np.asarray(numbers)] + BOND_SKIN_A
    i, j = np.triu_indices(len(numbers), k=1)
    distance = np.linalg.norm(positions[i] - positions[j], axis=-1)
    bonded = distance < radii[i] + radii[j]
    if not bonded.any():
        raise InvalidDataError(
            f"no bonded atom pair in the initial configuration of {len(numbers)} atoms"
        )
    return np.stack([i[bonded], j[bonded]], axis=1)


def bond_lengths(positions: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Lengths [..., B] (Å) of the bonds ``pairs`` [B, 2] in positions [..., N, 3]."""
    return np.linalg.norm(positions[..., pairs[:, 0], :] - positions[..., pairs[:, 1], :], axis=-1)


def max_bond_deviation(
    positions: np.ndarray, pairs: np.ndarray, reference_lengths: np.ndarray
) -> np.ndarray:
    """Largest |length - reference| [...] (Å) over the bonds; positions [..., N, 3],
    reference_lengths [B]. Non-finite positions give inf."""
    deviation = np.abs(bond_lengths(positions, pairs) - reference_lengths).max(axis=-1)
    return np.where(np.isfinite(deviation), deviation, np.inf)


def first_unstable_frame(
    frames: np.ndarray, pairs: np.ndarray, reference_lengths: np.ndarray, threshold: float
) -> int | None:
    """Index of the first frame of frames [T, N, 3] with a bond deviating by more than
    ``threshold`` Å from its reference length, or None if every frame is stable."""
    unstable = np.flatnonzero(max_bond_deviation(frames, pairs, reference_lengths) > threshold)
    return int(unstable[0]) if unstable.size else None


def distance_histogram(frames: Sequence[np.ndarray] | np.ndarray, chunk: int = 4096) -> np.ndarray:
    """h(r) [HR_BINS]: histogram density (integrates to 1 over [1e-6, 10] Å) of all interatomic
    distances in frames [T, N, 3] (MDsim ``get_hr``), read ``chunk`` frames at a time."""
    edges = np.linspace(*HR_RANGE_A, HR_BINS + 1)
    counts = np.zeros(HR_BINS, dtype=np.int64)
    for start in range(0, len(frames), chunk):
        block = np.asarray(frames[start : start + chunk], dtype=np.float64)
        i, j = np.triu_indices(block.shape[1], k=1)
        distances = np.linalg.norm(block[:, i] - block[:, j], axis=-1)
        counts += np.histogram(distances, edges)[0]
    total = counts.sum()
    if total == 0:
        raise InvalidDataError("h(r): no interatomic distance within [1e-6, 10] Å")
    return counts / (total * np.diff(edges))


def hr_mae(h_simulation: np.ndarray, h_reference: np.ndarray) -> float:
    """h(r) MAE: mean over bins of |h_sim - h_ref| times the range, 10 Å (MDsim
    ``mae(hist_pred, hist_gt, xlim)``); 0 for identical distributions."""
    return float(np.abs(h_simulation - h_reference).mean() * HR_RANGE_A[1])
