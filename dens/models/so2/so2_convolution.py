"""SO(2) convolution: the linear map of edge-frame features that commutes with rolls about the edge.

In the edge frame (``edge_frame.py``) a rotation-equivariant linear map of spherical-harmonic
features reduces to independent maps per order m (eSCN, Passaro & Zitnick, ICML 2023, Eq. 7-9):
the m = 0 coefficients of all degrees mix freely (real), and the pair (+m, -m) of each m > 0 is
multiplied as a complex number, (x_+ , x_-) -> (W_r x_+ - W_i x_-, W_r x_- + W_i x_+), mixing all
degrees l >= m and channels. Optionally each input coefficient is first scaled by a radial
function of the edge (EquiformerV2, Liao et al., ICLR 2024: invariant edge features through an MLP).

Parameters follow fairchem 1.x ``SO2_Convolution`` / ``SO2_m_Convolution``
(equiformer_v2/so2_ops.py), so a checkpoint maps by name: ``fc_m0`` (with bias),
``so2_m_conv.{m-1}.fc`` (no bias; its output is [W_r; W_i]), ``rad_func``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dens.models.so2.coefficients import num_kept, order_sizes


class RadialFunction(nn.Module):
    """Edge scalars [E, c_0] -> [E, c_last]: Linear, then (LayerNorm, SiLU, Linear) per further
    width; fairchem 1.x equiformer_v2/radial_function.py (``net`` indices match)."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
            if i:
                layers += [nn.LayerNorm(c_in), nn.SiLU()]
            layers.append(nn.Linear(c_in, c_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SO2OrderConvolution(nn.Module):
    """One order m > 0: [E, 2, n_m C_in] (+m run, -m run) -> [E, 2, n_m C_out]."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features
        self.fc = nn.Linear(in_features, 2 * out_features, bias=False)
        with torch.no_grad():
            self.fc.weight.mul_(1 / math.sqrt(2))

    def forward(self, x: Tensor) -> Tensor:
        # [x_+, x_-] -> [W_r x_+ - W_i x_-, W_i x_+ + W_r x_-] as one product with the real
        # 2 x 2 block form of the complex weight W_r + i W_i (fc.weight = [W_r; W_i])
        w_r, w_i = self.fc.weight.chunk(2, dim=0)
        block = torch.cat((torch.cat((w_r, -w_i), 1), torch.cat((w_i, w_r), 1)), 0)
        return F.linear(x.reshape(x.shape[0], -1), block).view(x.shape[0], 2, self.out_features)


class SO2Convolution(nn.Module):
    """x: [E, K, C_in] (m-primary kept coefficients), edge scalars [E, c_0] ->
    [E, K, C_out] and, with ``extra_m0_channels``, extra invariant outputs [E, extra] (the first
    outputs of the m = 0 map: attention logits and gates in EquiformerV2).

    ``edge_channels``: widths of the radial MLP (input, hidden...) whose output scales every input
    coefficient of every channel; None: no radial scaling ("internal weights").
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        lmax: int,
        mmax: int,
        edge_channels: list[int] | None = None,
        extra_m0_channels: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.extra_m0_channels = extra_m0_channels
        self.sizes = order_sizes(lmax, mmax)
        self.num_kept = num_kept(lmax, mmax)
        self.fc_m0 = nn.Linear(
            self.sizes[0] * in_channels, extra_m0_channels + self.sizes[0] * out_channels
        )
        self.so2_m_conv = nn.ModuleList(
            SO2OrderConvolution(n * in_channels, n * out_channels) for n in self.sizes[1:]
        )
        # one radial weight per (degree, order |m|, channel): +m and -m share it
        self.rad_func = (
            RadialFunction([*edge_channels, sum(self.sizes) * in_channels])
            if edge_channels is not None
            else None
        )

    def forward(
        self, x: Tensor, edge_scalars: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        # split, not slices: one gradient concatenation instead of a zero tensor per slice
        num_edges = x.shape[0]
        n0 = self.sizes[0]
        x_orders = x.split([n0] + [2 * n for n in self.sizes[1:]], dim=1)
        radial = [None] * len(self.sizes)
        if self.rad_func is not None:
            radial = self.rad_func(edge_scalars).split(
                [n * self.in_channels for n in self.sizes], 1
            )
        x0 = x_orders[0].reshape(num_edges, -1)
        if radial[0] is not None:
            x0 = x0 * radial[0]
        y0 = self.fc_m0(x0)
        extra = None
        if self.extra_m0_channels:
            extra, y0 = y0.split([self.extra_m0_channels, y0.shape[1] - self.extra_m0_channels], 1)
        out = [y0.reshape(num_edges, n0, self.out_channels)]
        for n, conv, xm, rad in zip(
            self.sizes[1:], self.so2_m_conv, x_orders[1:], radial[1:], strict=True
        ):
            xm = xm.reshape(num_edges, 2, n * self.in_channels)
            if rad is not None:
                xm = xm * rad.unsqueeze(1)
            out.append(conv(xm).reshape(num_edges, 2 * n, self.out_channels))
        return torch.cat(out, dim=1), extra
