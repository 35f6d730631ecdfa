"""Equiformer (Liao & Smidt, ICLR 2023) for MD17, with the DeNS force encoding and noise head.

settings.py: its hyper-parameters and their checks (EquiformerSettings); network.py: the network
and its blocks; graph_attention.py: equivariant graph attention; depthwise_tensor_product.py: the
depthwise tensor product of its messages; official_import.py: load the official MD17
Equiformer's weights. Its blocks on features as lists of per-degree tensors (so3_features.py):
so3_linear.py, equivariant_layer_norm.py, gate_activation.py, equivariant_dropout.py (dropout
and stochastic depth), radial_basis.py (radial bases and MLPs).
"""

from dens.models.equiformer.network import Equiformer
from dens.models.equiformer.settings import EquiformerSettings

__all__ = ["Equiformer", "EquiformerSettings"]
