"""Gate activation and the scalar activations of Equiformer.

Gate (Weiler et al., 2018; Equiformer Sec. 3.1): the scalar part of the input holds
``C_0`` ordinary scalars followed by one gate scalar per channel of degree l > 0:

    y_0 = SiLU(s),     y_l[c] = sigmoid(g_{l,c}) * x_l[c]   (l > 0)

Each activation is rescaled to unit second moment under a standard normal input, as e3nn's
``normalize2mom`` (the official ``Activation``/``Gate`` do the same).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from e3nn.math import normalize2mom
from torch import Tensor, nn

from dens.models.equiformer.so3_features import Channels


def smooth_leaky_relu(x: Tensor, negative_slope: float = 0.2) -> Tensor:
    """Smooth leaky ReLU of Equiformer's attention logits (Sec. 3.3):
    (1+a)/2 x + (1-a)/2 x (2 sigmoid(x) - 1)."""
    a = negative_slope
    return 0.5 * (1 + a) * x + 0.5 * (1 - a) * x * (2 * torch.sigmoid(x) - 1)


@functools.cache
def second_moment_scale(f: Callable[[Tensor], Tensor]) -> float:
    """1 / sqrt(E[f(z)^2]) for z ~ N(0, 1) (e3nn normalize2mom), cached per function."""
    return normalize2mom(f).cst


class ScaledSiLU(nn.Module):
    """SiLU rescaled to unit second moment (e3nn normalize2mom)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = second_moment_scale(torch.nn.functional.silu)

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.silu(x) * self.scale


class Gate(nn.Module):
    """Gate activation on a feature with output channels ``channels_out``.

    ``channels_in`` = (C_0 + sum_{l>0} C_l, C_1, ..., C_L): the type-0 block holds the C_0
    scalars and then the gates, ordered by degree and channel.
    """

    def __init__(self, channels_out: Channels) -> None:
        super().__init__()
        self.channels_out = tuple(channels_out)
        self.channels_in = (self.channels_out[0] + sum(self.channels_out[1:]),) + tuple(
            self.channels_out[1:]
        )
        self.scalar_scale = second_moment_scale(torch.nn.functional.silu)
        self.gate_scale = second_moment_scale(torch.sigmoid)

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        """x[l]: [..., 2l+1, channels_in[l]] -> [..., 2l+1, channels_out[l]]."""
        if len(self.channels_out) == 1:
            return [torch.nn.functional.silu(x[0]) * self.scalar_scale]
        scalars, *gates = torch.split(x[0], self.channels_out, dim=-1)  # [..., 1, C_l] each
        out = [torch.nn.functional.silu(scalars) * self.scalar_scale]
        for xl, gate in zip(x[1:], gates, strict=True):
            out.append(xl * (torch.sigmoid(gate) * self.gate_scale))
        return out

    def extra_repr(self) -> str:
        return f"channels_out={self.channels_out}"
