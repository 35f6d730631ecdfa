"""eSCN for OC20 with the DeNS force encoding and noise head.

eSCN: Passaro & Zitnick, "Reducing SO(3) Convolutions to SO(2) for Efficient Equivariant GNNs",
ICML 2023; the mathematics of fairchem 1.x ``escn/escn.py`` (commit 31c0963) with the official
OC20 S2EF-2M config ``configs/oc20/s2ef/2M/escn/eSCN-L6-M2-Lay12.yml`` (the ``escn-52m``
preset), so that a fairchem checkpoint maps onto this model (``import_fairchem.py``). DeNS:
Liao, Smidt, Shuaibi, Das, TMLR 2024, Sec. 3.2.2 (force encoding, Eq. 5) and App. D.1 ("the same
module as force prediction to predict noise"), as atomicarchitects/DeNS
``model/escn/escn_denoising.py`` does it.

Features: arrays [N, (lmax + 1)^2, C], real spherical-harmonic coefficients in e3nn's order.

    graph   = periodic graph of pos (cutoff, at most max_neighbors per atom), rebuilt every call
    x       = Embedding(Z) at l = 0  [+ ForceEncoding(f)]
    x       = Layer_1(x);  x = x + Layer_k(x), k = 2..num_layers
    Layer(x): for every edge j -> i, with W the Wigner-D of its frame (kept orders |m| <= mmax):
              msg_ij = W^T S2Act(SO2_src(W x_j, e_ij) + SO2_tgt(W x_i, e_ij)),
              m_i = sum_j msg_ij,  out = Grid^-1 MLP(Grid x, Grid m)   (point-wise on the sphere)
    E       = 0.001 sum_i EnergyBlock(x_i at the sphere points)
    F_i     = ForceBlock(x_i at the sphere points)        (direct forces)
    noise_i = NoiseBlock(x_i at the sphere points)        (DeNS: a second ForceBlock)

e_ij: invariant edge features (``edge_block.py``); SO2: ``so2_block.py``; S2Act: SiLU on e3nn's
2 (lmax + 1) x (2 mmax + 1) grid of the edge frame; Grid: e3nn's 2 (lmax + 1) x (2 lmax + 3) grid.
Force encoding (``force_encoding=True``): f -> SO3Linear(|f| Y(f/|f|) / sqrt(3)) for degrees
0..lmax, weights U(+-0.001) as in the DeNS code; its l = 0 bias is added in every call.

The edge frame's roll about the edge is random in every forward pass in the reference; here
in training mode (``edge_roll``, ``dens.models.so2.edge_frame``), deterministic in eval mode
unless ``edge_roll="random"``. eSCN's coarse edge grid (5 points in the roll angle at mmax = 2)
makes the outputs depend on the roll at the 1e-2 relative level (tests/fixtures/escn/README.md),
and the fixed sphere points of the heads make them equivariant only up to quadrature error
(tests/models/test_escn.py measures both).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dens.data.batch import Batch
from dens.models.common.initialization import draw_base_seed, part_init
from dens.models.escn.edge_block import EdgeBlock
from dens.models.escn.output_heads import EnergyBlock, ForceBlock, SphereSampler
from dens.models.escn.settings import ESCNSettings
from dens.models.escn.so2_block import SO2Block
from dens.models.so2.sphere_grid import SphereGrid
from dens.models.so2.wigner import EdgeWigner
from dens.models.so3.edge_graph import EdgeGraph, gather_nodes, sum_to_nodes
from dens.models.so3.gaussian_smearing import GaussianSmearing
from dens.models.so3.input_stage import SO3ArrayNetwork
from dens.models.so3.so3_linear import SO3Linear

ENERGY_SCALE = 0.001  # fairchem 1.x eSCN: "scale energy to help balance numerical precision"


def grid_shape(lmax: int, mmax: int, resolution: int | None) -> tuple[int, int]:
    """(beta, alpha) points of fairchem 1.x escn ``SO3_Grid(lmax, mmax, resolution)``."""
    if resolution:
        return resolution, resolution
    return 2 * (lmax + 1), 2 * (mmax + 1) + 1 if lmax == mmax else 2 * mmax + 1


class MessageBlock(nn.Module):
    """Node features x [N, (L+1)^2, C] -> summed messages [N, (L+1)^2, C] (fairchem 1.x
    ``MessageBlock``: names edge_block, so2_block_source, so2_block_target)."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        edge_channels: int,
        lmax: int,
        mmax: int,
        num_distance_basis: int,
        max_num_elements: int,
        edge_grid: SphereGrid,
    ) -> None:
        super().__init__()
        self.edge_block = EdgeBlock(num_distance_basis, edge_channels, max_num_elements)
        self.so2_block_source = SO2Block(channels, hidden_channels, edge_channels, lmax, mmax)
        self.so2_block_target = SO2Block(channels, hidden_channels, edge_channels, lmax, mmax)
        self.edge_grid = edge_grid

    def forward(self, x: Tensor, graph: EdgeGraph) -> Tensor:
        src, dst, z = graph.src, graph.dst, graph.atomic_numbers
        x_edge = self.edge_block(graph.distance_basis, z[src], z[dst])
        to_frame = graph.to_frame
        message = self.so2_block_source(
            torch.bmm(to_frame, gather_nodes(x, src)), x_edge
        ) + self.so2_block_target(torch.bmm(to_frame, gather_nodes(x, dst)), x_edge)
        message = torch.bmm(graph.from_frame, self.edge_grid.silu(message))
        return sum_to_nodes(message, dst, x.shape[0])


