"""Depthwise ("uvu") tensor product of edge features with edge spherical harmonics.

Equiformer (Liao & Smidt, ICLR 2023, Sec. 3.3, "separable FCTP"): the depthwise part of the
separable tensor product. For every input degree l1, spherical-harmonic degree l2 and
output degree lo in |l1-l2|..l1+l2 (kept if lo is a degree of ``channels_filter``, or 0),
each channel c gives its own output channel:

    out^{(l1,l2,lo)}_{e,k,c} = w_{e,p,c} sqrt(2lo+1) sum_ij C^{l1 l2 lo}_ijk x_{e,i,c} Y^{l2}_{e,j}

with C e3nn's real Wigner 3j symbols, Y the component-normalised spherical harmonics, p the
path index and w per-edge weights (from a radial MLP) or learned weights shared over edges.
This equals e3nn's ``TensorProduct(..., 'uvu', irrep_normalization='component',
path_normalization='none')`` as used by the official code (tested against it).

Implementation: the paths of one input degree are merged, so that a forward pass costs one
matmul with a constant Clebsch-Gordan tensor and one batched matmul per input degree, and one
product with the weights per (input, output) degree pair, instead of one einsum per path.
Outputs are returned as channel chunks (see SO3Linear) rather than concatenated.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import Tensor, nn

from dens.models.equiformer.so3_features import Channels
from dens.models.equiformer.so3_linear import init_weight_


class DepthwiseTensorProduct(nn.Module):
    """x[l1]: [E, 2l1+1, C_l1] (x) Y: [E, (lmax_sh+1)^2] -> out[lo]: [E, 2lo+1, M_lo] (chunked).

    ``channels_out[lo] = M_lo`` is the number of (path, channel) pairs that end in degree lo;
    within a degree, output channels are ordered by input degree, then path, then channel
    (``self.paths[lo]`` lists the (l1, l2) of those paths in order).
    ``weight_init=None``: forward takes per-edge weights [E, weight_numel]; "normal" or
    "uniform": learned weights shared by all edges (e3nn's ``internal_weights=True``),
    initialised N(0, 1) as e3nn or U(-1, 1) (``init_weight_`` with fan-in 1).
    Weights are laid out by input degree, then output degree, then path, then channel.
    """

    def __init__(
        self,
        channels_in: Channels,
        lmax_sh: int,
        channels_filter: Channels,
        weight_init: str | None = None,
    ) -> None:
        super().__init__()
        self.channels_in = tuple(channels_in)
        self.lmax_sh = lmax_sh
        allowed = {deg for deg, c in enumerate(channels_filter) if c > 0} | {0}
        lmax_out = max(allowed)
        dim_sh = (lmax_sh + 1) ** 2
        channels_out = [0] * (lmax_out + 1)
        self.paths: list[list[tuple[int, int]]] = [[] for _ in range(lmax_out + 1)]
        # per input degree: (l1, channels, [(lo, number of paths)] per output-degree group)
        self._blocks: list[tuple[int, int, list[tuple[int, int]]]] = []
        self._weight_sizes: list[int] = []
        for l1, c in enumerate(self.channels_in):
            if c == 0:
                continue
            d1 = 2 * l1 + 1
            groups = []
            cg_rows = []
            for lo in range(lmax_out + 1):
                l2s = [l2 for l2 in range(lmax_sh + 1) if abs(l1 - l2) <= lo <= l1 + l2]
                if lo not in allowed or not l2s:
                    continue
                # rows of this group ordered (m, path): [2lo+1, P, dim_sh, d1]
                block = torch.zeros(2 * lo + 1, len(l2s), dim_sh, d1, dtype=torch.float64)
                for p, l2 in enumerate(l2s):
                    w3j = o3.wigner_3j(l1, l2, lo, dtype=torch.float64)  # [d1, d2, do]
                    block[:, p, l2**2 : (l2 + 1) ** 2, :] = math.sqrt(2 * lo + 1) * w3j.permute(
                        2, 1, 0
                    )
                    self.paths[lo].append((l1, l2))
                cg_rows.append(block.reshape(-1, dim_sh, d1))
                groups.append((lo, len(l2s)))
                channels_out[lo] += c * len(l2s)
                self._weight_sizes.append(c * len(l2s))
            if not groups:
                continue
            cg = torch.cat(cg_rows, dim=0).permute(1, 0, 2)  # [dim_sh, K, d1]
            # kept in float64 (cast to the input dtype in forward) so that a model converted
            # with .double() has exact coefficients
            self.register_buffer(f"cg_{l1}", cg.reshape(dim_sh, -1), persistent=False)
            self._blocks.append((l1, c, groups))
        self.channels_out: Channels = tuple(channels_out)
        self.weight_numel = sum(self._weight_sizes)
        self.weight = None
        if weight_init is not None:
            self.weight = nn.Parameter(torch.empty(self.weight_numel))
            init_weight_(self.weight, 1, weight_init)

    def forward(
        self, x: list[Tensor], sh: Tensor, weight: Tensor | None = None
    ) -> list[list[Tensor]]:
        """x[l]: [E, 2l+1, C_l]; sh: [E, (lmax_sh+1)^2]; weight: [E, weight_numel] unless
        learned (weight_init). Returns out[lo] as a list of channel chunks [E, 2lo+1, n] (one
        per input degree; they concatenate to channels_out[lo]; SO3Linear takes them as they
        are)."""
        if (weight is None) == (self.weight is None):
            raise ValueError(
                "DepthwiseTensorProduct: pass per-edge weights iff it has no learned weights "
                "(weight_init=None)"
            )
        n_edges = sh.shape[0]
        if weight is None:
            weights = torch.split(self.weight, self._weight_sizes)
            lead = (1, 1)
        else:
            weights = torch.split(weight, self._weight_sizes, dim=1)
            lead = (n_edges, 1)
        pieces: list[list[Tensor]] = [[] for _ in self.channels_out]
        i_w = 0
        for l1, c, groups in self._blocks:
            d1 = 2 * l1 + 1
            cg = getattr(self, f"cg_{l1}").to(sh.dtype)
            y = torch.matmul(sh, cg).view(n_edges, -1, d1)  # [E, K, d1]
            xl = x[l1]  # [E, d1, C]
            sizes = [(2 * lo + 1) * n_paths for lo, n_paths in groups]
            if d1 == 1:  # y [E, K, 1]: weight the input first, then one broadcast product
                for (lo, n_paths), yg in zip(groups, torch.split(y, sizes, dim=1), strict=True):
                    w = weights[i_w].view(*lead, n_paths, c)
                    i_w += 1
                    xw = xl.unsqueeze(2) * w  # [E, 1, P, C]
                    zw = yg.view(n_edges, 2 * lo + 1, n_paths, 1) * xw  # [E, m, P, C]
                    pieces[lo].append(zw.view(n_edges, 2 * lo + 1, n_paths * c))
                continue
            z = torch.bmm(y, xl)  # [E, K, C]
            for (lo, n_paths), zg in zip(groups, torch.split(z, sizes, dim=1), strict=True):
                w = weights[i_w].view(*lead, n_paths, c)
                i_w += 1
                zw = zg.view(n_edges, 2 * lo + 1, n_paths, c) * w  # [E, m, P, C]
                pieces[lo].append(zw.view(n_edges, 2 * lo + 1, n_paths * c))
        return [p if p else [sh.new_zeros(n_edges, 2 * lo + 1, 0)] for lo, p in enumerate(pieces)]

    def extra_repr(self) -> str:
        return (
            f"channels_in={self.channels_in}, lmax_sh={self.lmax_sh}, "
            f"channels_out={self.channels_out}, weight_numel={self.weight_numel}"
        )
