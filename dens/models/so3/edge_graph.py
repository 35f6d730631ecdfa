"""What every message-passing module of EquiformerV2 and eSCN reads about the edges, computed
once per forward pass from the (possibly noisy) positions, and the two maps between node and
edge arrays (gather, sum), written as flat index_add so that their gradients stay cheap on CPU
(autograd's own index_select backward goes through a per-element scatter)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dens.data.batch import Batch
from dens.models.graph import edge_vectors, periodic_neighbors
from dens.models.so2.edge_frame import edge_frame, random_helper
from dens.models.so2.wigner import EdgeWigner


@dataclass(frozen=True)
class EdgeGraph:
    """src, dst: [E] (messages flow src -> dst); atomic_numbers: [N]; distance_basis: [E, B]
    (Gaussian smearing of |edge_vec|); to_frame: [E, K, (lmax + 1)^2] (lab -> edge frame, kept
    orders, ``dens.models.so2.EdgeWigner``); from_frame: [E, (lmax + 1)^2, K] (back to the lab:
    EquiformerV2 with the truncation rescale, eSCN without); num_nodes: N."""

    src: Tensor
    dst: Tensor
    atomic_numbers: Tensor
    distance_basis: Tensor
    to_frame: Tensor
    from_frame: Tensor
    num_nodes: int


def build_edge_graph(
    data: Batch,
    pos: Tensor,
    cutoff: float,
    max_neighbors: int,
    wigner: EdgeWigner,
    distance_expansion: nn.Module,
    random_roll: bool,
    degeneracy_tolerance: float | None = None,
    rescale: Tensor | None = None,
) -> EdgeGraph:
    """The graph of the structures at ``pos`` (``dens.models.graph.periodic_neighbors``: cutoff
    in Å, at most max_neighbors per atom, ties within ``degeneracy_tolerance`` Å^2 kept) with
    their ``edge_vectors``, its distance basis (``distance_expansion`` of the edge lengths) and
    the edge frames' rotations, rolled about their edges at random when ``random_roll``
    (``dens.models.so2.edge_frame``); the rotations carry no gradient, as in the reference.
    ``rescale`` [K]: EquiformerV2's truncation
    rescale of the map back to the lab (``dens.models.so2.truncation_rescale``); None for eSCN."""
    src, dst, offset = periodic_neighbors(data, pos, cutoff, max_neighbors, degeneracy_tolerance)
    vec = edge_vectors(data, pos, src, dst, offset)
    with torch.no_grad():
        edge = vec.detach()
        helper = random_helper(edge) if random_roll else None
        to_frame = wigner(edge_frame(edge, helper)).to(pos.dtype)
    from_frame = to_frame if rescale is None else to_frame * rescale.to(pos.dtype).unsqueeze(-1)
    return EdgeGraph(
        src=src,
        dst=dst,
        atomic_numbers=data.atomic_numbers,
        distance_basis=distance_expansion(vec.norm(dim=-1)),
        to_frame=to_frame,
        from_frame=from_frame.transpose(1, 2),
        num_nodes=pos.shape[0],
    )


def sum_to_nodes(x: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    """x: [E, ...], index: [E] -> [num_nodes, ...], row i the sum of the x[e] with index[e] = i."""
    out = x.new_zeros(num_nodes, *x.shape[1:])
    return out.view(num_nodes, -1).index_add_(0, index, x.reshape(x.shape[0], -1)).view(out.shape)


class GatherNodes(torch.autograd.Function):
    """x: [N, ...], index: [E] -> x[index]; the gradient is ``sum_to_nodes``."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_nodes = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        return sum_to_nodes(grad, index, ctx.num_nodes), None


def gather_nodes(x: Tensor, index: Tensor) -> Tensor:
    """x[index] along dim 0 with a flat index_add gradient."""
    return GatherNodes.apply(x, index)
