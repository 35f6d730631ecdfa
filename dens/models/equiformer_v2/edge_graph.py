"""What every message-passing module of EquiformerV2 reads about the edges, computed once per
forward pass from the (possibly noisy) positions."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class EdgeGraph:
    """src, dst: [E] (messages flow src -> dst); atomic_numbers: [N]; distance_basis: [E, B]
    (Gaussian smearing of |edge_vec|); to_frame: [E, K, (lmax + 1)^2] (lab -> edge frame, kept
    orders, ``dens.models.so2.EdgeWigner``); from_frame: [E, (lmax + 1)^2, K] (back to the lab,
    with the truncation rescale); num_nodes: N."""

    src: Tensor
    dst: Tensor
    atomic_numbers: Tensor
    distance_basis: Tensor
    to_frame: Tensor
    from_frame: Tensor
    num_nodes: int
