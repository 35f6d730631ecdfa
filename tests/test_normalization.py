"""Label normalisation in float64: references subtracted before anything becomes float32."""

from __future__ import annotations

import torch

from dens.normalization import NUM_ELEMENTS, Normalizer


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
