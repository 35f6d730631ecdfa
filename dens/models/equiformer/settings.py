"""The hyper-parameters of the MD17 Equiformer (``EquiformerSettings``) and the checks that need
no network.

Equiformer: Liao & Smidt, "Equiformer: Equivariant Graph Attention Transformer for 3D Atomistic
Graphs", ICLR 2023; names and defaults as the official MD17 model (atomicarchitects/equiformer
64cb7866, nets/graph_attention_transformer_md17.py, the paper Lmax=2 model); DeNS: Liao, Smidt,
Shuaibi, Das, TMLR 2024 (force encoding Sec. 3.2.2, noise head App. D.2, Table 5 variants).
Each range is stated once in its field (dens.setting_fields); a setting out of range raises
dens.errors.ConfigError (a ValueError) naming ``model.<key>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dens.models.equiformer.radial_basis import BasisType
from dens.models.equiformer.so3_features import parse_irreps
from dens.models.equiformer.so3_linear import WeightInit
from dens.setting_fields import check_fields, setting

# Statistics the official code uses for MD17 (QM9 with cutoff 5 Å).
AVG_NUM_NODES = 18.03065905448718
AVG_DEGREE = 15.57930850982666


@dataclass(frozen=True)
class EquiformerSettings:
    """Hyper-parameters of ``dens.models.equiformer.Equiformer``. Irreps are e3nn strings with
    even parity; names follow the official code (defaults: the paper Lmax=2 model).

    irreps_node_embedding: node features between blocks; lmax_sh: degree of the edge spherical
    harmonics (default: that of the node features); number_of_basis, basis_type, max_radius:
    radial basis (radial_basis.py) and cutoff in Å; fc_neurons: hidden sizes of the radial MLPs
    (a list is stored as a tuple); irreps_feature: output of the last block (input of the energy
    head); irreps_feature_dens: used instead when the model has a noise head (None:
    irreps_feature; the noise head reads type-1 features of the last block); irreps_head,
    num_heads: value irreps of one attention head and number of heads; irreps_pre_attn:
    irreps of the merged edge features (default: irreps_node_embedding); irreps_mlp_mid:
    hidden irreps of the feed-forward networks; alpha_drop (attention weights), proj_drop
    (outputs of attention and FFN), out_drop (final features), drop_path_rate (stochastic
    depth per structure); force_encoding: DeNS force encoding (Eq. 5); noise_head: DeNS noise
    head (the two are separate switches: Table 6's ablation has a noise head and no force
    encoding); attention / layer_norm: DeNS Table 5 switches; weight_init: "normal" (official)
    or "uniform" (DeNS App. D.2, variant without attention and layer norm); max_atomic_number:
    size of the atom-type table; avg_num_nodes, avg_degree: normalisation of the energy sum and
    of the edge-degree / no-attention aggregations (official MD17 values).

    ValueError for a setting out of its field's range or choices (basis_type, weight_init), an
    irreps string that is not even-parity e3nn, node features or energy-head input
    (``feature_irreps``) or attention heads without 0e channels.
    """

    irreps_node_embedding: str = "128x0e+64x1e+32x2e"
    num_layers: int = setting(6, minimum=1)
    lmax_sh: int | None = setting(None, minimum=0)
    max_radius: float = setting(5.0, exclusiveMinimum=0)
    number_of_basis: int = setting(32, minimum=1)
    basis_type: BasisType = "exp"
    fc_neurons: tuple[int, ...] = setting((64, 64), minimum=1)
    irreps_feature: str = "512x0e"
    irreps_feature_dens: str | None = "512x0e+256x1e+128x2e"
    irreps_head: str = "32x0e+16x1e+8x2e"
    num_heads: int = setting(4, minimum=1)
    irreps_pre_attn: str | None = None
    irreps_mlp_mid: str = "384x0e+192x1e+96x2e"
    alpha_drop: float = setting(0.0, minimum=0, maximum=1)
    proj_drop: float = setting(0.0, minimum=0, exclusiveMaximum=1)
    out_drop: float = setting(0.0, minimum=0, exclusiveMaximum=1)
    drop_path_rate: float = setting(0.0, minimum=0, exclusiveMaximum=1)
    force_encoding: bool = False
    noise_head: bool = False
    attention: bool = True
    layer_norm: bool = True
    weight_init: WeightInit = "normal"
    max_atomic_number: int = setting(64, minimum=1)
    avg_num_nodes: float = setting(AVG_NUM_NODES, exclusiveMinimum=0)
    avg_degree: float = setting(AVG_DEGREE, exclusiveMinimum=0)

    def __post_init__(self) -> None:
        check_fields(self, "model")  # types and ranges; fc_neurons becomes a tuple
        if parse_irreps(self.irreps_node_embedding)[0] == 0:
            raise ValueError(
                f"irreps_node_embedding {self.irreps_node_embedding!r} needs 0e channels"
            )
        if parse_irreps(self.feature_irreps)[0] == 0:
            raise ValueError(
                f"irreps_feature {self.feature_irreps!r} needs 0e channels (energy head)"
            )
        if parse_irreps(self.irreps_head)[0] == 0:
            raise ValueError("irreps_head needs type-0 channels (they drive the attention)")
        for spec in (self.irreps_feature, self.irreps_pre_attn, self.irreps_mlp_mid):
            if spec:  # irreps_pre_attn None or "": irreps_node_embedding
                parse_irreps(spec)

    @property
    def feature_irreps(self) -> str:
        """Output irreps of the last block: irreps_feature_dens with a noise head (where set),
        else irreps_feature."""
        if self.noise_head and self.irreps_feature_dens:
            return self.irreps_feature_dens
        return self.irreps_feature