class LayerBlock(nn.Module):
    """x [N, (L+1)^2, C] -> [N, (L+1)^2, C]: messages, then the point-wise MLP on the sphere of
    (x, messages) (fairchem 1.x ``LayerBlock``: message_block, fc1_sphere [C, 2C] acting on
    (x, m) concatenated, fc2_sphere, fc3_sphere, no biases)."""

    def __init__(self, message_block: MessageBlock, channels: int, node_grid: SphereGrid) -> None:
        super().__init__()
        self.message_block = message_block
        self.fc1_sphere = nn.Linear(2 * channels, channels, bias=False)
        self.fc2_sphere = nn.Linear(channels, channels, bias=False)
        self.fc3_sphere = nn.Linear(channels, channels, bias=False)
        self.node_grid = node_grid

    def forward(self, x: Tensor, graph: EdgeGraph) -> Tensor:
        message = self.message_block(x, graph)
        # fc1 is linear in the channels, so it commutes with sampling: apply it to the
        # coefficients and sample once instead of sampling x and the messages separately
        w_x, w_m = self.fc1_sphere.weight.chunk(2, dim=1)
        h = self.node_grid.sample(F.linear(x, w_x) + F.linear(message, w_m))
        h = self.fc3_sphere(F.silu(self.fc2_sphere(F.silu(h))))
        return self.node_grid.project(h)


