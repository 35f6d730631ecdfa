"""Equiformer (Liao & Smidt, ICLR 2023) for MD17, with the DeNS force encoding and noise head.

network.py: the network and its blocks; graph_attention.py: equivariant graph attention;
depthwise_tensor_product.py: the depthwise tensor product of its messages.
"""

from dens.models.equiformer.network import Equiformer

__all__ = ["Equiformer"]
