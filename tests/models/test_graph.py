"""Graph construction shared by the model families (dens.models.graph)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111
from fairchem.core.graph.radius_graph_pbc import radius_graph_pbc
from torch import Tensor

from dens.data.batch import Batch, Data
from dens.data.structures import atoms_to_data
from dens.errors import NotAvailableError
from dens.models.graph import edge_vectors, molecular_graph, periodic_neighbors, radius_graph


def periodic_graph(
    batch: Batch, pos: Tensor, cutoff: float, max_neighbors: int
) -> tuple[Tensor, Tensor, Tensor]:
    """src, dst and the edge vectors at ``pos``, as the SO(3) networks build them."""
    src, dst, offset = periodic_neighbors(batch, pos, cutoff, max_neighbors)
    return src, dst, edge_vectors(batch, pos, src, dst, offset)


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


# Periodic graphs, checked against fairchem-core's own radius_graph_pbc.


def slab_with_adsorbate() -> Atoms:
    """Cu(111) 3x3x4 with O in an fcc hollow, 8 Å vacuum, pbc (T, T, F), rattled."""
    slab = fcc111("Cu", (3, 3, 4), vacuum=8.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    slab.rattle(0.05, seed=1)
    return slab


def small_bulk() -> Atoms:
    """Rock-salt primitive cell (2 atoms, plane spacing ~3.3 Å): cutoff 12 needs 4 images
    each way."""
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    atoms.rattle(0.05, seed=2)
    return atoms


def triclinic() -> Atoms:
    """A skewed triclinic cell with random atoms, some outside the cell."""
    rng = np.random.default_rng(3)
    cell = np.array([[4.3, 0.0, 0.0], [2.6, 3.9, 0.0], [-1.7, 1.3, 4.6]])
    frac = rng.uniform(-0.2, 1.2, (7, 3))
    return Atoms("C7", scaled_positions=frac, cell=cell, pbc=True)


STRUCTURES = {"slab": slab_with_adsorbate, "bulk": small_bulk, "triclinic": triclinic}


def as_batch(*structures: Atoms) -> Batch:
    return Batch.from_data_list([atoms_to_data(a, torch.float64) for a in structures])


def fairchem_edges(
    batch: Batch, cutoff: float, max_neighbors: int, strictly: bool = True
) -> tuple[Tensor, ...]:
    """src, dst, offset (long [E, 3]) from fairchem-core's radius_graph_pbc."""
    edge_index, offset, _ = radius_graph_pbc(batch.clone(), cutoff, max_neighbors, strictly)
    return edge_index[0], edge_index[1], offset.round().long()


def edge_set(src: Tensor, dst: Tensor, offset: Tensor) -> set[tuple[int, ...]]:
    return {(s, d, *o) for s, d, o in zip(src.tolist(), dst.tolist(), offset.tolist(), strict=True)}


def distances_by_destination(batch: Batch, src: Tensor, dst: Tensor, offset: Tensor) -> Tensor:
    """[E, 2]: (dst, |edge vector|) sorted by dst, then distance."""
    shift = torch.bmm(offset.double().unsqueeze(1), batch.cell[batch.batch[src]]).squeeze(1)
    dist = (batch.pos[src] + shift - batch.pos[dst]).norm(dim=-1)
    order = torch.argsort(dist, stable=True)
    order = order[torch.argsort(dst[order], stable=True)]
    return torch.stack([dst[order].double(), dist[order]], dim=-1)


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_periodic_edges_match_fairchem_untruncated(name: str) -> None:
    batch = as_batch(STRUCTURES[name]())
    ours = periodic_neighbors(batch, batch.pos, 12.0, 10**6)
    theirs = fairchem_edges(batch, 12.0, 10**6)
    assert len(ours[0]) > 100 * batch.num_nodes
    assert edge_set(*ours) == edge_set(*theirs)


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_periodic_edges_match_fairchem_truncated(name: str) -> None:
    batch = as_batch(STRUCTURES[name]())
    ours = periodic_neighbors(batch, batch.pos, 12.0, 20)
    assert torch.equal(torch.bincount(ours[1]), torch.full((batch.num_nodes,), 20))
    expected = distances_by_destination(batch, *fairchem_edges(batch, 12.0, 20))
    torch.testing.assert_close(distances_by_destination(batch, *ours), expected)


