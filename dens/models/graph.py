"""Graph construction of every model family: the edges a message-passing network sees.

It lives beside the networks, not inside one, because DeNS rebuilds the graph after noise is
added to the positions (Algorithm 2): the model is given positions, not edges. Edges are
ordered pairs (src -> dst) within one structure; the edge vector points from dst to src.

Molecules (MD17, ``molecular_graph``): all pairs closer than the cutoff, vector
``pos[src] - pos[dst]``; a periodic batch is refused.

Periodic cells (OC20/OC22, ``periodic_graph``; EquiformerV2 uses cutoff 12 Å with at most 20
neighbours): src may be any periodic image of an atom, ``pos[src] + n @ cell - pos[dst]`` with
integer offset n [3] (cell rows are the lattice vectors, ASE convention). Every image within
the cutoff is found, as in fairchem's ``radius_graph_pbc``: along a periodic direction i,
|n_i| <= ceil(cutoff * |b_i|), with b_i the reciprocal vector (1/|b_i| the spacing of the
lattice planes), after wrapping the positions into the cell so that the bound holds for
atoms outside it (the offsets are then expressed for the positions as given). Non-periodic
directions get no images, and a batch without ``pbc`` is treated as molecules. Then each
destination keeps at most ``max_neighbors`` nearest sources, strictly (fairchem's
``enforce_max_neighbors_strictly=True``): equal distances keep the earlier candidate in the
order (src index, offset in lexicographic order). With ``degeneracy_tolerance`` t (Å^2) the
limit is fairchem's ``enforce_max_neighbors_strictly=False`` instead (the official OC22
EquiformerV2 config): a destination with more than K candidates keeps every source whose
squared distance is at most that of its (K+1)-th nearest plus t, so at least K+1 of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dens.data.batch import Batch
from dens.errors import NotAvailableError


def structure_pairs(batch: Tensor, natoms: Tensor) -> tuple[Tensor, Tensor]:
    """Every ordered pair (src, dst) of atoms of one structure, self pairs included.

    batch: [N] structure index, contiguous as in a dens.data.batch.Batch; natoms: [B]. Returns
    src, dst: [P], P = sum_b natoms_b^2, ordered by dst, then src.
    """
    device = batch.device
    start = torch.cumsum(natoms, 0) - natoms  # [B] first atom of each structure
    per_atom = natoms.index_select(0, batch)  # [N] candidates per destination atom
    dst = torch.repeat_interleave(torch.arange(batch.shape[0], device=device), per_atom)
    first = torch.repeat_interleave(torch.cumsum(per_atom, 0) - per_atom, per_atom)
    src = start.index_select(0, batch.index_select(0, dst)) + (
        torch.arange(dst.shape[0], device=device) - first
    )
    return src, dst


def radius_graph(
    pos: Tensor, batch: Tensor, natoms: Tensor, cutoff: float
) -> tuple[Tensor, Tensor]:
    """All ordered pairs (src, dst), src != dst, of one structure closer than ``cutoff``.

    pos: [N, 3] (not differentiated); batch: [N] structure index, contiguous as in a
    Batch; natoms: [B]. Returns edge_src, edge_dst: [E]. Cost O(sum_b natoms_b^2).
    """
    src, dst = structure_pairs(batch, natoms)
    d2 = (pos.index_select(0, src) - pos.index_select(0, dst)).pow(2).sum(-1)
    keep = (src != dst) & (d2 < cutoff**2)
    return src[keep], dst[keep]


def molecular_graph(data: Batch, pos: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    """The radius graph of a batch of molecules at positions ``pos`` [N, 3] (the batch's own
    or noisy ones); raises NotAvailableError for periodic structures."""
    pbc = getattr(data, "pbc", None)
    if pbc is not None and bool(torch.as_tensor(pbc).any()):
        raise NotAvailableError(
            "this model takes molecules only; periodic structures (pbc) need periodic_graph "
            "(EquiformerV2, OC20/OC22)"
        )
    return radius_graph(pos.detach(), data.batch, data.natoms, cutoff)


def lattice(data: Batch, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cell [B, 3, 3] (rows: lattice vectors) and pbc bool [B, 3] of a batch; a batch
    without ``pbc`` (molecules) gets the identity cell and no periodic direction."""
    num_graphs, device = data.natoms.shape[0], data.natoms.device
    pbc = getattr(data, "pbc", None)
    if pbc is None or not bool(torch.as_tensor(pbc).any()):
        eye = torch.eye(3, dtype=dtype, device=device).expand(num_graphs, 3, 3)
        return eye, torch.zeros(num_graphs, 3, dtype=torch.bool, device=device)
    cell = data.cell.to(dtype).view(-1, 3, 3).expand(num_graphs, 3, 3)
    pbc = torch.as_tensor(pbc, device=device).view(-1, 3).expand(num_graphs, 3)
    if bool((torch.linalg.det(cell).abs() < 1e-6).any()):
        raise ValueError("periodic_graph needs a non-singular cell for every periodic structure")
    return cell, pbc


