"""The DeNS input stage EquiformerV2 and eSCN share: the checks of their sizes, and what their
forward pass does before the first block (``input_stage``): check the batch and the DeNS inputs,
embed the atoms at l = 0 and, with the DeNS force encoding (Liao et al., TMLR 2024, Sec. 3.2.2,
Eq. 5), add the SO(3)-linear map of the forces' spherical harmonics; build the edge graph of the
(possibly noisy) positions.
"""

from __future__ import annotations

import math
from typing import Protocol

from e3nn import o3
from torch import Tensor, nn

from dens.data.batch import Batch
from dens.models.common.inputs import check_inputs
from dens.models.so2.edge_frame import rolls
from dens.models.so2.wigner import EdgeWigner
from dens.models.so3.edge_graph import EdgeGraph, build_edge_graph


class SO3ArrayNetwork(Protocol):
    """What ``input_stage`` reads of a network (EquiformerV2, eSCN)."""

    training: bool
    lmax: int
    max_num_elements: int
    sphere_embedding: nn.Embedding
    force_embedding: nn.Module | None  # DeNS force encoding: SO3Linear(1, C, lmax)
    denoising_pos_block: nn.Module | None  # DeNS noise head
    cutoff: float
    max_neighbors: int
    degeneracy_tolerance: float | None  # None: at most max_neighbors, strictly
    edge_roll: str  # dens.models.so2.edge_frame.check_edge_roll
    wigner: EdgeWigner
    distance_expansion: nn.Module
    truncation_rescale: Tensor | None  # EquiformerV2's rescale of the map back; eSCN: None


def check_sizes(num_layers: int, lmax: int, mmax: int, cutoff: float, max_neighbors: int) -> None:
    """ValueError unless num_layers >= 1, 1 <= mmax <= lmax, cutoff > 0 and max_neighbors >= 1."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if not 1 <= mmax <= lmax:
        raise ValueError(f"need 1 <= mmax <= lmax, got lmax={lmax}, mmax={mmax}")
    if cutoff <= 0 or max_neighbors < 1:
        raise ValueError(f"need cutoff > 0 and max_neighbors >= 1, got {cutoff}, {max_neighbors}")


def force_spherical_harmonics(forces: Tensor, lmax: int) -> Tensor:
    """||f|| Y^(L)(f / ||f||) for L = 0..lmax (Eq. 5; component normalisation, divided by
    sqrt(3) as the official EquiformerV2-DeNS code): [N, 3] -> [N, (lmax + 1)^2, 1]; zero rows
    stay zero."""
    sh = o3.spherical_harmonics(
        list(range(lmax + 1)), forces, normalize=True, normalization="component"
    )
    norm = forces.norm(dim=-1, keepdim=True) / math.sqrt(3.0)
    return (sh * norm).unsqueeze(-1)


def encode_forces(force_embedding: nn.Module, forces: Tensor, lmax: int) -> Tensor:
    """DeNS force encoding (Eq. 5): [N, 3] -> [N, (lmax + 1)^2, C]; zero rows give the bias of
    ``force_embedding`` (an SO3Linear(1, C, lmax)) at l = 0."""
    return force_embedding(force_spherical_harmonics(forces, lmax))


def input_stage(
    model: SO3ArrayNetwork,
    name: str,
    data: Batch,
    force_input: Tensor | None,
    predict_noise: bool,
) -> tuple[Tensor, EdgeGraph]:
    """The node features [N, (lmax + 1)^2, C] the first block reads and the edge graph of
    ``data.pos``, after the checks of ``check_inputs`` (ValueError naming the model ``name``).

    Features: ``sphere_embedding(Z)`` at l = 0 plus, with a ``force_embedding``, the encoding of
    ``force_input`` [N, 3] (zero rows, or no force_input, stand for no forces: as in the
    reference the encoding's l = 0 bias is added to every atom in every call). Graph:
    ``build_edge_graph``, its edge frames rolled at random as ``model.edge_roll`` says for the
    model's training mode."""
    check_inputs(
        name,
        data,
        model.max_num_elements,
        force_input,
        model.force_embedding is not None,
        predict_noise,
        model.denoising_pos_block is not None,
    )
    pos, lmax = data.pos, model.lmax
    num_nodes = pos.shape[0]
    x = pos.new_zeros(num_nodes, (lmax + 1) ** 2, model.sphere_embedding.embedding_dim)
    x[:, 0] = model.sphere_embedding(data.atomic_numbers)
    if model.force_embedding is not None:
        forces = pos.new_zeros(num_nodes, 3) if force_input is None else force_input
        x = x + encode_forces(model.force_embedding, forces.to(pos.dtype), lmax)
    graph = build_edge_graph(
        data,
        pos,
        model.cutoff,
        model.max_neighbors,
        model.wigner,
        model.distance_expansion,
        rolls(model.edge_roll, model.training),
        model.degeneracy_tolerance,
        model.truncation_rescale,
    )
    return x, graph
