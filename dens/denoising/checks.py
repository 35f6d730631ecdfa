"""Argument checks shared by the DeNS settings, corruption and losses (dens.denoising)."""

import math

from torch import Tensor

from dens.data.batch import Batch


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _require(data: Batch, names: tuple[str, ...]) -> None:
    missing = [name for name in names if getattr(data, name, None) is None]
    if missing:
        raise ValueError(f"batch lacks attribute(s) {missing} required by DeNS")


def _check_shape(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")
