"""Graph construction shared by the model families (dens.models.graph)."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

from dens.errors import NotAvailableError
from dens.models.graph import molecular_graph, radius_graph


def random_batch(sizes: tuple[int, ...], box: float = 6.0, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    items = [
        Data(
            pos=box * torch.rand(n, 3, generator=gen, dtype=torch.float64),
            natoms=torch.tensor([n]),
        )
        for n in sizes
    ]
    return Batch.from_data_list(items)


def test_radius_graph_matches_brute_force() -> None:
    batch = random_batch((7, 1, 9))
    src, dst = radius_graph(batch.pos, batch.batch, batch.natoms, 5.0)
    dist = torch.cdist(batch.pos, batch.pos)
    same = batch.batch[:, None] == batch.batch[None, :]
    expected = (dist < 5.0) & same & ~torch.eye(batch.num_nodes, dtype=torch.bool)
    got = torch.zeros_like(expected)
    got[dst, src] = True
    assert torch.equal(got, expected)
    assert src.shape[0] == int(expected.sum())


def test_graph_follows_the_positions_it_is_given() -> None:
    """DeNS rebuilds the graph after adding noise: the edges come from the noisy positions."""
    batch = random_batch((6,), box=3.0)
    far = batch.pos.clone()
    far[0] += 100.0
    src, dst = molecular_graph(batch, far, 5.0)
    assert not (src == 0).any() and not (dst == 0).any()


def test_periodic_batches_are_refused_by_name() -> None:
    batch = random_batch((4,))
    batch.pbc = torch.tensor([[True, True, False]])
    with pytest.raises(NotAvailableError, match="periodic"):
        molecular_graph(batch, batch.pos, 5.0)
