"""eSCN (Passaro & Zitnick, ICML 2023) for OC20, with the DeNS force encoding and noise head.

network.py: the network, its layer and message blocks; settings.py: its hyper-parameters;
so2_block.py: eSCN's gated SO(2) block; edge_block.py: invariant edge features; output_heads.py:
energy, force and noise heads on sphere points; import_fairchem.py: load a fairchem 1.x eSCN
checkpoint. The Wigner-D, edge-frame and sphere-grid mathematics live in ``dens.models.so2``,
the blocks and hyper-parameters shared with EquiformerV2 in ``dens.models.so3``.
"""

from dens.models.escn.network import ESCN
from dens.models.escn.settings import ESCNSettings

__all__ = ["ESCN", "ESCNSettings"]
