"""What every model family checks of its inputs: its settings, the batch and the DeNS inputs."""

from __future__ import annotations

import torch
from torch import Tensor

from dens.data.batch import Batch


def check_inputs(
    model: str,
    data: Batch,
    max_atomic_number: int,
    force_input: Tensor | None,
    force_encoding: bool,
    predict_noise: bool,
    noise_head: bool,
) -> None:
    """ValueError naming ``model`` and what is wrong with a batch (pos float [N, 3],
    atomic_numbers long [N] in [0, max_atomic_number), batch [N] agreeing with natoms [B]) or with
    the DeNS inputs (force_input [N, 3] needs a force encoding, predict_noise a noise head)."""
    for key in ("pos", "atomic_numbers", "batch", "natoms"):
        if getattr(data, key, None) is None:
            raise ValueError(f"{model}: the batch has no {key!r}")
    n = data.pos.shape[0]
    if data.pos.shape != (n, 3) or not data.pos.is_floating_point():
        raise ValueError(f"{model}: pos must be float [N, 3], got {tuple(data.pos.shape)}")
    z = data.atomic_numbers
    if z.shape != (n,) or z.dtype != torch.long:
        raise ValueError(f"{model}: atomic_numbers must be long [N]")
    if n and (int(z.min()) < 0 or int(z.max()) >= max_atomic_number):
        raise ValueError(
            f"{model}: atomic_numbers must lie in [0, {max_atomic_number}), "
            f"got {int(z.min())}..{int(z.max())}"
        )
    counts = torch.bincount(data.batch, minlength=data.natoms.shape[0])
    if counts.shape != data.natoms.shape or not torch.equal(counts, data.natoms):
        raise ValueError(f"{model}: batch and natoms disagree")
    if force_input is not None:
        if not force_encoding:
            raise ValueError(f"{model}: force_input given but the model has no force encoding")
        if force_input.shape != (n, 3):
            raise ValueError(
                f"{model}: force_input must be [N, 3] = [{n}, 3], got {tuple(force_input.shape)}"
            )
    if predict_noise and not noise_head:
        raise ValueError(f"{model}: predict_noise needs a model built with noise_head=True")


def check_settings(network: torch.nn.Module, settings: object) -> None:
    """TypeError unless ``settings`` is an instance of the network's ``settings_type`` (a dict or
    keyword arguments are not: build_network builds the settings from a mapping)."""
    expected = type(network).settings_type
    if not isinstance(settings, expected):
        raise TypeError(
            f"{type(network).__name__} takes one {expected.__name__} "
            f"({type(network).__name__}({expected.__name__}(...))), got {type(settings).__name__}"
        )
