"""Figures 3-5 of the paper (App. G): structures with Gaussian noise of several scales.

One structure per row, taken from a dataset's training split (Figures 3 and 4: the first frames
of ``rows`` different OC20 / OC22 systems; Figure 5: one conformer of each of four MD17
molecules). Column 1 shows it as it is; the other columns add noise ``sigma * eps_i``,
``eps_i ~ N(0, I_3)`` drawn once per row, to every atom (fixed ones too: "we add noise to all the
atoms in a structure for better visual effects"), with the original positions drawn lighter
underneath. Atoms are discs coloured by element (Jmol colours) with covalent-radius sizes, drawn
back to front after the figure's view rotation (slabs are tilted to show their layers and the
adsorbate). Each figure is written as PNG and PDF.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dens.errors import ConfigError


class Figure(NamedTuple):
    """One of the paper's noise figures: the datasets whose training splits give its rows,
    ``rows`` structures (different systems) per dataset, the noise scales (Å) of columns 2..,
    the title and the view: a rotation about the x axis (degrees) before projecting onto x-y."""

    datasets: list[str]
    rows: int
    sigmas: list[float]
    title: str
    tilt_deg: float


FIGURES = {
    # App. G: sigma = 0.1, 0.3, 0.5 Å for OC20 (Figure 3) and OC22 (Figure 4); 0.01-0.07 Å, MD17
    "figure3": Figure(["oc20-2m"], 3, [0.1, 0.3, 0.5], "OC20", -80.0),
    "figure4": Figure(["oc22"], 3, [0.1, 0.3, 0.5], "OC22", -80.0),
    "figure5": Figure(
        ["md17-aspirin", "md17-ethanol", "md17-naphthalene", "md17-uracil"],
        1,
        [0.01, 0.03, 0.05, 0.07],
        "MD17",
        0.0,
    ),
}


def read_structures(path: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Positions [N, 3] and atomic numbers [N] of the first frame of each of the first ``count``
    systems (distinct ``sid``; rows without sid are systems of their own) of a split (a folder
    of aselmdb shards, read in order, or one aselmdb file)."""
    import ase.db

    from dens.data.split_folder import check_split

    out, seen = [], set()
    for shard in check_split(Path(path)):
        with ase.db.connect(str(shard), readonly=True) as database:
            for row in database.select():
                sid = row.key_value_pairs.get("sid", (shard.name, row.id))
                if sid in seen:
                    continue
                seen.add(sid)
                atoms = row.toatoms()
                out.append((atoms.get_positions(), atoms.get_atomic_numbers()))
                if len(out) == count:
                    return out
    raise ValueError(f"{path}: {len(out)} system(s), the figure needs {count}")


def _view(positions: np.ndarray, tilt_deg: float) -> np.ndarray:
    """Positions rotated by ``tilt_deg`` about x [N, 3]: x, y on the page, z towards the viewer."""
    angle = np.radians(tilt_deg)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    return positions @ rotation.T


def _figure_rows(
    name: str, structure_files: Sequence[Path]
) -> tuple[Figure, list[tuple[str, tuple[np.ndarray, np.ndarray]]]]:
    """A figure and its rows: (dataset, (positions, atomic numbers)), ``rows`` structures of
    each of its datasets' training splits ``structure_files``."""
    if name not in FIGURES:
        raise ConfigError(f"unknown figure {name!r}; known: {', '.join(FIGURES)}")
    figure = FIGURES[name]
    if len(structure_files) != len(figure.datasets):
        raise ConfigError(
            f"{name} draws {len(figure.datasets)} dataset(s) ({', '.join(figure.datasets)}); "
            f"got {len(structure_files)} structure file(s)"
        )
    rows = [
        (dataset, structure)
        for dataset, path in zip(figure.datasets, structure_files, strict=True)
        for structure in read_structures(Path(path), figure.rows)
    ]
    return figure, rows


def _draw_row(
    axes: Sequence[Any],
    figure: Figure,
    dataset: str,
    positions: np.ndarray,
    numbers: np.ndarray,
    eps: np.ndarray,
) -> None:
    """One structure: as it is, then with noise ``sigma * eps`` per column over the original
    positions drawn lighter."""
    from ase.data import covalent_radii
    from ase.data.colors import jmol_colors

    colors = jmol_colors[numbers]
    lighter = 1.0 - 0.35 * (1.0 - colors)  # the same hue, washed out towards white
    sizes = 90.0 * covalent_radii[numbers] ** 2
    original = _view(positions, figure.tilt_deg)
    for axis, sigma in zip(axes, [0.0, *figure.sigmas], strict=True):
        layers = [(_view(positions + sigma * eps, figure.tilt_deg), colors, 1.0, 0.4)]
        if sigma > 0:
            layers.insert(0, (original, lighter, 0.45, 0.0))
        for projected, face, alpha, edge in layers:
            order = np.argsort(projected[:, 2])  # back to front
            axis.scatter(
                *projected[order, :2].T,
                s=sizes[order],
                c=face[order],
                alpha=alpha,
                edgecolors="k",
                linewidths=edge,
            )
        axis.set_aspect("equal")
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(False)
        axis.set_title(f"{dataset}: original" if sigma == 0 else f"σ = {sigma} Å", fontsize=8)


def draw_figure(
    name: str, structure_files: Sequence[Path], out: Path, scale: str, seed: int = 0
) -> list[Path]:
    """Draw one figure to ``out`` (PNG) and the same path with suffix .pdf; return both. Rows:
    ``rows`` structures of ``structure_files[k]``, the training split of the figure's k-th
    dataset (``FIGURES``) at ``scale``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, rows = _figure_rows(name, structure_files)
    rng = np.random.default_rng(seed)
    columns = len(figure.sigmas) + 1
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(2.6 * columns, 2.4 * len(rows)), squeeze=False
    )
    for row, (dataset, (positions, numbers)) in enumerate(rows):
        eps = rng.standard_normal(positions.shape)
        _draw_row(axes[row], figure, dataset, positions, numbers, eps)
    fig.suptitle(
        f"{figure.title}: Gaussian noise added to all atoms; lighter: original positions "
        f"(scale {scale})",
        fontsize=10,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pdf = out.with_suffix(".pdf")
    fig.savefig(out, dpi=120)
    fig.savefig(pdf)
    plt.close(fig)
    return [out, pdf]
