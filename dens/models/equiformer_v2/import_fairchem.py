"""Load a fairchem 1.x EquiformerV2 or EquiformerV2-DeNS checkpoint as ``EquiformerV2``.

A checkpoint is what fairchem 1.x or ocp ``BaseTrainer.save`` writes: a dict with ``state_dict``
(keys prefixed "module." by DistributedDataParallel, possibly twice), ``config``
(``config["model"]`` names the model and its arguments; ocp, as for the published DeNS
checkpoints: the name, with the arguments in ``config["model_attributes"]``), ``normalizers``
and, when trained with EMA, ``ema`` (``shadow_params``: the averaged parameters, in the model's
parameter order). It is read with
``torch.load(weights_only=True)``: tensors and plain containers only, no code from the file runs.

Models understood (fairchem commit 31c0963 and the official DeNS code):

- ``equiformer_v2`` / ``equiformer_v2_dens`` (one module: ``energy_block``, ``force_block`` and,
  for DeNS, ``force_embedding``, ``denoising_pos_block``), whose parameter names are ours;
- ``hydra`` with backbone ``equiformer_v2_backbone`` or ``equiformer_v2_dens_backbone`` and
  heads ``equiformerV2_scalar_head`` / ``equiformer_v2_energy_head`` / ``eqV2_DeNS_scalar_head``
  (energy) and ``equiformerV2_vector_head`` / ``equiformer_v2_force_head`` /
  ``eqV2_DeNS_vector_head`` (forces, DeNS noise), mapped by ``KEY_TABLE``; each also by its
  class path (``CLASS_PATHS``, as the OMat24 configs name them).

Refused in one line naming them: other heads (the OMat24 models' rank-2 stress head), other
backbones or models, ``regress_forces: False`` (energy-only IS2RE models), and fairchem 1.x
``elementrefs`` (linear references subtracted from the labels; not mapped).

Only the official architecture settings map (``REQUIRED``: layer_norm_sh, grid-MLP feed-forward,
separable S2 activation, ...); anything else, an unknown or missing parameter or a shape that
differs is refused with the offending names. Constant buffers of the reference (Wigner/grid
tables, index maps) are recomputed by our constructor, except the distance basis centres, which
are compared. A DeNS backbone trained without force encoding (``use_force_encoding: False``)
still adds its encoder's l = 0 bias to every atom; it is folded into the atom embedding. The
frozen per-element energy references of ``load_energy_lin_ref`` models (fairchem's OC22
EquiformerV2) are returned in ``info``, not added by the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dens.models.equiformer_v2.network import EquiformerV2
from dens.models.equiformer_v2.settings import AVG_DEGREE, AVG_NUM_NODES, EquiformerV2Settings
from dens.models.so3 import fairchem_import as fairchem
from dens.models.so3.fairchem_import import CheckpointImportError

# reference config key -> our constructor argument (same meaning)
SAME_ARGUMENTS = (
    "num_layers",
    "sphere_channels",
    "attn_hidden_channels",
    "num_heads",
    "attn_alpha_channels",
    "attn_value_channels",
    "ffn_hidden_channels",
    "edge_channels",
    "grid_resolution",
    "max_neighbors",
    "max_num_elements",
    "alpha_drop",
    "drop_path_rate",
    "proj_drop",
    "weight_init",
    "enforce_max_neighbors_strictly",
)
# settings the reference allows but only these values map onto our model: (value, fairchem 1.x's
# constructor default)
REQUIRED = {
    "use_pbc": (True, True),
    "norm_type": ("layer_norm_sh", "rms_norm_sh"),
    "use_grid_mlp": (True, False),
    "use_sep_s2_act": (True, True),
    "use_gate_act": (False, False),
    "use_s2_act_attn": (False, False),
    "use_attn_renorm": (True, True),
    "use_m_share_rad": (False, False),
    "use_atom_edge_embedding": (True, True),
    "share_atom_edge_embedding": (False, False),
    "distance_function": ("gaussian", "gaussian"),
    "use_noise_schedule_sigma_encoding": (False, False),
}
REFERENCE_DISTANCE_BASIS = 600  # fairchem 1.x ignores num_distance_basis and uses 600 Gaussians
# last key components of the reference's constant buffers (recomputed by our constructor)
REFERENCE_BUFFERS = {
    "offset",
    "to_grid_mat",
    "from_grid_mat",
    "l_harmonic",
    "m_harmonic",
    "m_complex",
    "res_size",
    "to_m",
    "m_size",
    "expand_index",
    "balance_degree_weight",
}
# hydra head module -> {block name in the head: our module}; the deprecated
# equiformer_v2_{energy,force}_head subclass the scalar / vector heads (fairchem 1.x
# equiformer_v2.py lines 62-83; the OMat24 eqV2_31M_mptrj config names them)
KEY_TABLE = {
    "equiformerV2_scalar_head": {"energy_block": "energy_block"},
    "equiformer_v2_energy_head": {"energy_block": "energy_block"},
    "eqV2_DeNS_scalar_head": {"scalar_block": "energy_block"},
    "equiformerV2_vector_head": {"force_block": "force_block"},
    "equiformer_v2_force_head": {"force_block": "force_block"},
    "eqV2_DeNS_vector_head": {
        "vector_block": "force_block",
        "denoising_pos_block": "denoising_pos_block",
    },
}
BACKBONES = {"equiformer_v2_backbone", "equiformer_v2_dens_backbone"}
MONOLITHIC = {"equiformer_v2", "equiformer_v2_dens"}
# Class paths a config may name instead (fairchem 1.x registry.get_class resolves a dotted name
# by import, common/registry.py lines 266-278; the OMat24 DeNS configs do) -> the registered
# name of the same class (31c0963: equiformer_v2.py, equiformer_v2_dens.py, heads/).
_EQV2 = "fairchem.core.models.equiformer_v2."
CLASS_PATHS = {
    _EQV2 + "equiformer_v2.EquiformerV2Backbone": "equiformer_v2_backbone",
    _EQV2 + "equiformer_v2_dens.EqV2DeNSBackbone": "equiformer_v2_dens_backbone",
    _EQV2 + "heads.scalar.EqV2ScalarHead": "equiformerV2_scalar_head",
    _EQV2 + "heads.EqV2ScalarHead": "equiformerV2_scalar_head",
    _EQV2 + "equiformer_v2.EquiformerV2EnergyHead": "equiformer_v2_energy_head",
    _EQV2 + "heads.vector.EqV2VectorHead": "equiformerV2_vector_head",
    _EQV2 + "heads.EqV2VectorHead": "equiformerV2_vector_head",
    _EQV2 + "equiformer_v2.EquiformerV2ForceHead": "equiformer_v2_force_head",
    _EQV2 + "equiformer_v2_dens.DeNSScalarHead": "eqV2_DeNS_scalar_head",
    _EQV2 + "equiformer_v2_dens.DeNSVectorHead": "eqV2_DeNS_vector_head",
    _EQV2 + "equiformer_v2_deprecated.EquiformerV2": "equiformer_v2",
}
# heads our model has no counterpart for, by registered name and class path: what they predict
UNMAPPED_HEADS = {
    "rank2_symmetric_head": "a rank-2 (stress) head",
    _EQV2 + "heads.rank2.Rank2SymmetricTensorHead": "a rank-2 (stress) head",
    _EQV2 + "heads.Rank2SymmetricTensorHead": "a rank-2 (stress) head",
    "dens_rank2_symmetric_head": "a rank-2 (stress) head",
    _EQV2 + "equiformer_v2_dens.DeNSRank2Head": "a rank-2 (stress) head",
}


def registered_name(name: Any) -> Any:
    """The registered name of a model, backbone or head a config names by class path."""
    return CLASS_PATHS.get(name, name) if isinstance(name, str) else name


def load_fairchem_checkpoint(
    path: str | Path, dtype: torch.dtype = torch.float32, use_ema: bool = True
) -> tuple[EquiformerV2, dict[str, Any]]:
    """The model of a fairchem 1.x checkpoint (eval mode, ``dtype``) and ``info``: ``config``
    (the checkpoint's), ``normalizers`` ({"energy": {"mean", "std"}, "forces": {...},
    "denoising_pos_target": {...} if present}, floats), ``ema`` (whether EMA weights were
    loaded), ``hyperparameters`` (our constructor's arguments), ``energy_lin_ref`` ([elements]
    per-element references E_ref / E_std of ``load_energy_lin_ref`` models such as fairchem's OC22
    EquiformerV2, or None) and ``use_energy_lin_ref``: the reference adds sum_i energy_lin_ref[Z_i]
    to its normalised energy at prediction when set; our model never does, the caller may."""
    checkpoint, config = fairchem.read_checkpoint(path)
    arguments, heads = model_arguments(config["model"])
    if any(checkpoint.get("elementrefs") or {}):
        raise CheckpointImportError(
            f"{path}: elementrefs {sorted(checkpoint['elementrefs'])} (fairchem 1.x linear "
            "references subtracted from the training labels) are not mapped"
        )
    state, ema = fairchem.checkpoint_state(checkpoint, use_ema, tracked_parameters)
    mapped, origin = map_keys(state, heads)
    energy_lin_ref = mapped.pop("energy_lin_ref", None)
    fairchem.fold_unused_force_encoding(mapped, arguments)
    model = EquiformerV2(EquiformerV2Settings(**arguments))
    load_exactly_with_offset(model, mapped, origin)
    model = model.to(dtype).eval()
    info = {
        **fairchem.import_info(checkpoint, config, arguments, ema),
        "energy_lin_ref": energy_lin_ref,
        "use_energy_lin_ref": bool(model_settings(config["model"]).get("use_energy_lin_ref")),
    }
    return model, info


def model_settings(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone's (hydra) or the model's own constructor settings of config['model']."""
    if (model_config.get("name") or model_config.get("model")) == "hydra":
        return dict(model_config.get("backbone") or {})
    return dict(model_config)


