"""EquiformerV2 for OC20/OC22 with the DeNS force encoding and noise head.

EquiformerV2: Liao, Shuaibi, Das, Smidt, "EquiformerV2: Improved Equivariant Transformer for
Scaling to Higher-Degree Representations", ICLR 2024. DeNS: Liao, Smidt, Shuaibi, Das, TMLR 2024,
Sec. 3.2.2 (force encoding, Eq. 5, Algorithm 1) and App. D.1 (noise head: one extra equivariant
graph-attention block). The mathematics is that of fairchem 1.x ``equiformer_v2`` and
``equiformer_v2_dens`` with the official configs (norm_type layer_norm_sh, grid MLP feed-forward,
separable S2 activation, attention re-normalisation, atom-edge embeddings per block), so a
fairchem checkpoint maps onto this model (``import_fairchem.py``).

Features: arrays [N, (lmax + 1)^2, C], real spherical-harmonic coefficients in e3nn's order.

    graph   = periodic graph of pos (cutoff, at most max_neighbors per atom), rebuilt every call
    x       = Embedding(Z) at l = 0  [+ ForceEncoding(f)]  + EdgeDegreeEmbedding(graph)
    x       = TransformerBlock_k(x), k = 1..num_layers   (x + Attn(LN(x)); x + FFN(LN(x)))
    x       = LN(x)
    E       = sum_i FFN_E(x)_i[l = 0] / avg_num_nodes
    F_i     = Attn_F(x)_i[l = 1]            (direct forces)
    noise_i = Attn_noise(x)_i[l = 1]        (DeNS noise head)

Force encoding (``force_encoding=True``): f -> SO3Linear(|f| Y(f/|f|) / sqrt(3)) for degrees
0..lmax ("component" spherical harmonics, so the l = 1 part equals f); like the reference the
encoding's l = 0 bias is added to every atom in every call, zero force rows included.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from dens.data.batch import Batch
from dens.models.common.initialization import draw_base_seed, part_init
from dens.models.equiformer_v2.drop import ChannelDropout, GraphDropPath
from dens.models.equiformer_v2.edge_degree_embedding import EdgeDegreeEmbedding
from dens.models.equiformer_v2.feed_forward import FeedForwardNetwork
from dens.models.equiformer_v2.graph_attention import SO2GraphAttention
from dens.models.equiformer_v2.layer_norm import EquivariantLayerNormSH
from dens.models.so2.coefficients import truncation_rescale
from dens.models.so2.edge_frame import check_edge_roll
from dens.models.so2.so2_convolution import RadialFunction
from dens.models.so2.sphere_grid import SphereGrid
from dens.models.so2.wigner import EdgeWigner
from dens.models.so3.edge_graph import EdgeGraph
from dens.models.so3.gaussian_smearing import GaussianSmearing
from dens.models.so3.input_stage import check_sizes, input_stage
from dens.models.so3.so3_linear import SO3Linear

# fairchem 1.x defaults (statistics of OC20 IS2RE 100k), used by every official config.
AVG_NUM_NODES = 77.81317
AVG_DEGREE = 23.395238876342773
# fairchem 1.x get_max_neighbors_mask: with enforce_max_neighbors_strictly=False, neighbours whose
# squared distance is within this many Å^2 of the (K+1)-th nearest's are kept too.
DEGENERACY_TOLERANCE = 0.01


def init_weights(module: nn.Module, weight_init: str) -> None:
    """fairchem 1.x ``eqv2_init_weights``: biases of linear layers 0; weights N(0, 1/in) for
    "normal", else kept (U(+-1/sqrt(in))); radial MLPs always U(+-1/sqrt(in)); LayerNorm 1, 0."""

    def visit(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, SO3Linear)):
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            if weight_init == "normal":
                nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.in_features))
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, RadialFunction):
            for layer in m.net:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / math.sqrt(layer.in_features)
                    nn.init.uniform_(layer.weight, -bound, bound)
                    nn.init.zeros_(layer.bias)

    module.apply(visit)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + DropPath(Attn(LN_1(x))), then + DropPath(FFN(LN_2(x))) (fairchem 1.x
    ``TransBlockV2``; names norm_1, ga, norm_2, ffn)."""

    def __init__(
        self,
        attention: SO2GraphAttention,
        ffn: FeedForwardNetwork,
        lmax: int,
        sphere_channels: int,
        drop_path_rate: float,
        proj_drop: float,
    ) -> None:
        super().__init__()
        self.norm_1 = EquivariantLayerNormSH(lmax, sphere_channels)
        self.ga = attention
        self.norm_2 = EquivariantLayerNormSH(lmax, sphere_channels)
        self.ffn = ffn
        self.drop_path = GraphDropPath(drop_path_rate)
        self.proj_drop = ChannelDropout(proj_drop)

    def forward(self, x: Tensor, graph: EdgeGraph, batch: Tensor, num_graphs: int) -> Tensor:
        h = self.proj_drop(self.drop_path(self.ga(self.norm_1(x), graph), batch, num_graphs))
        x = x + h
        h = self.proj_drop(self.drop_path(self.ffn(self.norm_2(x)), batch, num_graphs))
        return x + h


