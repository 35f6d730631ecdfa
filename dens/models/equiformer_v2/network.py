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
from dens.models.equiformer_v2.settings import EquiformerV2Settings
from dens.models.so2.coefficients import truncation_rescale
from dens.models.so2.so2_convolution import RadialFunction
from dens.models.so2.sphere_grid import SphereGrid
from dens.models.so2.wigner import EdgeWigner
from dens.models.so3.edge_graph import EdgeGraph
from dens.models.so3.gaussian_smearing import GaussianSmearing
from dens.models.so3.input_stage import SO3ArrayNetwork
from dens.models.so3.so3_linear import SO3Linear


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


class EquiformerV2(SO3ArrayNetwork):
    """EquiformerV2 with optional DeNS force encoding and noise head (``SO3ArrayNetwork``: the
    forward pass's inputs and outputs); settings: its hyper-parameters (``EquiformerV2Settings``).
    """

    settings_type = EquiformerV2Settings

    def __init__(self, settings: EquiformerV2Settings) -> None:
        super().__init__(settings)
        s = settings
        lmax, mmax, sphere_channels = s.lmax, s.mmax, s.sphere_channels
        max_num_elements, edge_channels = s.max_num_elements, s.edge_channels

        self.distance_expansion = GaussianSmearing(s.cutoff, s.num_distance_basis)
        self.wigner = EdgeWigner(lmax, mmax)
        self.register_buffer("truncation_rescale", truncation_rescale(lmax, mmax), persistent=False)
        node_grid = SphereGrid(lmax, lmax, s.grid_resolution)
        edge_grid = SphereGrid(lmax, mmax, s.grid_resolution, order_major=True)
        edge_widths = [s.num_distance_basis, edge_channels, edge_channels]

        def attention_block(output_channels: int, drop: float) -> SO2GraphAttention:
            return SO2GraphAttention(
                sphere_channels,
                s.attn_hidden_channels,
                s.num_heads,
                s.attn_alpha_channels,
                s.attn_value_channels,
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
                init_weights(module, s.weight_init)
            return module

        self.sphere_embedding = part(
            "sphere_embedding", lambda: nn.Embedding(max_num_elements, sphere_channels)
        )
        self.edge_degree_embedding = part(
            "edge_degree_embedding",
            lambda: EdgeDegreeEmbedding(
                sphere_channels, lmax, max_num_elements, edge_widths, s.avg_degree
            ),
        )
        self.force_embedding = (
            part("force_embedding", lambda: SO3Linear(1, sphere_channels, lmax))
            if s.force_encoding
            else None
        )
        self.blocks = nn.ModuleList(
            part(
                f"blocks.{i}",
                lambda: TransformerBlock(
                    attention_block(sphere_channels, s.alpha_drop),
                    FeedForwardNetwork(
                        sphere_channels, s.ffn_hidden_channels, sphere_channels, lmax, node_grid
                    ),
                    lmax,
                    sphere_channels,
                    s.drop_path_rate,
                    s.proj_drop,
                ),
            )
            for i in range(s.num_layers)
        )
        self.norm = part("norm", lambda: EquivariantLayerNormSH(lmax, sphere_channels))
        self.energy_block = part(
            "energy_block",
            lambda: FeedForwardNetwork(sphere_channels, s.ffn_hidden_channels, 1, lmax, node_grid),
        )
        self.force_block = part("force_block", lambda: attention_block(1, 0.0))
        self.denoising_pos_block = (
            part("denoising_pos_block", lambda: attention_block(1, 0.0)) if s.noise_head else None
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
        x, graph = self.input_stage(data, force_input, predict_noise)
        batch, num_graphs = data.batch, data.natoms.shape[0]
        x = x + self.edge_degree_embedding(graph)
        for block in self.blocks:
            x = block(x, graph, batch, num_graphs)
        x = self.norm(x)

        node_energy = self.energy_block(x)[:, 0, 0]
        energy = node_energy.new_zeros(num_graphs).index_add(0, batch, node_energy)
        out = {
            "energy": energy / self.settings.avg_num_nodes,
            "forces": self.force_block(x, graph)[:, 1:4, 0],
        }
        if predict_noise:
            out["noise"] = self.denoising_pos_block(x, graph)[:, 1:4, 0]
        return out
