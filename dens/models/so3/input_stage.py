"""What EquiformerV2 and eSCN share as networks (``SO3ArrayNetwork``, their base class): their
settings, and the DeNS input stage, what their forward pass does before the first block
(``SO3ArrayNetwork.input_stage``): check the batch and the DeNS inputs, embed the atoms at l = 0
and, with the DeNS force encoding (Liao et al., TMLR 2024, Sec. 3.2.2, Eq. 5), add the
SO(3)-linear map of the forces' spherical harmonics; build the edge graph of the (possibly
noisy) positions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from e3nn import o3
from torch import Tensor, nn

from dens.data.batch import Batch
from dens.models.common.inputs import check_inputs, check_settings
from dens.models.so2.edge_frame import rolls
from dens.models.so2.wigner import EdgeWigner
from dens.models.so3.edge_graph import EdgeGraph, build_edge_graph
from dens.models.so3.settings import SO3NetworkSettings


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


class SO3ArrayNetwork(nn.Module):
    """A network on SO(3) features as one array (EquiformerV2, eSCN) with the DeNS force
    encoding and noise head: forward(data, force_input=None, predict_noise=False) ->
    {"energy": [B], "forces": [N, 3], "noise": [N, 3] if predict_noise}; forces are direct (a
    head), not -dE/dpos.

    A subclass names its ``settings_type`` (an SO3NetworkSettings) and sets the modules the input
    stage reads: sphere_embedding (nn.Embedding(max_num_elements, C)), force_embedding (DeNS
    force encoding: an SO3Linear(1, C, lmax), or None), denoising_pos_block (DeNS noise head, or
    None), wigner (EdgeWigner), distance_expansion (of edge lengths) and truncation_rescale
    (EquiformerV2's rescale of the map back to the lab; eSCN: None)."""

    gradient_forces = False
    settings_type: ClassVar[type[SO3NetworkSettings]]
    sphere_embedding: nn.Embedding
    force_embedding: nn.Module | None
    denoising_pos_block: nn.Module | None
    wigner: EdgeWigner
    distance_expansion: nn.Module
    truncation_rescale: Tensor | None

    def __init__(self, settings: SO3NetworkSettings) -> None:
        super().__init__()
        check_settings(self, settings)
        self.settings = settings
        self.max_num_elements = settings.max_num_elements  # read by dens.data.validation

    @property
    def edge_roll(self) -> str:
        """The settings' edge-frame roll; setting it (e.g. "random" to draw the official code's
        frames) replaces the settings with a checked copy."""
        return self.settings.edge_roll

    @edge_roll.setter
    def edge_roll(self, edge_roll: str) -> None:
        self.settings = dataclasses.replace(self.settings, edge_roll=edge_roll)

    def input_stage(
        self, data: Batch, force_input: Tensor | None, predict_noise: bool
    ) -> tuple[Tensor, EdgeGraph]:
        """The node features [N, (lmax + 1)^2, C] the first block reads and the edge graph of
        ``data.pos``, after the checks of ``check_inputs`` (ValueError naming the network).

        Features: ``sphere_embedding(Z)`` at l = 0 plus, with a ``force_embedding``, the encoding
        of ``force_input`` [N, 3] (zero rows, or no force_input, stand for no forces: as in the
        reference the encoding's l = 0 bias is added to every atom in every call). Graph:
        ``build_edge_graph``, its edge frames rolled at random as the settings' ``edge_roll``
        says for the model's training mode."""
        settings = self.settings
        check_inputs(
            settings.network,
            data,
            settings.max_num_elements,
            force_input,
            self.force_embedding is not None,
            predict_noise,
            self.denoising_pos_block is not None,
        )
        pos, lmax = data.pos, settings.lmax
        num_nodes = pos.shape[0]
        x = pos.new_zeros(num_nodes, (lmax + 1) ** 2, self.sphere_embedding.embedding_dim)
        x[:, 0] = self.sphere_embedding(data.atomic_numbers)
        if self.force_embedding is not None:
            forces = pos.new_zeros(num_nodes, 3) if force_input is None else force_input
            x = x + encode_forces(self.force_embedding, forces.to(pos.dtype), lmax)
        graph = build_edge_graph(
            data,
            pos,
            settings.cutoff,
            settings.max_neighbors,
            self.wigner,
            self.distance_expansion,
            rolls(settings.edge_roll, self.training),
            settings.degeneracy_tolerance,
            self.truncation_rescale,
        )
        return x, graph
