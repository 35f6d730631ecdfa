"""Label normalisation in float64: references subtracted before anything becomes float32; a
separate force std; published linear-reference files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dens.normalization import NUM_ELEMENTS, Normalizer, load_element_references


def test_large_total_energies_keep_sub_meV_differences() -> None:
    energies = torch.tensor([-17613.1234, -17613.1241, -17613.1190], dtype=torch.float64)
    counts = torch.zeros(3, NUM_ELEMENTS)
    counts[:, 6], counts[:, 1], counts[:, 8] = 9, 8, 4
    normalizer = Normalizer.fit(energies, counts, "mean")
    atomic_numbers = torch.tensor([6] * 9 + [1] * 8 + [8] * 4)
    batch = torch.zeros(21, dtype=torch.long)
    for energy in energies:
        normalized = normalizer.normalize_energy(energy.view(1), atomic_numbers, batch)
        assert normalized.dtype == torch.float64
        # The model works in float32 on the normalised value (order 1): the round trip through
        # float32 and back stays well below a meV.
        back = normalizer.denormalize_energy(normalized.float(), atomic_numbers, batch)
        assert back.dtype == torch.float64
        assert abs(float(back - energy)) < 1e-5


def test_force_std_of_its_own_scales_forces_only_and_round_trips() -> None:
    refs = torch.zeros(119, dtype=torch.float64)
    shared = Normalizer(mean=1.0, std=2.0, element_references=refs)
    apart = Normalizer(mean=1.0, std=2.0, element_references=refs, force_std=0.5)
    forces = torch.tensor([[1.0, -2.0, 0.5]])
    assert torch.equal(shared.normalize_forces(forces), forces / 2.0)
    assert torch.equal(apart.normalize_forces(forces), forces / 0.5)
    assert torch.equal(apart.denormalize_forces(apart.normalize_forces(forces)), forces)
    z, batch = torch.tensor([1, 8]), torch.tensor([0, 0])
    energy = torch.tensor([5.0], dtype=torch.float64)
    assert torch.equal(
        apart.normalize_energy(energy, z, batch), shared.normalize_energy(energy, z, batch)
    )
    for normalizer in (shared, apart):
        assert Normalizer.from_dict(normalizer.to_dict()).force_scale == normalizer.force_scale
    old = {key: value for key, value in apart.to_dict().items() if key != "force_std"}
    assert Normalizer.from_dict(old).force_scale == 2.0  # checkpoints before force_std


def test_published_linear_reference_file(tmp_path) -> None:
    """load_element_references: fairchem's OC22 coefficient file layout (``coeff`` [100],
    indexed by atomic number), padded to 119 elements; Normalizer.fit with given references
    takes mean and std of E - sum_i ref[Z_i]."""
    coeff = np.linspace(-8.0, 1.0, 100)
    np.savez(tmp_path / "linref.npz", coeff=coeff)
    refs = load_element_references(tmp_path / "linref.npz")
    assert refs.dtype == torch.float64 and refs.shape == (NUM_ELEMENTS,)
    assert torch.equal(refs[:100], torch.from_numpy(coeff)) and not refs[100:].any()

    counts = torch.zeros(3, NUM_ELEMENTS, dtype=torch.float64)
    counts[:, 8], counts[:, 29] = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([4.0, 4.0, 9.0])
    energies = torch.tensor([-30.0, -41.0, -52.5], dtype=torch.float64)
    normalizer = Normalizer.fit(energies, counts, refs)
    residual = energies - counts @ refs
    assert normalizer.mean == pytest.approx(float(residual.mean()), rel=1e-12)
    assert normalizer.std == pytest.approx(float(residual.std()), rel=1e-12)
    assert torch.equal(normalizer.element_references, refs) and normalizer.elements == (8, 29)

    np.savez(tmp_path / "objects.npz", coeff=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_element_references(tmp_path / "objects.npz")
    np.savez(tmp_path / "other.npz", weights=coeff)
    with pytest.raises(ValueError, match="no 'coeff'"):
        load_element_references(tmp_path / "other.npz")
