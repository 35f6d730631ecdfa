"""SO(3)-linear layer: a separate channel-mixing matrix per degree l.

Equiformer (Liao & Smidt, ICLR 2023, Sec. 3.1 "Linear") and DeNS Algorithm 1 ("SO3_Linear"):

    y_l = x_l W_l            x_l: [..., 2l+1, C_in_l],  W_l: [C_in_l, C_out_l]
    y_0 = x_0 W_0 + b        bias on type-0 (scalar) outputs only

Parametrisation of the official ``LinearRS``: W_l ~ N(0, 1/C_in_l) stored already scaled
(so Adam's step size acts on the effective weights), bias initialised to zero. With
``weight_init="uniform"``, W_l ~ U(-1/sqrt(C_in_l), 1/sqrt(C_in_l)) as torch.nn.Linear (the
DeNS paper, App. D.2, uses uniform initialisation for Equiformer without attention and layer
norm). Output degrees without input channels are zero.

An input degree may be given as a list of chunks [..., 2l+1, n_k] whose channels concatenate
to C_in_l (the depthwise tensor product returns its outputs so): y_l = sum_k chunk_k W_l[rows
of k]. This avoids a concatenation whose second derivative (needed for gradient forces)
would allocate and fill a zero tensor per chunk.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from dens.models.equiformer.so3_features import Channels

WeightInit = Literal["normal", "uniform"]
WEIGHT_INITS: tuple[str, ...] = get_args(WeightInit)


def init_weight_(weight: Tensor, fan_in: int, weight_init: str) -> None:
    """In place: N(0, 1/fan_in) ("normal") or U(-1/sqrt(fan_in), 1/sqrt(fan_in)) ("uniform")."""
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
    with torch.no_grad():
        if weight_init == "normal":
            weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
        else:
            weight.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))


def _chunked_matmul(x: Tensor | list[Tensor], weight: Tensor) -> Tensor:
    """x @ weight, x given whole or as chunks along its last axis."""
    if isinstance(x, Tensor):
        return torch.matmul(x, weight)
    sizes = [chunk.shape[-1] for chunk in x]
    if sum(sizes) != weight.shape[0]:
        raise ValueError(f"chunks of {sum(sizes)} channels for a weight of {weight.shape[0]} rows")
    out = None
    for chunk, w in zip(x, torch.split(weight, sizes), strict=True):
        y = torch.matmul(chunk, w)
        out = y if out is None else out + y
    return out


class SO3Linear(nn.Module):
    """Degree-wise linear map between features of channels ``channels_in`` -> ``channels_out``.

    Input and output: lists of per-degree tensors [..., 2l+1, C_l] (see so3_features).
    """

    def __init__(
        self,
        channels_in: Channels,
        channels_out: Channels,
        bias: bool = True,
        weight_init: str = "normal",
    ) -> None:
        super().__init__()
        self.channels_in = tuple(channels_in)
        self.channels_out = tuple(channels_out)
        self.weight = nn.ParameterDict()
        for deg, c_out in enumerate(self.channels_out):
            c_in = self.channels_in[deg] if deg < len(self.channels_in) else 0
            if c_in > 0 and c_out > 0:
                w = nn.Parameter(torch.empty(c_in, c_out))
                init_weight_(w, c_in, weight_init)
                self.weight[str(deg)] = w
        self.bias = (
            nn.Parameter(torch.zeros(self.channels_out[0]))
            if bias and self.channels_out[0] > 0
            else None
        )

    def forward(self, x: list[Tensor] | list[Tensor | list[Tensor]]) -> list[Tensor]:
        """x[l]: [..., 2l+1, C_in_l] (or a list of channel chunks) -> [..., 2l+1, C_out_l]."""
        if len(x) != len(self.channels_in):
            raise ValueError(f"SO3Linear expects {len(self.channels_in)} degrees, got {len(x)}")
        first = x[0][0] if isinstance(x[0], list) else x[0]
        leading = first.shape[:-2]
        out = []
        for deg, c_out in enumerate(self.channels_out):
            key = str(deg)
            if key in self.weight:
                y = _chunked_matmul(x[deg], self.weight[key])
            else:
                y = first.new_zeros(*leading, 2 * deg + 1, c_out)
            if deg == 0 and self.bias is not None:
                y = y + self.bias
            out.append(y)
        return out

    def extra_repr(self) -> str:
        return f"channels_in={self.channels_in}, channels_out={self.channels_out}"
