"""The label normaliser of a run (``training_normalizer``): fitted on the training set
(``fit_normalizer``, on at most NORMALIZER_SAMPLES structures) or given by the experiment, after
a fitted or published per-element energy reference (dens.normalization)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from dens.config_files import find_root
from dens.data.batch import Data
from dens.errors import ConfigError
from dens.normalization import NUM_ELEMENTS, EnergyReference, Normalizer, load_element_references
from dens.training.settings import LabelSettings

NORMALIZER_SAMPLES = 100_000


def _energy_sample(train_set: Sequence[Data], seed: int) -> tuple[Tensor, Tensor]:
    """Energies [S] (float64, eV) and element counts [S, 119] of the training set, in one pass;
    above NORMALIZER_SAMPLES structures, of a random subset of that size seeded by `seed` (a
    pass over the millions of OC20/OC22 frames would take about an hour at aselmdb read
    speed)."""
    indices: Sequence[int] = range(len(train_set))
    if len(train_set) > NORMALIZER_SAMPLES:
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(len(train_set), generator=generator)[:NORMALIZER_SAMPLES].tolist()
    energies, counts = [], []
    for index in indices:
        data = train_set[index]
        energies.append(float(data.energy))
        counts.append(torch.bincount(data.atomic_numbers, minlength=NUM_ELEMENTS))
    return torch.tensor(energies, dtype=torch.float64), torch.stack(counts)


def fit_normalizer(
    train_set: Sequence[Data], reference: EnergyReference | Tensor, seed: int
) -> Normalizer:
    """Energy statistics (Normalizer.fit) of the training set (``_energy_sample``). The
    elements recorded are the whole set's where the dataset knows them (``elements``, as
    AseLmdbDataset does), so a rare element outside the subset is still known."""
    energies, counts = _energy_sample(train_set, seed)
    return Normalizer.fit(energies, counts, reference, getattr(train_set, "elements", None))


def training_normalizer(
    labels: LabelSettings, train_set: Sequence[Data], seed: int, root: Path | None = None
) -> Normalizer:
    """The label normaliser of a run (start of training; resumed runs keep last.pt's).

    - ``labels.energy_reference_file``: a published linear reference
      (dens.normalization.load_element_references; the official OC22 config's ``lin_ref``,
      fairchem ``configs/oc22/linref/oc22_linfit_coeffs.npz``), a path relative to the pipeline
      directory ``root`` (default dens.config_files.find_root(); e.g. under results/downloads/) or
      absolute. It is the per-element reference instead of one fitted here.
    - ``labels.normalizer`` {energy_mean, energy_std, force_std}: the official configs'
      normaliser (``dataset.transforms.normalizer``; fairchem divides forces by their own std),
      used as given: E' = (E - sum_i ref[Z_i] - energy_mean) / energy_std, f' = f / force_std,
      with ref from the file or 0.
    - neither: ``fit_normalizer`` with ``labels.reference`` ("mean" or "linear"); forces share
      the energy std.
    """
    reference: EnergyReference | Tensor = labels.reference
    path = labels.energy_reference_file
    if path is not None:
        full = Path(path) if Path(path).is_absolute() else (root or find_root()) / path
        if not full.is_file():
            raise ConfigError(f"optim.energy_reference_file: {full} does not exist")
        reference = load_element_references(full)
    given = labels.normalizer
    if given is None:
        return fit_normalizer(train_set, reference, seed)
    elements = getattr(train_set, "elements", None)
    if elements is None:
        counts = _energy_sample(train_set, seed)[1]
        elements = torch.nonzero(counts.sum(dim=0) > 0).flatten().tolist()
    refs = reference if isinstance(reference, Tensor) else torch.zeros(NUM_ELEMENTS)
    return Normalizer(
        mean=given.energy_mean,
        std=given.energy_std,
        element_references=refs.to(torch.float64),
        elements=tuple(sorted({int(z) for z in elements})),
        force_std=given.force_std,
    )
