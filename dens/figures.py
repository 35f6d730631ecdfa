"""Figures 3-5 of the paper (App. G): structures with Gaussian noise of several scales.

For each row a structure from a dataset's training split is drawn as it is (column 1) and with
noise ``sigma * eps_i``, ``eps_i ~ N(0, I_3)``, added to every atom (the other columns), the
original positions drawn lighter underneath, as the paper does "for better visual effects".
Projection onto the x-y plane; colours by element.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dens.errors import ConfigError

FIGURES = {
    # name: (datasets, noise scales in Å, title) as in App. G
    "figure3": (["oc20-2m"], [0.1, 0.3, 0.5], "OC20"),
    "figure4": (["oc22"], [0.1, 0.3, 0.5], "OC22"),
    "figure5": (
        ["md17-aspirin", "md17-ethanol", "md17-naphthalene", "md17-uracil"],
        [0.01, 0.03, 0.05, 0.07],
        "MD17",
    ),
}


def _first_structure(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions [N, 3] and atomic numbers [N] of the first row of an aselmdb file."""
    import ase.db

    with ase.db.connect(str(path), readonly=True) as database:
        for row in database.select(limit=1):
            atoms = row.toatoms()
            return atoms.get_positions(), atoms.get_atomic_numbers()
    raise ValueError(f"{path}: no structures")


def draw_figure(
    name: str, structure_files: Sequence[Path], out: Path, scale: str, seed: int = 0
) -> Path:
    """Draw one figure to ``out`` (PNG): row k shows the first structure of
    ``structure_files[k]``, the training split of the figure's k-th dataset (``FIGURES``) at
    ``scale``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase.data.colors import jmol_colors

    if name not in FIGURES:
        raise ConfigError(f"unknown figure {name!r}; known: {', '.join(FIGURES)}")
    datasets, sigmas, title = FIGURES[name]
    if len(structure_files) != len(datasets):
        raise ConfigError(
            f"{name} draws {len(datasets)} dataset(s) ({', '.join(datasets)}); "
            f"got {len(structure_files)} structure file(s)"
        )
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(
        len(datasets),
        len(sigmas) + 1,
        figsize=(2.6 * (len(sigmas) + 1), 2.6 * len(datasets)),
        squeeze=False,
    )
    for row, (dataset, path) in enumerate(zip(datasets, structure_files, strict=True)):
        positions, numbers = _first_structure(path)
        colors = jmol_colors[numbers]
        eps = rng.standard_normal(positions.shape)
        for column, sigma in enumerate([0.0, *sigmas]):
            axis = axes[row, column]
            if sigma > 0:
                axis.scatter(*positions[:, :2].T, c=colors, s=40, alpha=0.25, edgecolors="none")
            noisy = positions + sigma * eps
            axis.scatter(*noisy[:, :2].T, c=colors, s=40, edgecolors="k", linewidths=0.3)
            axis.set_aspect("equal")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(f"{dataset}: original" if sigma == 0 else f"σ = {sigma} Å", fontsize=8)
    fig.suptitle(f"{title}: Gaussian noise added to all atoms (scale {scale})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
