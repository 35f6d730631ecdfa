"""Parameters of the official Equiformer MD17 models -> this package's ``Equiformer``.

Official code: atomicarchitects/equiformer at 64cb7866, ``nets/graph_attention_transformer_md17.py``
(``GraphAttentionTransformerMD17``, the MD17 baselines) and ``nets/equiformer_md17_dens.py``
(``Equiformer_MD17_DeNS``). Its layers are e3nn tensor products with flat weights; ours hold
one matrix per degree. Every map below is a reshape or a permutation, so it converts the
gradients of the parameters (keyed like the parameters) exactly as it converts the
parameters.

- ``LinearRS`` / ``FullyConnectedTensorProductRescale`` with the constant ``1x0e`` second
  input (nets/tensor_product_rescale.py:144-174): ``tp.weight`` holds, per input irrep in
  order, a [mul_in, 1, mul_out] block into the output irrep of the same degree; a degree's
  blocks stacked are our [C_in, C_out] matrix. ``bias.0`` is the type-0 bias.
- ``DepthwiseTensorProduct`` (nets/graph_attention_transformer.py:158-182): its per-edge
  (radial MLP) or internal weights are laid out by input degree l1, then edge degree l2, then
  output degree lo (e3nn's instruction order); ours by l1, then lo, then l2
  (depthwise_tensor_product.py). The rows of the radial MLP's last layer and its offset
  (nets/radial_func.py) are permuted accordingly; the output channels are in the same order.
- ``EquivariantLayerNormV2`` (nets/layer_norm.py:62-152): ``affine_weight`` [sum_l C_l] in
  degree order, ``affine_bias`` [C_0].
- ``NodeEmbeddingNetwork``: a LinearRS of the one-hot atom type, [max_atom_type, C_0].
- ``GraphAttention`` with non-linear messages (nets/graph_attention_transformer.py:418-545):
  merge_src/merge_dst -> merge_src/merge_dst, sep_act.dtp_rad -> radial, sep_act.lin ->
  linear_gate, sep_alpha -> linear_alpha, sep_value.dtp -> dtp_value, sep_value.lin ->
  linear_value, alpha_dot [1, H, k] -> alpha_dot [H, k], proj -> proj.

Buffers (``rbf.means``, ``rbf.betas``, e3nn's ``output_mask`` and Wigner-3j tables) are
constants both models compute; they are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from e3nn import o3
from torch import Tensor

from dens.models.equiformer.depthwise_tensor_product import DepthwiseTensorProduct
from dens.models.equiformer.equivariant_layer_norm import EquivariantLayerNorm
from dens.models.equiformer.graph_attention import GraphAttention
from dens.models.equiformer.network import Equiformer
from dens.models.equiformer.radial_basis import RadialMLP
from dens.models.equiformer.so3_linear import SO3Linear

_SKIPPED_SUFFIXES = ("output_mask", "rbf.means", "rbf.betas")


class _Converter:
    def __init__(self, official: Mapping[str, Tensor]) -> None:
        self.official = official
        self.used: set[str] = set()
        self.out: dict[str, Tensor] = {}

    def take(self, key: str) -> Tensor:
        if key not in self.official:
            raise KeyError(f"official state lacks {key!r}")
        self.used.add(key)
        return self.official[key]

    def linear(self, ours: str, module: SO3Linear, theirs: str, has_bias: bool = True) -> None:
        flat = self.take(f"{theirs}.tp.weight")
        start = 0
        for deg in sorted(module.weight, key=int):
            c_in, c_out = module.weight[deg].shape
            block = flat[start : start + c_in * c_out]
            self.out[f"{ours}.weight.{deg}"] = block.reshape(c_in, c_out)
            start += c_in * c_out
        if start != flat.numel():
            raise ValueError(f"{theirs}.tp.weight has {flat.numel()} entries, expected {start}")
        if module.bias is not None:
            if not has_bias:
                raise ValueError(f"{ours} has a bias that {theirs} lacks")
            self.out[f"{ours}.bias"] = self.take(f"{theirs}.bias.0")

    def layer_norm(self, ours: str, module: EquivariantLayerNorm, theirs: str) -> None:
        weights = torch.split(self.take(f"{theirs}.affine_weight"), list(module.channels))
        for deg, w in enumerate(weights):
            self.out[f"{ours}.weight.{deg}"] = w
        self.out[f"{ours}.bias"] = self.take(f"{theirs}.affine_bias")

    def radial(
        self, ours: str, module: RadialMLP, theirs: str, dtp: DepthwiseTensorProduct
    ) -> None:
        perm = dtp_weight_permutation(dtp)
        for name, _ in module.named_parameters():
            value = self.take(f"{theirs}.{name}")
            last = name in ("offset", f"net.{len(module.net) - 1}.weight")
            self.out[f"{ours}.{name}"] = value.index_select(0, perm) if last else value

    def attention(self, ours: str, module: GraphAttention, theirs: str) -> None:
        self.linear(f"{ours}.merge_src", module.merge_src, f"{theirs}.merge_src")
        self.linear(f"{ours}.merge_dst", module.merge_dst, f"{theirs}.merge_dst", False)
        self.radial(f"{ours}.radial", module.radial, f"{theirs}.sep_act.dtp_rad", module.dtp)
        self.linear(f"{ours}.linear_gate", module.linear_gate, f"{theirs}.sep_act.lin")
        internal = self.take(f"{theirs}.sep_value.dtp.tp.weight")
        perm = dtp_weight_permutation(module.dtp_value)
        self.out[f"{ours}.dtp_value.weight"] = internal.index_select(0, perm)
        self.linear(f"{ours}.linear_value", module.linear_value, f"{theirs}.sep_value.lin")
        if module.attention:
            self.linear(f"{ours}.linear_alpha", module.linear_alpha, f"{theirs}.sep_alpha")
            alpha_dot = self.take(f"{theirs}.alpha_dot")
            self.out[f"{ours}.alpha_dot"] = alpha_dot.reshape(module.alpha_dot.shape)
        self.linear(f"{ours}.proj", module.proj, f"{theirs}.proj")


def official_model_kwargs(config: Mapping[str, Any], dens: bool) -> dict[str, Any]:
    """Our ``EquiformerSettings`` fields for an official MD17 model's constructor arguments (the
    ``model`` entry of md17/configs/equiformer_dens/*.yml for ``Equiformer_MD17_DeNS``,
    ``dens=True``; the arguments of ``GraphAttentionTransformerMD17``, ``dens=False``).

    The atom-type table has the official ``_MAX_ATOM_TYPE = 64`` rows (``irreps_in`` is unused
    there) and the official MD17 normalisation constants (settings.py). Raises ValueError on a
    setting this implementation does not have."""
    required = {
        "rescale_degree": False,
        "nonlinear_message": True,
        "norm_layer": "layer",
        "irreps_node_attr": "1x0e",
    }
    for key, value in required.items():
        if config.get(key, value) != value:
            raise ValueError(f"official {key}={config[key]!r}: only {value!r} is implemented")
    lmax_sh = o3.Irreps(config["irreps_sh"]).lmax
    if o3.Irreps(config["irreps_sh"]) != o3.Irreps([(1, (deg, 1)) for deg in range(lmax_sh + 1)]):
        raise ValueError(f"irreps_sh {config['irreps_sh']!r} is not 1x0e+1x1e+...")
    kwargs = {
        key: config[key]
        for key in (
            "irreps_node_embedding",
            "num_layers",
            "max_radius",
            "number_of_basis",
            "basis_type",
            "irreps_head",
            "num_heads",
            "irreps_pre_attn",
            "irreps_mlp_mid",
            "alpha_drop",
            "proj_drop",
            "out_drop",
            "drop_path_rate",
        )
        if key in config
    }
    kwargs.update(
        lmax_sh=lmax_sh,
        fc_neurons=list(config["fc_neurons"]),
        irreps_feature=config["irreps_feature"],
        irreps_feature_dens=config["irreps_feature"] if dens else None,
        force_encoding=dens and bool(config.get("use_force_encoding", True)),
        noise_head=dens,
        max_atomic_number=64,
    )
    if dens and not kwargs["force_encoding"]:
        raise ValueError("use_force_encoding=False also masks energies: not implemented")
    return kwargs


def dtp_weight_permutation(dtp: DepthwiseTensorProduct) -> Tensor:
    """Index [weight_numel]: our weight = official weight[index] (module notes)."""
    triples = [(l1, l2, lo) for lo, pairs in enumerate(dtp.paths) for l1, l2 in pairs]
    size = {t: dtp.channels_in[t[0]] for t in triples}
    start, offset = {}, 0
    for t in sorted(triples):  # official: l1, l2, lo
        start[t] = offset
        offset += size[t]
    ours = sorted(triples, key=lambda t: (t[0], t[2], t[1]))  # ours: l1, lo, l2
    return torch.cat([torch.arange(start[t], start[t] + size[t]) for t in ours])


def import_official_state_dict(
    official: Mapping[str, Tensor], model: Equiformer
) -> dict[str, Tensor]:
    """Our state dict (parameters) for ``model`` from an official model's state dict or named
    parameters (or their gradients, keyed alike).

    ``model`` must be built with the official model's sizes: ``Equiformer_MD17_DeNS`` ->
    ``force_encoding=True, noise_head=True`` with ``irreps_feature_dens`` its
    ``irreps_feature``; ``GraphAttentionTransformerMD17`` -> no DeNS modules. Raises KeyError /
    ValueError on a missing, unused or misshapen official entry.
    """
    conv = _Converter(official)
    emb = conv.take("atom_embed.atom_type_lin.tp.weight")
    conv.out["atom_embedding.weight"] = emb.reshape(model.atom_embedding.weight.shape)
    conv.out["atom_embedding.bias"] = conv.take("atom_embed.atom_type_lin.bias.0")
    ede = model.edge_degree_embedding
    conv.linear("edge_degree_embedding.constant", ede.constant, "edge_deg_embed.exp")
    conv.radial("edge_degree_embedding.radial", ede.radial, "edge_deg_embed.rad", ede.dtp)
    conv.linear("edge_degree_embedding.proj", ede.proj, "edge_deg_embed.proj")
    if model.force_encoding is not None:
        conv.linear("force_encoding.linear", model.force_encoding.linear, "force_embed")
    for i, block in enumerate(model.blocks):
        ours, theirs = f"blocks.{i}", f"blocks.{i}"
        if block.norm_1 is None or block.norm_2 is None:
            raise ValueError("the official MD17 models have layer norms (norm_layer='layer')")
        conv.layer_norm(f"{ours}.norm_1", block.norm_1, f"{theirs}.norm_1")
        conv.attention(f"{ours}.attn", block.attn, f"{theirs}.ga")
        conv.layer_norm(f"{ours}.norm_2", block.norm_2, f"{theirs}.norm_2")
        conv.linear(f"{ours}.ffn.linear_1", block.ffn.linear_1, f"{theirs}.ffn.fctp_1")
        conv.linear(f"{ours}.ffn.linear_2", block.ffn.linear_2, f"{theirs}.ffn.fctp_2")
        if block.shortcut is not None:
            conv.linear(f"{ours}.shortcut", block.shortcut, f"{theirs}.ffn_shortcut")
    if model.norm is None:
        raise ValueError("the official MD17 models have a final layer norm")
    conv.layer_norm("norm", model.norm, "norm")
    head = "energy_head" if "energy_head.0.tp.weight" in official else "head"
    conv.linear("energy_hidden", model.energy_hidden, f"{head}.0")
    conv.linear("energy_out", model.energy_out, f"{head}.2")
    if model.noise_head is not None:
        conv.attention("noise_head", model.noise_head, "denoising_pos_head")

    unused = sorted(
        key
        for key in set(official) - conv.used
        if not key.endswith(_SKIPPED_SUFFIXES) and "_w3j_" not in key and official[key].numel()
    )
    if unused:
        raise ValueError(f"official entries without a counterpart here: {unused}")
    expected = dict(model.named_parameters())
    missing = sorted(set(expected) - set(conv.out))
    if missing:
        raise KeyError(f"no official entry for {missing}")
    for key, value in conv.out.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{key}: {tuple(value.shape)} != {tuple(expected[key].shape)}")
    return conv.out