class EquiformerV2(nn.Module):
    """EquiformerV2 with optional DeNS force encoding and noise head.

    forward(data, force_input=None, predict_noise=False) -> {"energy": [B], "forces": [N, 3],
    "noise": [N, 3] if predict_noise}; forces are direct (a head), not -dE/dpos.

    num_layers: transformer blocks; lmax, mmax: degrees of the node features and orders kept in
    the edge frame; sphere_channels: channels per coefficient; attn_hidden_channels: message
    channels between the two SO(2) convolutions; num_heads, attn_alpha_channels,
    attn_value_channels: attention heads and the widths of their logit features and values;
    ffn_hidden_channels: hidden channels of the feed-forward networks (and the grid MLP);
    edge_channels: hidden width of the radial MLPs; num_distance_basis: Gaussians on [0, cutoff]
    (fairchem 1.x fixes 600); grid_resolution: points of the sphere grid in each angle;
    cutoff (Å), max_neighbors: the graph (at most max_neighbors incoming edges per atom);
    enforce_max_neighbors_strictly: False keeps neighbours tied with the last one within 0.01 Å^2
    (fairchem's option, set by the official OC22 config); edge_roll: the roll of the edge frames
    about their edges (``dens.models.so2.edge_frame``): "random" in every forward pass as the
    official code, "training" random in training mode and deterministic in eval mode, "fixed";
    max_num_elements: size of the atom-type tables; alpha_drop, drop_path_rate, proj_drop:
    dropout of attention weights, stochastic depth per structure, dropout of block outputs;
    weight_init: "uniform" (official configs) or "normal"; avg_num_nodes, avg_degree:
    normalisation of the energy sum and of the edge-degree embedding; force_encoding,
    noise_head: the DeNS modules, separate switches; attention, layer_norm: the DeNS Table 5
    switches, which EquiformerV2 cannot turn off (only True is accepted).
    """

    gradient_forces = False

    def __init__(
        self,
        num_layers: int = 12,
        lmax: int = 6,
        mmax: int = 2,
        sphere_channels: int = 128,
        attn_hidden_channels: int = 64,
        num_heads: int = 8,
        attn_alpha_channels: int = 64,
        attn_value_channels: int = 16,
        ffn_hidden_channels: int = 128,
        edge_channels: int = 128,
        num_distance_basis: int = 600,
        grid_resolution: int = 18,
        cutoff: float = 12.0,
        max_neighbors: int = 20,
        enforce_max_neighbors_strictly: bool = True,
        edge_roll: str = "training",
        max_num_elements: int = 90,
        alpha_drop: float = 0.1,
        drop_path_rate: float = 0.05,
        proj_drop: float = 0.0,
        weight_init: str = "uniform",
        avg_num_nodes: float = AVG_NUM_NODES,
        avg_degree: float = AVG_DEGREE,
        force_encoding: bool = False,
        noise_head: bool = False,
        attention: bool = True,
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        if not attention or not layer_norm:
            raise ValueError(
                "EquiformerV2 has no variant without attention or layer normalisation "
                "(DeNS Table 5 ablates them for Equiformer on MD17 only); "
                f"got attention={attention}, layer_norm={layer_norm}"
            )
        check_sizes(num_layers, lmax, mmax, cutoff, max_neighbors)
        if weight_init not in ("uniform", "normal"):
            raise ValueError(f"weight_init must be 'uniform' or 'normal', got {weight_init!r}")
        self.lmax, self.mmax, self.sphere_channels = lmax, mmax, sphere_channels
        self.cutoff, self.max_neighbors = cutoff, max_neighbors
        self.degeneracy_tolerance = None if enforce_max_neighbors_strictly else DEGENERACY_TOLERANCE
        self.edge_roll = check_edge_roll(edge_roll)
        self.max_num_elements = max_num_elements
        self.avg_num_nodes = avg_num_nodes

        self.distance_expansion = GaussianSmearing(cutoff, num_distance_basis)
        self.wigner = EdgeWigner(lmax, mmax)
        self.register_buffer("truncation_rescale", truncation_rescale(lmax, mmax), persistent=False)
        node_grid = SphereGrid(lmax, lmax, grid_resolution)
        edge_grid = SphereGrid(lmax, mmax, grid_resolution, order_major=True)
        edge_widths = [num_distance_basis, edge_channels, edge_channels]

        def attention_block(output_channels: int, drop: float) -> SO2GraphAttention:
            return SO2GraphAttention(
                sphere_channels,
                attn_hidden_channels,
                num_heads,
                attn_alpha_channels,
                attn_value_channels,
                output_channels,
                lmax,
                mmax,
                edge_grid,
                max_num_elements,
                edge_widths,
                drop,
            )

        # Each part is initialised from its own stream (common/initialization.py): a DeNS model
        # and its baseline start from the same weights wherever their shapes agree.
        seed = draw_base_seed()

        def part(name: str, build: Callable[[], nn.Module]) -> nn.Module:
            with part_init(seed, name):
                module = build()
                init_weights(module, weight_init)
            return module

        self.sphere_embedding = part(
            "sphere_embedding", lambda: nn.Embedding(max_num_elements, sphere_channels)
        )
        self.edge_degree_embedding = part(
            "edge_degree_embedding",
            lambda: EdgeDegreeEmbedding(
                sphere_channels, lmax, max_num_elements, edge_widths, avg_degree
            ),
        )
        self.force_embedding = (
            part("force_embedding", lambda: SO3Linear(1, sphere_channels, lmax))
            if force_encoding
            else None
        )
        self.blocks = nn.ModuleList(
            part(
                f"blocks.{i}",
                lambda: TransformerBlock(
                    attention_block(sphere_channels, alpha_drop),
                    FeedForwardNetwork(
                        sphere_channels, ffn_hidden_channels, sphere_channels, lmax, node_grid
                    ),
                    lmax,
                    sphere_channels,
                    drop_path_rate,
                    proj_drop,
                ),
            )
            for i in range(num_layers)
        )
        self.norm = part("norm", lambda: EquivariantLayerNormSH(lmax, sphere_channels))
        self.energy_block = part(
            "energy_block",
            lambda: FeedForwardNetwork(sphere_channels, ffn_hidden_channels, 1, lmax, node_grid),
        )
        self.force_block = part("force_block", lambda: attention_block(1, 0.0))
        self.denoising_pos_block = (
            part("denoising_pos_block", lambda: attention_block(1, 0.0)) if noise_head else None
        )

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW leaves undecayed (dens.training.optimizer.weight_decay_exempt), as
        the official EquiformerV2 lists them (fairchem 1.x 31c0963
        ``equiformer_v2_deprecated.py``:653-680; atomicarchitects/DeNS e98b747
        ``model/equiformer_v2/equiformer_v2.py``:565-585): all but the weights of linear layers
        (nn.Linear, SO3Linear: their biases) and every parameter of layer norms (nn.LayerNorm,
        EquivariantLayerNormSH: its ``affine_weight`` too). The embeddings, ``alpha_dot`` and all
        other weights are decayed."""
        exempt = set()
        for module_name, module in self.named_modules():
            if isinstance(module, (nn.Linear, SO3Linear)):
                names = [name for name, _ in module.named_parameters() if "weight" not in name]
            elif isinstance(module, (nn.LayerNorm, EquivariantLayerNormSH)):
                names = [name for name, _ in module.named_parameters()]
            else:
                continue
            exempt.update(f"{module_name}.{name}" for name in names)
        return exempt

    def forward(
        self, data: Batch, force_input: Tensor | None = None, predict_noise: bool = False
    ) -> dict[str, Tensor]:
        """data: Batch with pos [N, 3], atomic_numbers [N], batch [N], natoms [B], cell [B, 3, 3]
        and pbc [B, 3] (periodic); force_input: [N, 3] forces to encode (zero rows: none)."""
        x, graph = input_stage(self, "EquiformerV2", data, force_input, predict_noise)
        batch, num_graphs = data.batch, data.natoms.shape[0]
        x = x + self.edge_degree_embedding(graph)
        for block in self.blocks:
            x = block(x, graph, batch, num_graphs)
        x = self.norm(x)

        node_energy = self.energy_block(x)[:, 0, 0]
        energy = node_energy.new_zeros(num_graphs).index_add(0, batch, node_energy)
        out = {
            "energy": energy / self.avg_num_nodes,
            "forces": self.force_block(x, graph)[:, 1:4, 0],
        }
        if predict_noise:
            out["noise"] = self.denoising_pos_block(x, graph)[:, 1:4, 0]
        return out