def symmetric_slab() -> Atoms:
    """Cu(111) 2x2x3, not rattled: whole shells of equidistant neighbours."""
    return fcc111("Cu", (2, 2, 3), vacuum=8.0)


@pytest.mark.parametrize("make", [symmetric_slab, small_bulk], ids=["symmetric", "bulk"])
def test_degeneracy_tolerance_matches_fairchem_non_strict(make: Callable[[], Atoms]) -> None:
    """fairchem's enforce_max_neighbors_strictly=False: whole shells of near-equal distance
    (within 0.01 Å^2 of the 21st nearest) are kept, the same edges exactly."""
    batch = as_batch(make())
    ours = periodic_neighbors(batch, batch.pos, 12.0, 20, degeneracy_tolerance=0.01)
    assert (torch.bincount(ours[1]) > 20).all()
    assert edge_set(*ours) == edge_set(*fairchem_edges(batch, 12.0, 20, strictly=False))


def test_slab_has_no_images_along_its_vacuum() -> None:
    batch = as_batch(slab_with_adsorbate())
    _, _, offset = periodic_neighbors(batch, batch.pos, 12.0, 10**6)
    assert (offset[:, 2] == 0).all() and (offset[:, :2] != 0).any()


def test_a_batch_is_the_union_of_its_structures() -> None:
    structures = [f() for f in STRUCTURES.values()]
    batch = as_batch(*structures)
    start = 0
    expected = []
    for atoms in structures:
        one = as_batch(atoms)
        src, dst, offset = periodic_neighbors(one, one.pos, 12.0, 20)
        expected.append(edge_set(src + start, dst + start, offset))
        start += len(atoms)
    assert edge_set(*periodic_neighbors(batch, batch.pos, 12.0, 20)) == set().union(*expected)


