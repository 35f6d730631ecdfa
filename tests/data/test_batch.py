"""Structures and batches (dens.data.batch): concatenation, the structure index, round trips."""

from __future__ import annotations

import pickle

import pytest
import torch

from dens.data.batch import Batch, Data


def structure(n: int, energy: float, periodic: bool = False) -> Data:
    fields = {
        "pos": torch.randn(n, 3),
        "atomic_numbers": torch.randint(1, 10, (n,)),
        "natoms": torch.tensor([n]),
        "energy": torch.tensor([energy], dtype=torch.float64),
    }
    if periodic:
        fields["cell"] = torch.eye(3).view(1, 3, 3) * 5
    return Data(**fields)


def test_batch_concatenates_fields_and_indexes_atoms() -> None:
    items = [structure(3, 1.0), structure(1, 2.0), structure(2, 3.0)]
    batch = Batch.from_data_list(items)
    assert batch.num_graphs == 3 and batch.num_nodes == 6
    assert batch.batch.tolist() == [0, 0, 0, 1, 2, 2]
    assert batch.natoms.tolist() == [3, 1, 2]
    assert batch.energy.dtype == torch.float64 and batch.energy.tolist() == [1.0, 2.0, 3.0]
    assert torch.equal(batch.pos, torch.cat([item.pos for item in items]))
    assert "cell" not in batch and getattr(batch, "cell", None) is None
    for original, back in zip(items, batch.to_data_list(), strict=True):
        assert back.keys() == original.keys()
        assert all(torch.equal(getattr(back, k), getattr(original, k)) for k in back.keys())


def test_copies_are_independent_and_keep_the_layout() -> None:
    batch = Batch.from_data_list([structure(2, 0.0, True), structure(4, 1.0, True)])
    changed = batch.clone()
    changed.pos += 1.0
    assert not torch.equal(changed.pos, batch.pos)
    assert changed.num_graphs == 2 and changed.structure(1).cell.shape == (1, 3, 3)
    moved = batch.to("cpu")
    assert moved.structure(0).num_nodes == 2
    restored = pickle.loads(pickle.dumps(batch))
    assert restored.num_graphs == 2 and torch.equal(restored.batch, batch.batch)
    item = batch.structure(1)
    item.pos.zero_()
    assert batch.pos[2:].abs().sum() > 0  # structure() returns copies


def test_mismatched_or_bad_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="structure 1 has fields"):
        Batch.from_data_list([structure(2, 0.0), structure(2, 0.0, periodic=True)])
    with pytest.raises(ValueError, match="at least one structure"):
        Batch.from_data_list([])
    with pytest.raises(TypeError, match="field 'sid' must be a tensor"):
        Data(pos=torch.zeros(1, 3), sid="x")
    with pytest.raises(IndexError, match="structure 2 of a batch of 2"):
        Batch.from_data_list([structure(1, 0.0), structure(1, 0.0)]).structure(2)