class ESCN(SO3ArrayNetwork):
    """eSCN with optional DeNS force encoding and noise head (``SO3ArrayNetwork``: the forward
    pass's inputs and outputs); settings: its hyper-parameters (``ESCNSettings``).
    """

    settings_type = ESCNSettings

    def __init__(self, settings: ESCNSettings) -> None:
        super().__init__(settings)
        s = settings
        lmax, mmax, sphere_channels = s.lmax, s.mmax, s.sphere_channels
        num_distance_basis = s.num_distance_basis
        self.distance_expansion = GaussianSmearing(s.cutoff, num_distance_basis, s.basis_width)
        self.wigner = EdgeWigner(lmax, mmax)
        self.truncation_rescale = None  # the edge frames' map back to the lab is W^T, unscaled
        edge_grid = SphereGrid(
            lmax,
            mmax,
            grid_shape(lmax, mmax, s.grid_resolution),
            order_major=True,
            normalization="integral",
            rescale=False,
        )
        node_grid = SphereGrid(
            lmax, lmax, grid_shape(lmax, lmax, s.grid_resolution), normalization="integral"
        )
        self.sampler = SphereSampler(lmax, s.num_sphere_samples)

        # Each part is initialised from its own stream (common/initialization.py): a DeNS model
        # and its baseline start from the same weights wherever their shapes agree.
        seed = draw_base_seed()

        def part(name: str, build: Callable[[], nn.Module]) -> nn.Module:
            with part_init(seed, name):
                return build()

        self.sphere_embedding = part(
            "sphere_embedding", lambda: nn.Embedding(s.max_num_elements, sphere_channels)
        )
        self.force_embedding = (
            part("force_embedding", lambda: small_so3_linear(sphere_channels, lmax))
            if s.force_encoding
            else None
        )
        self.layer_blocks = nn.ModuleList(
            part(
                f"layer_blocks.{i}",
                lambda: LayerBlock(
                    MessageBlock(
                        sphere_channels,
                        s.hidden_channels,
                        s.edge_channels,
                        lmax,
                        mmax,
                        num_distance_basis,
                        s.max_num_elements,
                        edge_grid,
                    ),
                    sphere_channels,
                    node_grid,
                ),
            )
            for i in range(s.num_layers)
        )
        self.energy_block = part("energy_block", lambda: EnergyBlock(sphere_channels))
        self.force_block = part("force_block", lambda: ForceBlock(sphere_channels))
        self.denoising_pos_block = (
            part("denoising_pos_block", lambda: ForceBlock(sphere_channels))
            if s.noise_head
            else None
        )

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW leaves undecayed (dens.training.optimizer.weight_decay_exempt), as
        the official eSCN lists them: every parameter whose name contains "embedding", "frequencies"
        or "bias" (ocp 5d0f59e ``ocpmodels/models/base.py``:130-136, ``BaseModel.no_weight_decay``,
        which the DeNS eSCN inherits: atomicarchitects/DeNS e98b747 ``model/escn/
        escn_denoising.py``:53 subclasses ocpmodels' eSCN(BaseModel); fairchem 1.x 31c0963
        ``models/base.py``:179-185 keeps the rule in GraphModelMixin). Everything else, the
        layer norms of the radial MLPs included, is decayed."""
        return {
            name
            for name, _ in self.named_parameters()
            if "embedding" in name or "frequencies" in name or "bias" in name
        }

    def forward(
        self, data: Batch, force_input: Tensor | None = None, predict_noise: bool = False
    ) -> dict[str, Tensor]:
        """data: Batch with pos [N, 3], atomic_numbers [N], batch [N], natoms [B], cell [B, 3, 3]
        and pbc [B, 3] (periodic); force_input: [N, 3] forces to encode (zero rows: none)."""
        x, graph = self.input_stage(data, force_input, predict_noise)
        num_graphs = data.natoms.shape[0]
        for i, block in enumerate(self.layer_blocks):
            x = block(x, graph) if i == 0 else x + block(x, graph)

        x_points = self.sampler(x)
        node_energy = self.energy_block(x_points)
        energy = node_energy.new_zeros(num_graphs).index_add(0, data.batch, node_energy)
        points = self.sampler.points
        out = {"energy": ENERGY_SCALE * energy, "forces": self.force_block(x_points, points)}
        if predict_noise:
            out["noise"] = self.denoising_pos_block(x_points, points)
        return out


def small_so3_linear(channels: int, lmax: int) -> SO3Linear:
    """The DeNS force encoder of eSCN: SO3Linear(1, C, lmax) with weights U(+-0.001) (eSCN's small
    initialisation, atomicarchitects/DeNS model/escn/escn_denoising.py)."""
    linear = SO3Linear(1, channels, lmax)
    nn.init.uniform_(linear.weight, -0.001, 0.001)
    return linear
