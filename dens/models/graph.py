"""Graph construction of every model family: the edges a message-passing network sees.

It lives beside the networks, not inside one, because DeNS rebuilds the graph after noise is
added to the positions (Algorithm 2): the model is given positions, not edges. Edges are
ordered pairs (src -> dst) within one structure; the edge vector points from dst to src.

Molecules (MD17, ``molecular_graph``): all pairs closer than the cutoff, vector
``pos[src] - pos[dst]``; a periodic batch is refused.

Periodic cells (OC20/OC22, ``periodic_neighbors`` and their ``edge_vectors``; EquiformerV2 and
eSCN use cutoff 12 Å with at most 20 neighbours): the edges of fairchem 1.x ``radius_graph_pbc``
followed by ``get_max_neighbors_mask`` (FAIR-Chem/fairchem 31c0963,
src/fairchem/core/common/utils.py lines 618-910, called by ``GraphModelMixin.generate_graph``,
models/base.py line 122; the same operations as ocp 5d0f59e, ocpmodels/common/utils.py lines
556-855, on which the official DeNS code runs), the same edges in the same order, ties included:

- src may be any periodic image of an atom, ``pos[src] + n @ cell - pos[dst]`` with integer
  offset n [3] (cell rows are the lattice vectors, ASE convention), from the images
  ``cartesian_prod(arange(-r_1, r_1 + 1), ...)`` (lexicographic) with r_i = ceil(cutoff |b_i|),
  b_i the reciprocal vector (|b_i| = |a_j x a_k| / V), padded to the batch's largest; 0 along
  non-periodic directions (a batch without ``pbc`` is treated as molecules). The positions are
  not wrapped into the cell. fairchem's range holds every image within the cutoff as long as a
  structure's atoms span less than one cell along each direction (fractional spread w_i < 1,
  wherever they lie); beyond that fairchem misses images, and ours widens r_i to
  floor(cutoff |b_i| + w_i), which adds exactly the images fairchem misses.
- Candidates are ordered by dst, then src, then image; kept where 1e-4 < d^2 <= cutoff^2
  (fairchem drops pairs closer than 0.01 Å as the same atom).
- Selection, computed in float32 whatever the model's dtype (fairchem 1.x cannot build the
  graph in float64: its float32 ``arange`` of images meets the cell in ``bmm``), with d^2 =
  sum_k (pos_dst - (pos_src + shift))_k^2 and the shifts from ``bmm`` as fairchem computes them,
  so that the squared distances are fairchem's bit for bit (under CUDA float16 autocast too,
  where that ``bmm`` runs in float16 in both). If some atom has more than K = ``max_neighbors``
  candidates, each atom's squared distances are laid out in a [N, max count] table padded with
  inf and sorted along the rows with ``torch.sort`` (not stable: on equal distances the sort
  algorithm of the device decides, as it does for fairchem); strictly
  (``enforce_max_neighbors_strictly=True``, the OC20 configs) the first K of each row are kept.
  With ``degeneracy_tolerance`` t (Å^2; fairchem's ``enforce_max_neighbors_strictly=False`` with
  its default 0.01, the official OC22 EquiformerV2 config) an atom keeps every candidate with
  d^2 <= (its (K+1)-th smallest d^2) + t, which needs no tie-breaking.

Equal squared distances are common: on OC20 slabs the fixed subsurface atoms sit on lattice
sites, and their 20th and 21st neighbours are often at the same distance (tests/fixtures/
neighbor_ties). A stable sort on distances computed otherwise keeps other neighbours than
fairchem, and a model trained by fairchem then gives other forces.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dens.data.batch import Batch
from dens.errors import NotAvailableError

SAME_ATOM_D2 = 1e-4  # Å^2; fairchem's mask_not_same: closer pairs are an atom and itself


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
            "this model takes molecules only; periodic structures (pbc) need periodic_neighbors "
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
        raise ValueError(
            "periodic_neighbors needs a non-singular cell for every periodic structure"
        )
    return cell, pbc


def image_reach(cell: Tensor, pbc: Tensor, cutoff: float) -> Tensor:
    """cutoff |b_i| [B, 3] (0 where not periodic): how many lattice planes along direction i
    the cutoff spans, with |b_i| = |a_j x a_k| / (a_1 . a_2 x a_3) as fairchem computes it
    (cell: [B, 3, 3] float32 rows a_i; pbc: [B, 3])."""
    a1, a2, a3 = cell.unbind(1)
    cross = (
        torch.linalg.cross(a2, a3, dim=-1),
        torch.linalg.cross(a3, a1, dim=-1),
        torch.linalg.cross(a1, a2, dim=-1),
    )
    volume = torch.sum(a1 * cross[0], dim=-1, keepdim=True)
    reach = torch.stack([cutoff * torch.norm(c / volume, dim=-1) for c in cross], dim=-1)
    return torch.where(pbc, reach, torch.zeros_like(reach))


def fractional_spread(pos: Tensor, cell: Tensor, batch: Tensor) -> Tensor:
    """w [B, 3]: max - min over each structure's atoms of their fractional coordinates
    (pos: [N, 3]; cell: [B, 3, 3]; batch: [N]), in float64."""
    inv = torch.linalg.inv(cell.double()).index_select(0, batch)
    frac = torch.bmm(pos.double().unsqueeze(1), inv).squeeze(1)  # [N, 3]
    index = batch[:, None].expand(-1, 3)
    num_graphs = cell.shape[0]
    high = frac.new_full((num_graphs, 3), -torch.inf).scatter_reduce(0, index, frac, "amax")
    low = frac.new_full((num_graphs, 3), torch.inf).scatter_reduce(0, index, frac, "amin")
    return (high - low).clamp(min=0.0)


def lattice_images(reach: Tensor, spread: Tensor) -> Tensor:
    """Integer offsets n [I, 3] (float32, lexicographic) of every image any structure of the
    batch may see: |n_i| <= r_i = ceil(reach_i) (fairchem's range), widened to
    floor(reach_i + spread_i) where a structure spans more than a cell; the largest r_i of the
    batch. reach, spread: [B, 3]."""
    needed = torch.maximum(torch.ceil(reach), torch.floor(reach.double() + spread).to(reach.dtype))
    ranges = [
        torch.arange(-r, r + 1, dtype=torch.float32, device=reach.device)
        for r in needed.amax(0).tolist()
    ]
    return torch.cartesian_prod(*ranges)


def image_distance_sq(
    pos: Tensor, src: Tensor, dst: Tensor, shifts: Tensor, pair_graph: Tensor
) -> Tensor:
    """d^2 [P, I] of pairs src, dst [P] (structure pair_graph [P]) over the images whose
    Cartesian shifts are shifts [B, 3, I], with fairchem's operations and their order:
    sum_k (pos[dst]_k - (pos[src]_k + shift_k))^2, one [P, I] slice per axis."""
    d2 = torch.zeros(src.shape[0], shifts.shape[2], dtype=pos.dtype, device=pos.device)
    for axis in range(3):
        image = pos[src, axis, None] + shifts[:, axis].index_select(0, pair_graph)
        d2 = d2 + (pos[dst, axis, None] - image) ** 2
    return d2


def max_neighbors_mask(
    dst: Tensor,
    d2: Tensor,
    num_atoms: int,
    max_neighbors: int,
    degeneracy_tolerance: float | None = None,
) -> Tensor:
    """bool [E] over candidates dst [E] (ascending) with squared distances d2 [E]: the
    selection of fairchem's ``get_max_neighbors_mask`` (module notes). Each atom's d2 fill a row
    of an inf-padded [num_atoms, max count] table in candidate order, sorted by ``torch.sort``
    (unstable, as fairchem's); strictly, each row's first ``max_neighbors`` K are kept, with
    ``degeneracy_tolerance`` t every d2 <= the row's (K+1)-th + t."""
    counts = torch.bincount(dst, minlength=num_atoms)
    width = int(counts.max()) if dst.numel() else 0
    if width <= max_neighbors:
        return torch.ones_like(dst, dtype=torch.bool)
    first = torch.cumsum(counts, 0) - counts  # [num_atoms] first candidate of each atom
    column = torch.arange(dst.shape[0], device=dst.device) - first.index_select(0, dst)
    table = d2.new_full((num_atoms, width), torch.inf)
    table[dst, column] = d2
    table, order = torch.sort(table, dim=1)
    if degeneracy_tolerance is None:
        table, order = table[:, :max_neighbors], order[:, :max_neighbors]
    else:
        bound = table[:, max_neighbors : max_neighbors + 1] + degeneracy_tolerance
        table = torch.where(table <= bound, table, torch.full_like(table, torch.inf))
    chosen = (order + first[:, None])[torch.isfinite(table)]
    keep = torch.zeros_like(dst, dtype=torch.bool)
    keep[chosen] = True
    return keep


@torch.no_grad()
def periodic_neighbors(
    data: Batch,
    pos: Tensor,
    cutoff: float,
    max_neighbors: int,
    degeneracy_tolerance: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The edges of a batch of periodic (or molecular) structures at positions ``pos``.

    data: Batch with natoms [B], batch [N], and cell [B, 3, 3], pbc [B, 3] if periodic;
    pos: [N, 3]; degeneracy_tolerance: None for at most ``max_neighbors`` per destination,
    strictly, else see the module notes. Returns src, dst: long [E] ordered by dst, then src, then
    offset (fairchem's order); offset: long [E, 3], the image of src (cell rows) seen by dst. Cost
    O(sum_b natoms_b^2 * I) for I images (lattice_images).
    """
    cell, pbc = lattice(data, torch.float32)
    pos32 = pos.to(torch.float32)
    spread = torch.where(pbc, fractional_spread(pos32, cell, data.batch), 0.0)
    images = lattice_images(image_reach(cell, pbc, cutoff), spread)  # [I, 3]
    num_graphs = cell.shape[0]
    shifts = torch.bmm(cell.transpose(1, 2), images.T.unsqueeze(0).expand(num_graphs, 3, -1))

    src, dst = structure_pairs(data.batch, data.natoms)
    d2 = image_distance_sq(pos32, src, dst, shifts, data.batch.index_select(0, dst))  # [P, I]
    within = (d2 <= cutoff * cutoff) & (d2 > SAME_ATOM_D2)
    pair, image = torch.nonzero(within, as_tuple=True)
    src, dst = src.index_select(0, pair), dst.index_select(0, pair)
    keep = max_neighbors_mask(
        dst, d2[pair, image], pos.shape[0], max_neighbors, degeneracy_tolerance
    )
    offset = images.index_select(0, image[keep]).round().long()
    return src[keep], dst[keep], offset


def edge_vectors(data: Batch, pos: Tensor, src: Tensor, dst: Tensor, offset: Tensor) -> Tensor:
    """The vectors of the edges of ``periodic_neighbors`` at positions ``pos``.

    data: Batch with batch [N], and cell [B, 3, 3] if periodic; pos: [N, 3] (the batch's own or
    noisy ones); src, dst: long [E]; offset: long [E, 3]. Returns
    pos[src] - pos[dst] + offset @ cell: [E, 3] in pos's dtype, differentiable w.r.t. pos (and
    cell); the selection of the edges itself is not.
    """
    cell, _ = lattice(data, pos.dtype)
    shift = torch.bmm(offset.to(pos.dtype).unsqueeze(1), cell.index_select(0, data.batch[src]))
    return pos.index_select(0, src) - pos.index_select(0, dst) + shift.squeeze(1)