def lattice_images(inv_cell: Tensor, pbc: Tensor, cutoff: float) -> Tensor:
    """Integer offsets n [I, 3] (as inv_cell's dtype) of every image a structure of the batch
    may see within ``cutoff`` once its positions are wrapped into the cell.

    inv_cell: [B, 3, 3], its columns are the reciprocal vectors b_i; pbc: [B, 3]. Along
    direction i, |n_i| <= ceil(cutoff * |b_i|) where periodic (0 elsewhere), padded to the
    largest structure's range; I = prod_i (2 max_b r_bi + 1), lexicographic order.
    """
    reps = torch.ceil(cutoff * inv_cell.norm(dim=-2)) * pbc  # [B, 3]
    ranges = [torch.arange(-r, r + 1, dtype=inv_cell.dtype) for r in reps.amax(0).tolist()]
    return torch.cartesian_prod(*ranges).view(-1, 3).to(inv_cell.device)


def cell_counts(pos: Tensor, inv_cell: Tensor, pbc: Tensor) -> Tensor:
    """s [N, 3] (integer valued, pos's dtype): how many lattice vectors each atom lies away
    from the home cell along the periodic directions (0 elsewhere), so that pos - s @ cell is
    inside it. pos: [N, 3]; inv_cell: [N, 3, 3], pbc: [N, 3] per atom."""
    frac = torch.bmm(pos.unsqueeze(1), inv_cell).squeeze(1)  # [N, 3] fractional coordinates
    return torch.where(pbc, torch.floor(frac), torch.zeros_like(frac))


def image_distance_sq(r: Tensor, shifts: Tensor, pair_graph: Tensor) -> Tensor:
    """|r_p + shift_{g(p), i}|^2 [P, I] for pair vectors r [P, 3] and the Cartesian image
    shifts [B, I, 3] of each pair's structure g(p) = pair_graph [P]; one [P, I] slice per axis
    (peak memory a few P x I floats, never P x I x 3)."""
    d2 = torch.zeros(r.shape[0], shifts.shape[1], dtype=r.dtype, device=r.device)
    for axis in range(3):
        d2 += (r[:, axis, None] + shifts[:, :, axis].index_select(0, pair_graph)).pow(2)
    return d2