FAIRCHEM_DEFAULTS = {
    "num_layers": 12,
    "sphere_channels": 128,
    "attn_hidden_channels": 128,
    "num_heads": 8,
    "attn_alpha_channels": 32,
    "attn_value_channels": 16,
    "ffn_hidden_channels": 512,
    "edge_channels": 128,
    "max_neighbors": 500,
    "max_num_elements": 90,
    "alpha_drop": 0.1,
    "drop_path_rate": 0.05,
    "proj_drop": 0.0,
    "weight_init": "normal",
    "enforce_max_neighbors_strictly": True,
}
"""fairchem 1.x's EquiformerV2 defaults of the SAME_ARGUMENTS a config may leave out."""


def _hydra_heads(model_config: Mapping[str, Any]) -> dict[str, str]:
    """The heads {name: registered module} of a hydra config, each one we map and summed."""
    heads = {head: spec.get("module") for head, spec in (model_config.get("heads") or {}).items()}
    unknown = {
        head: module for head, module in heads.items() if registered_name(module) not in KEY_TABLE
    }
    if unknown:
        raise CheckpointImportError(
            "hydra "
            + "; ".join(
                f"head {head!r} ({module}: {UNMAPPED_HEADS.get(module, 'an unknown head')})"
                for head, module in unknown.items()
            )
            + " does not map: our EquiformerV2 predicts energy, forces and the DeNS noise "
            f"(maps heads: {', '.join(sorted(KEY_TABLE))} or their class paths)"
        )
    heads = {head: registered_name(module) for head, module in heads.items()}
    for head, spec in model_config["heads"].items():
        if spec.get("reduce", "sum") != "sum":
            raise CheckpointImportError(f"head {head!r}: reduce {spec['reduce']!r} (only sum)")
    return heads


