"""eSCN's SO(2) block: an order-wise bottleneck map of edge-frame features gated by the edge.

In the edge frame a rotation-equivariant map acts on each order m separately (eSCN, Passaro &
Zitnick, ICML 2023, Eq. 7-9; ``dens.models.so2``). eSCN (fairchem 1.x escn/escn.py ``SO2Block``,
``SO2Conv``; same parameter names) writes each order's map as two linear layers around a
gate that depends on the invariant edge features x_edge (no bias inside the maps):

    m = 0:  y_0 = fc2_m0(fc1_m0(x_0) * SiLU(fc1_dist0(x_edge)))
    m > 0:  (g_r, g_i) = SiLU(fc1_dist(x_edge)),  R(v) = fc2_r(fc1_r(v) * g_r),
            I(v) = fc2_i(fc1_i(v) * g_i),
            y_+m = R(x_+m) - I(x_-m),   y_-m = R(x_-m) + I(x_+m)

where x_m [E, (lmax - m + 1) C] holds the order-m coefficients of all degrees l >= m and all
channels (l-major). Features are m-primary (``dens.models.so2.coefficients``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dens.models.so2.coefficients import order_sizes


class SO2OrderBlock(nn.Module):
    """One order m > 0: x [E, 2, n C] (+m run, -m run), x_edge [E, edge] -> [E, 2, n C]."""

    def __init__(self, features: int, hidden_channels: int, edge_channels: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.fc1_dist = nn.Linear(edge_channels, 2 * hidden_channels)
        self.fc1_r = nn.Linear(features, hidden_channels, bias=False)
        self.fc2_r = nn.Linear(hidden_channels, features, bias=False)
        self.fc1_i = nn.Linear(features, hidden_channels, bias=False)
        self.fc2_i = nn.Linear(hidden_channels, features, bias=False)

    def forward(self, x: Tensor, x_edge: Tensor) -> Tensor:
        gate = F.silu(self.fc1_dist(x_edge)).unsqueeze(1)  # [E, 1, 2H]: (g_r, g_i)
        # fc1_r and fc1_i in one product: [E, 2, 2H] = (R-hidden, I-hidden) of x_+m and x_-m
        hidden = F.linear(x, torch.cat((self.fc1_r.weight, self.fc1_i.weight), 0)) * gate
        hidden_r, hidden_i = hidden.split(self.hidden_channels, dim=-1)  # views: no zero-filled
        real, imag = self.fc2_r(hidden_r), self.fc2_i(hidden_i)  # slice gradients
        return torch.stack((real[:, 0] - imag[:, 1], real[:, 1] + imag[:, 0]), dim=1)


class SO2Block(nn.Module):
    """x [E, K, C] (kept coefficients |m| <= mmax, m-primary), x_edge [E, edge] -> [E, K, C]."""

    def __init__(
        self, channels: int, hidden_channels: int, edge_channels: int, lmax: int, mmax: int
    ) -> None:
        super().__init__()
        self.channels = channels
        self.sizes = order_sizes(lmax, mmax)
        n0 = self.sizes[0] * channels
        self.fc1_dist0 = nn.Linear(edge_channels, hidden_channels)
        self.fc1_m0 = nn.Linear(n0, hidden_channels, bias=False)
        self.fc2_m0 = nn.Linear(hidden_channels, n0, bias=False)
        self.so2_conv = nn.ModuleList(
            SO2OrderBlock(n * channels, hidden_channels, edge_channels) for n in self.sizes[1:]
        )

    def forward(self, x: Tensor, x_edge: Tensor) -> Tensor:
        num_edges = x.shape[0]
        x_orders = x.split([self.sizes[0]] + [2 * n for n in self.sizes[1:]], dim=1)
        x0 = self.fc1_m0(x_orders[0].reshape(num_edges, -1)) * F.silu(self.fc1_dist0(x_edge))
        out = [self.fc2_m0(x0).view(num_edges, -1, self.channels)]
        for conv, xm in zip(self.so2_conv, x_orders[1:], strict=True):
            out.append(
                conv(xm.reshape(num_edges, 2, -1), x_edge).view(num_edges, -1, self.channels)
            )
        return torch.cat(out, dim=1)