def canonical_order(src: Tensor, dst: Tensor, vec: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The edges sorted by (dst, src, edge vector to 1e-6 Å)."""
    keys = list(zip(dst.tolist(), src.tolist(), vec.round(decimals=6).tolist(), strict=True))
    order = torch.tensor(sorted(range(len(keys)), key=keys.__getitem__))
    return src[order], dst[order], vec[order]


def test_translating_an_atom_by_a_lattice_vector_keeps_the_edge_vectors() -> None:
    batch = as_batch(triclinic())
    moved = batch.pos.clone()
    moved[2] += 7 * batch.cell[0, 0] - 9 * batch.cell[0, 2]  # far beyond the images
    before = periodic_graph(batch, batch.pos, 12.0, 20)
    after = periodic_graph(batch, moved, 12.0, 20)
    assert len(before[0]) == len(after[0])
    for x, y in zip(canonical_order(*before), canonical_order(*after), strict=True):
        torch.testing.assert_close(x, y)


def fairchem_order(batch: Batch, cutoff: float, max_neighbors: int, strictly: bool) -> list:
    """fairchem-core's edges, in its order, for the float32 copy of ``batch`` (the dtype
    fairchem 1.x builds graphs in)."""
    batch32 = batch.clone()
    batch32.pos, batch32.cell = batch.pos.float(), batch.cell.float()
    return edge_list(*fairchem_edges(batch32, cutoff, max_neighbors, strictly))


def edge_list(src: Tensor, dst: Tensor, offset: Tensor) -> list[tuple[int, ...]]:
    return [(s, d, *o) for s, d, o in zip(src.tolist(), dst.tolist(), offset.tolist(), strict=True)]


def simple_cubic() -> Atoms:
    """One atom, simple cubic: six neighbours at exactly the cell length."""
    return Atoms("H", positions=[[0.0, 0.0, 0.0]], cell=2.0 * np.eye(3), pbc=True)


def unrattled_slab() -> Atoms:
    """Cu(111) 3x3x4 + O on its fcc site, nothing rattled: most atoms have tied 20th and 21st
    neighbours."""
    slab = fcc111("Cu", (3, 3, 4), vacuum=10.0)
    add_adsorbate(slab, "O", 1.2, "fcc")
    slab.pbc = True
    return slab


def fcc_bulk() -> Atoms:
    """Conventional fcc Cu cell: 12 + 6 neighbours, then a shell of 24 (ties at 20 and 21)."""
    return bulk("Cu", "fcc", a=3.6, cubic=True)


@pytest.mark.parametrize("strictly", [True, False], ids=["strict", "non_strict"])
@pytest.mark.parametrize(
    ("make", "cutoff", "max_neighbors"),
    [(simple_cubic, 2.5, 4), (unrattled_slab, 12.0, 20), (fcc_bulk, 12.0, 20)],
    ids=["simple_cubic", "unrattled_slab", "fcc_bulk"],
)
def test_ties_are_broken_as_fairchem_breaks_them(
    make: Callable[[], Atoms], cutoff: float, max_neighbors: int, strictly: bool
) -> None:
    """Equal distances: the same edges as fairchem-core's radius_graph_pbc, in the same order,
    for float32 and float64 positions (the selection is float32, as fairchem 1.x's)."""
    batch = as_batch(make(), make())
    expected = fairchem_order(batch, cutoff, max_neighbors, strictly)
    tolerance = None if strictly else 0.01
    for dtype in (torch.float64, torch.float32):
        pos = batch.pos.to(dtype)
        assert edge_list(*periodic_neighbors(batch, pos, cutoff, max_neighbors, tolerance)) == (
            expected
        )


# -- fairchem 1.x on unrattled OC20 slabs (tests/fixtures/neighbor_ties, see its README) --------
TIES = Path(__file__).resolve().parents[1] / "fixtures" / "neighbor_ties"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["strict", "non_strict"])
def test_tied_neighbours_are_fairchems_on_unrattled_oc20_slabs(
    mode: str, dtype: torch.dtype
) -> None:
    """fairchem 1.x's own graph (radius_graph_pbc, 31c0963) of four slabs whose fixed atoms sit
    on lattice sites (101 of 142 atoms have their 20th and 21st neighbours tied): the same edges
    in the same order. The tie-breaking before this fixture (a stable sort of distances of
    wrapped positions in the batch's dtype) replaced 260 (float64) and 132 (float32) of the
    2840 strict edges."""
    reference = torch.load(TIES / "reference_outputs.pt", weights_only=True)
    structures = ase.io.read(TIES / "structures.extxyz", index=":")
    batch = Batch.from_data_list([atoms_to_data(atoms, dtype) for atoms in structures])
    graph = reference["graph"][mode]
    tolerance = None if mode == "strict" else reference["meta"]["degeneracy_tolerance"]
    src, dst, offset = periodic_neighbors(batch, batch.pos, 12.0, 20, tolerance)
    expected = edge_list(*graph["edge_index"], graph["cell_offsets"].long())
    got = edge_list(src, dst, offset)
    assert len(got) == len(expected)
    assert set(got) == set(expected), f"{len(set(got) ^ set(expected))} edges differ"
    assert got == expected  # fairchem's order: what its random edge-frame roll is drawn in


def test_edge_vectors_are_differentiable_in_the_positions() -> None:
    batch = as_batch(slab_with_adsorbate())
    pos = batch.pos.clone().requires_grad_(True)
    src, dst, vec = periodic_graph(batch, pos, 6.0, 20)
    vec.sum().backward()
    net = torch.bincount(src, minlength=batch.num_nodes) - torch.bincount(
        dst, minlength=batch.num_nodes
    )
    torch.testing.assert_close(pos.grad, net.double()[:, None].expand(-1, 3))


def test_molecules_without_pbc_give_the_radius_graph() -> None:
    batch = random_batch((7, 1, 9))
    src, dst, vec = periodic_graph(batch, batch.pos, 5.0, 10**6)
    expected_src, expected_dst = radius_graph(batch.pos, batch.batch, batch.natoms, 5.0)
    assert torch.equal(src, expected_src) and torch.equal(dst, expected_dst)
    torch.testing.assert_close(vec, batch.pos[src] - batch.pos[dst])