def _model_settings_and_heads(
    model_config: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, str], bool]:
    """The model settings (a hydra model's backbone's), the hydra heads and whether it is a
    DeNS model."""
    name = registered_name(model_config.get("name") or model_config.get("model"))
    if name == "hydra":
        backbone = dict(model_config.get("backbone") or {})
        given = backbone.pop("model", None)
        kind = registered_name(given)
        if kind not in BACKBONES:
            raise CheckpointImportError(
                f"hydra backbone {given!r} does not map (maps: {', '.join(sorted(BACKBONES))} "
                "or their class paths)"
            )
        return backbone, _hydra_heads(model_config), kind == "equiformer_v2_dens_backbone"
    if name in MONOLITHIC:
        return dict(model_config), {}, name == "equiformer_v2_dens"
    raise CheckpointImportError(
        f"model {name!r}: only {sorted(MONOLITHIC)} or hydra with {sorted(BACKBONES)} map"
    )


def model_arguments(model_config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Our constructor's arguments from config['model'], and the hydra heads {name: module}."""
    settings, heads, dens = _model_settings_and_heads(model_config)
    if not settings.get("regress_forces", True):
        raise CheckpointImportError(
            "regress_forces False (an energy-only model without a force head, e.g. an IS2RE "
            "one) does not map: our EquiformerV2 always predicts forces"
        )
    if settings.get("grid_resolution") is None:
        raise CheckpointImportError(
            "grid_resolution None (fairchem's non-square grid) does not map"
        )
    lmax, mmax, switches = fairchem.reference_arguments(settings, REQUIRED, "EquiformerV2", dens)
    arguments = {key: settings.get(key, FAIRCHEM_DEFAULTS.get(key)) for key in SAME_ARGUMENTS}
    arguments.update(
        lmax=lmax,
        mmax=mmax,
        cutoff=float(settings.get("max_radius", 5.0)),
        num_distance_basis=REFERENCE_DISTANCE_BASIS,
        avg_num_nodes=float(settings.get("avg_num_nodes") or AVG_NUM_NODES),
        avg_degree=float(settings.get("avg_degree") or AVG_DEGREE),
        **switches,
    )
    return arguments, heads


def is_reference_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in REFERENCE_BUFFERS


def tracked_parameters(state: Mapping[str, Tensor]) -> list[str]:
    """The parameters fairchem's EMA tracks, in order: the state_dict without buffers and the
    frozen ``energy_lin_ref``."""
    return [
        key
        for key in state
        if not is_reference_buffer(key) and key.rsplit(".", 1)[-1] != "energy_lin_ref"
    ]


def map_keys(
    state: Mapping[str, Tensor], heads: Mapping[str, str]
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Reference parameter names -> ours, and ours -> the checkpoint's (for messages); reference
    buffers are left out, except the distance basis centres (kept to be compared)."""
    mapped, origin = {}, {}
    for key, value in state.items():
        ours = rename(key, heads)
        if ours == "distance_expansion.offset" or not is_reference_buffer(key):
            mapped[ours], origin[ours] = value, key
    return mapped, origin


def rename(key: str, heads: Mapping[str, str]) -> str:
    if key.startswith("backbone."):
        return key[len("backbone.") :]
    if key.startswith("output_heads."):
        _, head, block, rest = key.split(".", 3)
        ours = KEY_TABLE.get(heads.get(head, ""), {}).get(block)
        return f"{ours}.{rest}" if ours else key
    return key


def load_exactly_with_offset(
    model: EquiformerV2, state: dict[str, Tensor], origin: Mapping[str, str]
) -> None:
    """Load every parameter; refuse extra, missing or differently shaped ones by name (the
    checkpoint's names for its keys, ours for missing ones)."""
    offset = state.pop("distance_expansion.offset", None)
    if offset is not None and not torch.allclose(
        offset.double(), model.distance_expansion.offset.double(), atol=1e-5
    ):
        raise CheckpointImportError("distance_expansion.offset differs from ours (cutoff?)")
    fairchem.load_exactly(model, state, "EquiformerV2", origin)
