"""Load a fairchem 1.x eSCN or a DeNS eSCN checkpoint as ``ESCN``.

A checkpoint is what fairchem 1.x ``BaseTrainer.save`` writes (``state_dict`` with "module."
prefixes, ``config``, ``normalizers``, optional ``ema``), read with
``torch.load(weights_only=True)``. Models understood: ``escn`` (fairchem 1.x escn/escn.py at
commit 31c0963, the official OC20 configs) and ``escn_dens`` (atomicarchitects/DeNS
model/escn/escn_denoising.py: eSCN plus ``force_embedding`` and ``denoising_pos_block``). Their
parameter names are ours. The reference's constant tensors are recomputed by our constructor
and compared where they are saved: the Gaussian centres (``distance_expansion.offset``, once per
layer too), the sphere points and their spherical harmonics (frozen ``nn.Parameter`` s).
Settings without a counterpart (several resolutions, another distance function) and unknown,
missing or misshapen parameters are refused by name. A DeNS model trained without force encoding
still adds its encoder's l = 0 bias to every atom; it is folded into the atom embedding.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dens.models.escn.network import ESCN
from dens.models.escn.settings import ESCNSettings
from dens.models.so3 import fairchem_import as fairchem
from dens.models.so3.fairchem_import import CheckpointImportError

MODELS = {"escn", "escn_dens"}
# reference config key -> our constructor argument, with fairchem 1.x eSCN's defaults
ARGUMENTS = {
    "num_layers": ("num_layers", 8),
    "sphere_channels": ("sphere_channels", 128),
    "hidden_channels": ("hidden_channels", 256),
    "edge_channels": ("edge_channels", 128),
    "num_sphere_samples": ("num_sphere_samples", 128),
    "resolution": ("grid_resolution", None),
    "distance_resolution": ("distance_resolution", 0.02),
    "basis_width_scalar": ("basis_width", 1.0),
    "cutoff": ("cutoff", 8.0),
    "max_neighbors": ("max_neighbors", 40),
    "max_num_elements": ("max_num_elements", 90),
}
# settings the reference allows but only these values map onto our model (with its defaults)
REQUIRED = {
    "use_pbc": (True, True),
    "use_pbc_single": (False, False),
    "regress_forces": (True, True),
    "distance_function": ("gaussian", "gaussian"),
}
# constants saved in a reference state_dict: last key component -> compared or skipped
COMPARED = {"offset", "sphere_points", "0"}  # "0": sphharm_weights.0
SKIPPED = {"expand_index"}  # SO3_LinearV2's index table


class _Constants:
    """Reference constants found in the state_dict, to compare with ours."""

    def __init__(self) -> None:
        self.offsets: list[tuple[str, Tensor]] = []
        self.sphere_points: Tensor | None = None
        self.harmonics: Tensor | None = None


def load_fairchem_checkpoint(
    path: str | Path, dtype: torch.dtype = torch.float32, use_ema: bool = True
) -> tuple[ESCN, dict[str, Any]]:
    """The model of a fairchem 1.x eSCN / DeNS eSCN checkpoint (eval mode, ``dtype``) and
    ``info``: ``config``, ``normalizers`` ({"energy": {"mean", "std"}, "forces": ..., as floats}),
    ``ema`` (whether EMA weights were loaded), ``hyperparameters`` (our constructor's
    arguments). Raises CheckpointImportError naming what does not map."""
    checkpoint, config = fairchem.read_checkpoint(path)
    arguments = model_arguments(config["model"])
    state, ema = fairchem.checkpoint_state(checkpoint, use_ema, tracked_parameters)
    state, constants = split_constants(state)
    fairchem.fold_unused_force_encoding(state, arguments)
    model = ESCN(ESCNSettings(**arguments))
    compare_constants(model, constants)
    fairchem.load_exactly(model, state, "eSCN")
    info = fairchem.import_info(checkpoint, config, arguments, ema)
    return model.to(dtype).eval(), info


def model_arguments(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """Our constructor's arguments from config['model'] (``escn`` or ``escn_dens``)."""
    settings = dict(model_config)
    name = settings.pop("name", None) or settings.pop("model", None)
    if name not in MODELS:
        raise CheckpointImportError(f"model {name!r}: only {sorted(MODELS)} map onto eSCN")
    lmax, mmax, switches = fairchem.reference_arguments(
        settings, REQUIRED, "eSCN", name == "escn_dens"
    )
    arguments = {ours: settings.get(key, default) for key, (ours, default) in ARGUMENTS.items()}
    arguments.update(
        lmax=lmax,
        mmax=mmax,
        cutoff=float(arguments["cutoff"]),
        distance_resolution=float(arguments["distance_resolution"]),
        basis_width=float(arguments["basis_width"]),
        **switches,
    )
    return arguments


def split_constants(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], _Constants]:
    """Parameters (reference names = ours) and the reference's saved constants."""
    params, constants = {}, _Constants()
    for key, value in state.items():
        if key == "sphere_points":
            constants.sphere_points = value
        elif key == "sphharm_weights.0":
            constants.harmonics = value
        elif key.endswith("distance_expansion.offset"):
            constants.offsets.append((key, value))
        elif key.rsplit(".", 1)[-1] not in SKIPPED:
            params[key] = value
    return params, constants


def tracked_parameters(state: Mapping[str, Tensor]) -> list[str]:
    """The parameters fairchem's EMA tracks, in order: the trainable ones, the state_dict's
    parameters without the saved constants."""
    return list(split_constants(state)[0])


def compare_constants(model: ESCN, constants: _Constants) -> None:
    """The saved Gaussian centres, sphere points and their harmonics must be ours: they fix the
    cutoff, the basis and the output heads. Ours are computed in float64; the reference
    computes them in the default dtype, and its float32 sphere points (angles 2 pi i / golden
    ratio in float32) are off by up to ~3e-5, hence the tolerance."""
    checks = [(key, value, model.distance_expansion.offset) for key, value in constants.offsets]
    if constants.sphere_points is not None:
        checks.append(("sphere_points", constants.sphere_points, model.sampler.points))
    if constants.harmonics is not None:
        checks.append(("sphharm_weights.0", constants.harmonics, model.sampler.harmonics))
    for key, theirs, ours in checks:
        if theirs.shape != ours.shape or not torch.allclose(
            theirs.double(), ours.double(), rtol=1e-4, atol=1e-4
        ):
            raise CheckpointImportError(
                f"{key} differs from ours (cutoff, basis or sphere points?)"
            )