def nearest_per_destination(
    dst: Tensor, d2: Tensor, max_neighbors: int, degeneracy_tolerance: float | None = None
) -> Tensor:
    """bool [E]: the ``max_neighbors`` (K) smallest d2 [E] of each destination dst [E]; equal
    distances keep the earlier edge (two stable sorts: by distance, then by destination).
    With ``degeneracy_tolerance`` t, destinations with more than K edges keep as well every
    d2 <= (their (K+1)-th smallest d2) + t."""
    order = torch.sort(d2, stable=True).indices
    order = order.index_select(0, torch.sort(dst.index_select(0, order), stable=True).indices)
    sorted_dst, sorted_d2 = dst.index_select(0, order), d2.index_select(0, order)
    counts = torch.bincount(sorted_dst)
    first = torch.cumsum(counts, 0) - counts  # first sorted position of each destination
    rank = torch.arange(dst.shape[0], device=dst.device) - first.index_select(0, sorted_dst)
    kept = rank < max_neighbors
    if degeneracy_tolerance is not None:
        crowded = counts > max_neighbors
        bound = torch.full(counts.shape, -torch.inf, dtype=d2.dtype, device=d2.device)
        bound[crowded] = sorted_d2[first[crowded] + max_neighbors] + degeneracy_tolerance
        kept |= sorted_d2 <= bound.index_select(0, sorted_dst)
    keep = torch.zeros_like(dst, dtype=torch.bool)
    keep[order[kept]] = True
    return keep


@torch.no_grad()
def periodic_neighbors(
    data: Batch,
    pos: Tensor,
    cutoff: float,
    max_neighbors: int,
    degeneracy_tolerance: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The edges of ``periodic_graph`` (selection rules in the module notes), without vectors.

    data: Batch with natoms [B], batch [N], and cell [B, 3, 3], pbc [B, 3] if periodic;
    pos: [N, 3]. Returns src, dst: long [E] ordered by dst, then src, then offset; offset:
    long [E, 3], the image of src (cell rows) seen by dst. Cost O(sum_b natoms_b^2 * I) for
    I images (lattice_images).
    """
    cell, pbc = lattice(data, pos.dtype)
    inv_cell = torch.linalg.inv(cell)
    counts = cell_counts(pos, inv_cell.index_select(0, data.batch), pbc.index_select(0, data.batch))
    wrapped = pos - torch.bmm(counts.unsqueeze(1), cell.index_select(0, data.batch)).squeeze(1)
    images = lattice_images(inv_cell, pbc, cutoff)  # [I, 3]
    shifts = torch.matmul(images, cell)  # [B, I, 3]

    src, dst = structure_pairs(data.batch, data.natoms)
    r = wrapped.index_select(0, src) - wrapped.index_select(0, dst)  # [P, 3]
    d2 = image_distance_sq(r, shifts, data.batch.index_select(0, dst))  # [P, I]
    within = d2 < cutoff**2
    home = int(torch.nonzero((images == 0).all(-1))[0])
    within[:, home] &= src != dst  # no atom is its own neighbour in the home cell
    pair, image = torch.nonzero(within, as_tuple=True)
    src, dst = src.index_select(0, pair), dst.index_select(0, pair)
    offset = (
        images.index_select(0, image) - counts.index_select(0, src) + counts.index_select(0, dst)
    )
    keep = nearest_per_destination(dst, d2[pair, image], max_neighbors, degeneracy_tolerance)
    return src[keep], dst[keep], offset[keep].round().long()


def periodic_graph(
    data: Batch,
    pos: Tensor,
    cutoff: float,
    max_neighbors: int,
    degeneracy_tolerance: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The graph of a batch of periodic (or molecular) structures at positions ``pos``.

    data: Batch with natoms [B], batch [N], and cell [B, 3, 3], pbc [B, 3] if periodic;
    pos: [N, 3] (the batch's own or noisy ones); degeneracy_tolerance: None for at most
    ``max_neighbors`` per destination, strictly, else see the module notes. Returns
    edge_src, edge_dst: long [E] and edge_vec = pos[src] + offset @ cell - pos[dst]: [E, 3],
    differentiable w.r.t. pos (and cell); the selection itself is not.
    """
    src, dst, offset = periodic_neighbors(data, pos, cutoff, max_neighbors, degeneracy_tolerance)
    cell, _ = lattice(data, pos.dtype)
    shift = torch.bmm(offset.to(pos.dtype).unsqueeze(1), cell.index_select(0, data.batch[src]))
    edge_vec = pos.index_select(0, src) + shift.squeeze(1) - pos.index_select(0, dst)
    return src, dst, edge_vec
