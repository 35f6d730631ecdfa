"""EquiformerV2 (Liao et al., ICLR 2024) for OC20/OC22, with the DeNS force encoding and noise head.

network.py: the network and its transformer block; settings.py: its hyper-parameters;
graph_attention.py: SO(2) equivariant graph attention; feed_forward.py: grid-MLP feed-forward
network; edge_degree_embedding.py; layer_norm.py; activation.py; drop.py; import_fairchem.py:
load a fairchem 1.x EquiformerV2 / EquiformerV2-DeNS checkpoint. The SO(2), Wigner-D, edge-frame
and sphere-grid mathematics live in ``dens.models.so2``; the blocks on features as one array it
shares with eSCN (edge graph, Gaussian smearing, SO(3)-linear layer, fairchem import helpers,
the shared hyper-parameters) in ``dens.models.so3``.
"""

from dens.models.equiformer_v2.network import EquiformerV2
from dens.models.equiformer_v2.settings import EquiformerV2Settings

__all__ = ["EquiformerV2", "EquiformerV2Settings"]
