"""SO(2) mathematics shared by EquiformerV2 and eSCN (Passaro & Zitnick, ICML 2023).

coefficients.py: degree/order index tables, the m-primary arrangement of kept orders;
edge_frame.py: the rotation taking an edge onto the polar axis; wigner.py: batched Wigner-D rows
in e3nn's convention; sphere_grid.py: sampling on e3nn's sphere grid and projecting back;
so2_convolution.py: the order-wise linear map of edge-frame features.
"""

from dens.models.so2.coefficients import (
    degree_order,
    num_coefficients,
    num_kept,
    order_major_index,
    order_sizes,
    truncation_rescale,
)
from dens.models.so2.edge_frame import edge_frame
from dens.models.so2.so2_convolution import RadialFunction, SO2Convolution
from dens.models.so2.sphere_grid import SphereGrid
from dens.models.so2.wigner import EdgeWigner, swap_matrix

__all__ = [
    "EdgeWigner",
    "RadialFunction",
    "SO2Convolution",
    "SphereGrid",
    "degree_order",
    "edge_frame",
    "num_coefficients",
    "num_kept",
    "order_major_index",
    "order_sizes",
    "swap_matrix",
    "truncation_rescale",
]
