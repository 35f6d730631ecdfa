"""Equiformer for MD17 with the DeNS force encoding and noise head.

Equiformer: Liao & Smidt, "Equiformer: Equivariant Graph Attention Transformer for 3D
Atomistic Graphs", ICLR 2023 (the MD17 model of the official code, SE(3) variant with
non-linear messages and exp-normal radial basis). DeNS: Liao, Smidt, Shuaibi, Das, TMLR 2024,
Sec. 3.2.2 (force encoding, Eq. 5 and Algorithm 1) and App. D.2 (an extra equivariant
graph-attention block predicts the noise).

Architecture (features: lists of [N, 2l+1, C_l], see so3_features):

    x = AtomEmbedding(z) + EdgeDegreeEmbedding(graph) [+ ForceEncoding(f)]
    x = Block_k(x), k = 1..num_layers   (pre-norm: x + Attn(LN(x)); x + FFN(LN(x)));
                                          the last block maps to ``irreps_feature``
    x = LN(x);  E = sum_i MLP(x_i^(0)) / sqrt(avg_num_nodes);  F = -dE/dpos
    noise = GraphAttention(x) -> one type-1 vector per atom            (DeNS only)

Cutoff: as the official MD17 model (atomicarchitects/equiformer 64cb7866), the graph holds every
pair closer than ``max_radius`` (nets/equiformer_md17_dens.py:246-251: radius_graph,
max_num_neighbors=1000) and the energy is NOT continuous when a pair crosses it: the radial
basis has a cosine cutoff (nets/graph_attention_transformer_md17.py:51-124, ExpNormalSmearing
times CosineCutoff), but the radial MLP's biases and offset give a crossing edge non-zero
weights (nets/radial_func.py:46-50), and the attention softmax gains a term. A crossing pair
changes the energy by O(0.01-0.1) normalised units at random weights; ours equals the official
model's on both sides (tests/test_md17_training_parity.py).

Hyper-parameters: ``EquiformerSettings`` (settings.py). ``force_encoding=True`` adds the force
encoding; ``noise_head=True`` adds the noise head and uses ``irreps_feature_dens`` for the last
block's output (the official DeNS configs widen it to 4x the node channels of every degree).
``attention=False`` / ``layer_norm=False`` give the variants of DeNS Table 5.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from e3nn import o3
from torch import Tensor, nn

from dens.data.batch import Batch
from dens.models.common.initialization import draw_base_seed, part_init
from dens.models.common.inputs import check_inputs, check_settings
from dens.models.equiformer.depthwise_tensor_product import DepthwiseTensorProduct
from dens.models.equiformer.equivariant_dropout import EquivariantDropout, GraphDropPath
from dens.models.equiformer.equivariant_layer_norm import EquivariantLayerNorm
from dens.models.equiformer.gate_activation import Gate, ScaledSiLU
from dens.models.equiformer.graph_attention import GraphAttention
from dens.models.equiformer.radial_basis import RadialMLP, radial_basis
from dens.models.equiformer.settings import EquiformerSettings
from dens.models.equiformer.so3_features import Channels, add_features, parse_irreps, scatter_sum
from dens.models.equiformer.so3_linear import SO3Linear, init_weight_
from dens.models.graph import molecular_graph


class AtomEmbedding(nn.Module):
    """z: [N] -> type-0 embedding W[z] + b (W ~ N(0, 1)); higher degrees zero."""

    def __init__(self, channels: Channels, max_atomic_number: int) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.randn(max_atomic_number, channels[0]))
        self.bias = nn.Parameter(torch.zeros(channels[0]))

    def forward(self, atomic_numbers: Tensor) -> list[Tensor]:
        x0 = (self.weight.index_select(0, atomic_numbers) + self.bias).unsqueeze(1)
        n = atomic_numbers.shape[0]
        return [x0] + [
            x0.new_zeros(n, 2 * deg + 1, c) for deg, c in enumerate(self.channels) if deg
        ]


class EdgeDegreeEmbedding(nn.Module):
    """Equiformer's edge-degree embedding: sum over neighbours of DTP(c, Y(r_ij); w(|r_ij|)),
    c a learned constant (a linear map of 1x0e; only its type-0 part is non-zero, so the DTP
    paths from degrees l > 0 carry zeros, as in the official model), divided by
    sqrt(avg_degree)."""

    def __init__(
        self,
        channels: Channels,
        lmax_sh: int,
        num_basis: int,
        fc_neurons: list[int],
        avg_degree: float,
        weight_init: str,
    ) -> None:
        super().__init__()
        self.constant = SO3Linear((1,), channels, True, weight_init)
        self.dtp = DepthwiseTensorProduct(channels, lmax_sh, channels)
        self.radial = RadialMLP(num_basis, fc_neurons, self.dtp.weight_numel)
        self.proj = SO3Linear(self.dtp.channels_out, channels, True, weight_init)
        self.inv_sqrt_degree = 1.0 / math.sqrt(avg_degree)

    def forward(
        self, num_nodes: int, edge_dst: Tensor, edge_sh: Tensor, edge_basis: Tensor
    ) -> list[Tensor]:
        n_edges = edge_sh.shape[0]
        const = self.constant([edge_sh.new_ones(1, 1, 1)])
        x = [c.expand(n_edges, -1, -1) for c in const]
        h = self.proj(self.dtp(x, edge_sh, self.radial(edge_basis)))
        return [a * self.inv_sqrt_degree for a in scatter_sum(h, edge_dst, num_nodes)]


class ForceEncoding(nn.Module):
    """DeNS force encoding (Eq. 5, Algorithm 1): f: [N, 3] -> SO3_Linear(||f|| Y(f/||f||)).

    Y^(L) for L = 0..lmax, component-normalised and scaled by ||f||/sqrt(3) as the official
    code (so the type-1 part equals f); the normalisation is NaN-free for zero rows (forward
    and gradient). The linear layer has a type-0 bias, as the official ``force_embed =
    LinearRS(irreps_equivariant_inputs, irreps_node_embedding)`` (atomicarchitects/equiformer
    64cb7866, nets/equiformer_md17_dens.py:134; LinearRS's bias=True): a zero force row gets
    the bias, and the model adds the encoding of zero forces when it has no force input
    (nets/equiformer_md17_dens.py:287-294), in training and in evaluation alike.
    """

    def __init__(self, channels: Channels, weight_init: str) -> None:
        super().__init__()
        self.lmax = len(channels) - 1
        self.linear = SO3Linear((1,) * (self.lmax + 1), channels, True, weight_init)

    def forward(self, forces: Tensor) -> list[Tensor]:
        sq = forces.pow(2).sum(-1, keepdim=True)
        nonzero = sq > 0
        norm = torch.sqrt(torch.where(nonzero, sq, torch.ones_like(sq)))
        sh = o3.spherical_harmonics(
            list(range(self.lmax + 1)), forces / norm, normalize=False, normalization="component"
        )
        sh = sh * (torch.where(nonzero, norm, torch.zeros_like(norm)) / math.sqrt(3.0))
        parts = [sh[:, deg**2 : (deg + 1) ** 2].unsqueeze(-1) for deg in range(self.lmax + 1)]
        return self.linear(parts)


class FeedForward(nn.Module):
    """Equivariant FFN: Linear -> Gate -> Linear (official: two FCTPs with 1x0e)."""

    def __init__(
        self,
        channels_in: Channels,
        channels_mid: Channels,
        channels_out: Channels,
        proj_drop: float,
        weight_init: str,
    ) -> None:
        super().__init__()
        self.gate = Gate(channels_mid)
        self.linear_1 = SO3Linear(channels_in, self.gate.channels_in, True, weight_init)
        self.linear_2 = SO3Linear(channels_mid, channels_out, True, weight_init)
        self.dropout = EquivariantDropout(proj_drop)

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        return self.dropout(self.linear_2(self.gate(self.linear_1(x))))


class EquiformerBlock(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then
    shortcut(x) + DropPath(FFN(LN(x))); shortcut = Linear when the output irreps differ."""

    def __init__(
        self,
        channels_in: Channels,
        channels_out: Channels,
        attention_kwargs: dict[str, Any],
        channels_mlp_mid: Channels,
        proj_drop: float,
        drop_path_rate: float,
        layer_norm: bool,
        weight_init: str,
    ) -> None:
        super().__init__()
        # The last block's output width depends on the noise head: the FFN and the shortcut
        # are separate parts so that their type-0 weights start equal in both variants.
        seed = draw_base_seed()
        with part_init(seed, "attn"):
            self.norm_1 = EquivariantLayerNorm(channels_in) if layer_norm else None
            self.attn = GraphAttention(channels_in, channels_in, **attention_kwargs)
            self.norm_2 = EquivariantLayerNorm(channels_in) if layer_norm else None
        with part_init(seed, "ffn"):
            self.ffn = FeedForward(
                channels_in, channels_mlp_mid, channels_out, proj_drop, weight_init
            )
        with part_init(seed, "shortcut"):
            self.shortcut = (
                SO3Linear(channels_in, channels_out, True, weight_init)
                if tuple(channels_in) != tuple(channels_out)
                else None
            )
        self.drop_path = GraphDropPath(drop_path_rate)

    def forward(
        self, x: list[Tensor], graph: dict[str, Tensor], batch: Tensor, num_graphs: int
    ) -> list[Tensor]:
        h = self.norm_1(x) if self.norm_1 is not None else x
        h = self.attn(h, graph["src"], graph["dst"], graph["sh"], graph["basis"])
        x = add_features(x, self.drop_path(h, batch, num_graphs))
        h = self.norm_2(x) if self.norm_2 is not None else x
        h = self.ffn(h)
        if self.shortcut is not None:
            x = self.shortcut(x)
        return add_features(x, self.drop_path(h, batch, num_graphs))


class Equiformer(nn.Module):
    """Equiformer (MD17) with optional DeNS force encoding and noise head; hyper-parameters:
    EquiformerSettings (settings.py, which checks them).

    forward(data, force_input=None, predict_noise=False) -> {"energy": [B], "forces": [N, 3],
    "noise": [N, 3] if predict_noise}. Forces are -dE/dpos (``gradient_forces = True``), with
    create_graph in training mode. Attributes: ``settings``; ``max_radius`` and
    ``max_atomic_number`` (read by dens.data.validation's model_cutoff and
    model_max_atomic_number), ``lmax_sh`` (settings.lmax_sh resolved); ``force_encoding`` /
    ``noise_head``: the DeNS modules, None without.
    """

    gradient_forces = True
    settings_type = EquiformerSettings

    def __init__(self, settings: EquiformerSettings) -> None:
        super().__init__()
        check_settings(self, settings)
        self.settings = s = settings
        channels_node = parse_irreps(s.irreps_node_embedding)
        channels_feature = parse_irreps(s.feature_irreps)
        self.lmax_sh = len(channels_node) - 1 if s.lmax_sh is None else s.lmax_sh
        self.max_radius = s.max_radius
        self.max_atomic_number = s.max_atomic_number
        self.avg_num_nodes = s.avg_num_nodes
        self.channels_node = channels_node
        self.channels_feature = channels_feature
        attention_kwargs = dict(
            channels_pre_attn=(
                parse_irreps(s.irreps_pre_attn) if s.irreps_pre_attn else channels_node
            ),
            channels_head=parse_irreps(s.irreps_head),
            num_heads=s.num_heads,
            lmax_sh=self.lmax_sh,
            num_basis=s.number_of_basis,
            fc_neurons=list(s.fc_neurons),
            attention=s.attention,
            alpha_drop=s.alpha_drop,
            proj_drop=s.proj_drop,
            avg_degree=s.avg_degree,
            weight_init=s.weight_init,
        )

        # Each part is initialised from its own stream (common/initialization.py): a DeNS model
        # and its baseline start from the same weights wherever their shapes agree.
        seed = draw_base_seed()
        with part_init(seed, "atom_embedding"):
            self.atom_embedding = AtomEmbedding(channels_node, s.max_atomic_number)
            if s.weight_init == "uniform":
                init_weight_(self.atom_embedding.weight, 1, s.weight_init)
        with part_init(seed, "rbf"):
            self.rbf = radial_basis(s.basis_type, s.number_of_basis, s.max_radius)
        with part_init(seed, "edge_degree_embedding"):
            self.edge_degree_embedding = EdgeDegreeEmbedding(
                channels_node,
                self.lmax_sh,
                s.number_of_basis,
                list(s.fc_neurons),
                s.avg_degree,
                s.weight_init,
            )
        with part_init(seed, "force_encoding"):
            self.force_encoding = (
                ForceEncoding(channels_node, s.weight_init) if s.force_encoding else None
            )
        blocks = []
        for i in range(s.num_layers):
            with part_init(seed, f"blocks.{i}"):
                blocks.append(
                    EquiformerBlock(
                        channels_node,
                        channels_feature if i == s.num_layers - 1 else channels_node,
                        attention_kwargs,
                        parse_irreps(s.irreps_mlp_mid),
                        s.proj_drop,
                        s.drop_path_rate,
                        s.layer_norm,
                        s.weight_init,
                    )
                )
        self.blocks = nn.ModuleList(blocks)
        with part_init(seed, "energy_head"):
            self.norm = EquivariantLayerNorm(channels_feature) if s.layer_norm else None
            self.out_dropout = EquivariantDropout(s.out_drop)
            self.energy_hidden = SO3Linear(
                channels_feature, (channels_feature[0],), True, s.weight_init
            )
            self.energy_act = ScaledSiLU()
            self.energy_out = SO3Linear((channels_feature[0],), (1,), True, s.weight_init)
        with part_init(seed, "noise_head"):
            self.noise_head = (
                GraphAttention(channels_feature, (0, 1), **attention_kwargs)
                if s.noise_head
                else None
            )

    def _check_inputs(self, data: Batch, force_input: Tensor | None, predict_noise: bool) -> None:
        check_inputs(
            "Equiformer",
            data,
            self.max_atomic_number,
            force_input,
            self.force_encoding is not None,
            predict_noise,
            self.noise_head is not None,
        )

    def forward(
        self, data: Batch, force_input: Tensor | None = None, predict_noise: bool = False
    ) -> dict[str, Tensor]:
        """data: Batch with pos [N, 3], atomic_numbers [N], batch [N], natoms [B];
        force_input: [N, 3] forces to encode, or None; None and zero rows get the encoding of
        zero forces (its bias) when the model has a force encoding."""
        self._check_inputs(data, force_input, predict_noise)
        grad_enabled = torch.is_grad_enabled()
        with torch.enable_grad():
            pos = data.pos if data.pos.requires_grad else data.pos.detach().requires_grad_(True)
            batch, natoms = data.batch, data.natoms
            num_nodes, num_graphs = pos.shape[0], natoms.shape[0]
            src, dst = molecular_graph(data, pos, self.max_radius)  # rebuilt from noisy pos
            vec = pos.index_select(0, src) - pos.index_select(0, dst)  # [E, 3]
            graph = {
                "src": src,
                "dst": dst,
                "sh": o3.spherical_harmonics(
                    list(range(self.lmax_sh + 1)), vec, normalize=True, normalization="component"
                ),
                "basis": self.rbf(vec.norm(dim=-1)),
            }
            x = add_features(
                self.atom_embedding(data.atomic_numbers),
                self.edge_degree_embedding(num_nodes, dst, graph["sh"], graph["basis"]),
            )
            if self.force_encoding is not None:  # zero forces without input: the bias only
                forces = torch.zeros_like(pos) if force_input is None else force_input.to(pos.dtype)
                x = add_features(x, self.force_encoding(forces))
            for block in self.blocks:
                x = block(x, graph, batch, num_graphs)
            if self.norm is not None:
                x = self.norm(x)
            x = self.out_dropout(x)

            node_energy = self.energy_out([self.energy_act(self.energy_hidden(x)[0])])[0]
            energy = pos.new_zeros(num_graphs).index_add(0, batch, node_energy.view(-1))
            energy = energy / math.sqrt(self.avg_num_nodes)
            out = {"energy": energy}
            if predict_noise:
                noise = self.noise_head(x, src, dst, graph["sh"], graph["basis"])
                out["noise"] = noise[1].view(num_nodes, 3)
            (grad,) = torch.autograd.grad(
                energy.sum(),
                pos,
                create_graph=self.training and grad_enabled,
                retain_graph=grad_enabled,
            )
            out["forces"] = -grad
        if not grad_enabled:
            out = {k: v.detach() for k, v in out.items()}
        return out
