"""Graph construction of every model family: the edges a message-passing network sees.

It lives beside the networks, not inside one, because DeNS rebuilds the graph after noise is
added to the positions (Algorithm 2): the model is given positions, not edges. Edges are
ordered pairs (src -> dst) within one structure closer than the cutoff; the edge vector is
``pos[src] - pos[dst]``.

Molecules (MD17) only: a periodic batch (any ``pbc``) is refused; periodic cells (OC20/OC22,
cutoff 12 Å with at most 20 neighbours) are added here with the EquiformerV2 issue, returning
each edge's cell offset as well.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Batch

from dens.errors import NotAvailableError


def radius_graph(
    pos: Tensor, batch: Tensor, natoms: Tensor, cutoff: float
) -> tuple[Tensor, Tensor]:
    """All ordered pairs (src, dst), src != dst, of one structure closer than ``cutoff``.

    pos: [N, 3] (not differentiated); batch: [N] structure index, contiguous as in a PyG
    Batch; natoms: [B]. Returns edge_src, edge_dst: [E]. Cost O(sum_b natoms_b^2).
    """
    start = torch.cumsum(natoms, 0) - natoms  # [B] first atom of each structure
    per_atom = natoms.index_select(0, batch)  # [N] candidates per target atom
    dst = torch.repeat_interleave(torch.arange(pos.shape[0], device=pos.device), per_atom)
    first = torch.repeat_interleave(torch.cumsum(per_atom, 0) - per_atom, per_atom)
    src = start.index_select(0, batch.index_select(0, dst)) + (
        torch.arange(dst.shape[0], device=pos.device) - first
    )
    d2 = (pos.index_select(0, src) - pos.index_select(0, dst)).pow(2).sum(-1)
    keep = (src != dst) & (d2 < cutoff**2)
    return src[keep], dst[keep]


def molecular_graph(data: Batch, pos: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    """The radius graph of a batch of molecules at positions ``pos`` [N, 3] (the batch's own
    or noisy ones); raises NotAvailableError for periodic structures."""
    pbc = getattr(data, "pbc", None)
    if pbc is not None and bool(torch.as_tensor(pbc).any()):
        raise NotAvailableError(
            "periodic graphs (pbc) are not implemented yet; they land with EquiformerV2 "
            "(OC20/OC22); this model takes molecules only"
        )
    return radius_graph(pos.detach(), data.batch, data.natoms, cutoff)
