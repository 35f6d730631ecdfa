"""NequIP from the ``nequip`` package, unchanged, with DeNS's two additions (an adapter).

NequIP: Batzner et al., "E(3)-equivariant graph neural networks for data-efficient and accurate
interatomic potentials", Nat. Commun. 13, 2453 (2022); the model is nequip 0.19.1's
``nequip.model.NequIPGNNModel``. DeNS: Liao, Smidt, Shuaibi, Das, TMLR 2024, Sec. 3.2.2
(force encoding, Eq. 5) and App. D.2 (an extra equivariant block predicts the noise).

The network is built by nequip's own builder; the adapter adds modules through nequip's extension
point for graph modules, ``SequentialGraphNetwork.insert`` (every ``GraphModuleMixin`` reads and
writes named fields of the data dict, with declared irreps), and wraps the result in nequip's
``GraphModel`` with the force input declared as a model input field:

    type_embed, spharm, edge_norm, bessel_encode, factor       (nequip: scalar node embedding)
    layer0_convnet                                              (nequip: first l > 0 features)
    dens_force_encoding   x += Linear(||f|| Y(f / ||f||))       (DeNS Eq. 5, ``force_encoding``)
    layer1_convnet ... layer{L-2}_convnet                       (nequip)
    dens_noise_head       noise = InteractionBlock(x) -> 1x1o   (DeNS, ``noise_head``)
    layer{L-1}_convnet    scalars only                          (nequip)
    per-atom energy readout, scale/shift, sum;  F = -dE/dpos    (nequip ForceStressOutput)

Where the additions enter, and the hooks nequip lacks:

- The force encoding enters after the first interaction, not with the atom embedding as in
  Equiformer: nequip's node embedding (``NodeTypeEmbed``) outputs scalars only and the first
  layer's input irreps are fixed when the builder makes it, so an l = 1 input before it would
  mean rebuilding that layer with a copy of the builder's arguments. Missing hook: a builder
  argument for extra equivariant node inputs (NodeTypeEmbed's ``categorical_graph_field_embed``
  takes integer per-graph fields only).
- The noise head reads the features entering the last interaction: NequIP's last layer outputs
  scalars only (``NequIPGNNModel`` fixes it, ``FullNequIPGNNModel`` asserts it), so no vector
  feature exists after it. The head is nequip's own ``InteractionBlock`` (tensor product with
  the edge spherical harmonics, radial MLP, self-connection), with a 1x1o output written to a
  field of its own. Missing hook: ``InteractionBlock`` has no ``out_field`` (it always
  overwrites ``node_features``), so the head runs it on a shallow copy of the data dict.
- Both need ``num_layers >= 2``: with one layer no l > 0 feature exists anywhere.
- nequip fixes a model's dtype when it is built (``model_dtype``: modules keep
  ``_output_dtype`` / ``model_dtype`` attributes), so ``model.to(dtype)`` alone leaves them
  behind; ``_apply`` below updates them. Missing hook: a way to cast a built model.
- nequip's builders require its process-wide state (``set_global_state``: default dtype
  float64, every global seed set to 123, TF32 off, a multiprocessing sharing strategy, a
  TorchScript fusion strategy); the adapter initialises it once and restores the process's own
  settings (``_nequip_state``). Missing hook: building a model without global side effects.

Energies and forces are in the engine's normalised units (dens.normalization): per-type scales
1 and shifts 0 (constants), so the network's sum of atomic energies is E'. The graph is every
pair closer than ``r_max`` (dens.models.graph.molecular_graph), rebuilt from the (noisy)
positions; nequip's polynomial cutoff makes the energy smooth where a pair crosses ``r_max``.
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from ase.data import atomic_numbers as ATOMIC_NUMBERS
from e3nn import o3
from nequip.data import AtomicDataDict
from nequip.model import NequIPGNNModel
from nequip.nn import GraphModel, GraphModuleMixin, SequentialGraphNetwork
from nequip.nn.interaction_block import InteractionBlock
from nequip.utils.global_state import global_state_initialized, set_global_state
from torch import Tensor, nn

from dens.data.batch import Batch
from dens.models.common.initialization import draw_base_seed, part_init
from dens.models.common.inputs import check_inputs, check_settings
from dens.models.graph import molecular_graph
from dens.models.nequip.settings import MODEL_DTYPES, NequIPSettings, is_nequip_argument

FORCE_INPUT_KEY = "dens_force_input"
"""Data-dict field of the forces to encode, [N, 3] (1o), zero rows for atoms without one."""
NOISE_KEY = "dens_noise"
"""Data-dict field of the noise head's prediction, [N, 3] (1o)."""

_DTYPES = {name: getattr(torch, name) for name in MODEL_DTYPES}


@contextlib.contextmanager
def _nequip_state() -> Iterator[None]:
    """nequip's global state initialised once (its builders assert it), then the process's own
    restored: torch's default dtype, the torch / numpy / Python random streams, the
    multiprocessing sharing strategy, the TorchScript fusion strategy and the fp32 precision."""
    if global_state_initialized():
        yield
        return
    dtype = torch.get_default_dtype()
    py_state, np_state = random.getstate(), np.random.get_state()
    sharing = torch.multiprocessing.get_sharing_strategy()
    precision = getattr(torch.backends, "fp32_precision", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecations
        fusion = torch.jit.set_fusion_strategy([("STATIC", 2), ("DYNAMIC", 10)])
        try:
            with torch.random.fork_rng(devices=[]):
                set_global_state()
        finally:
            torch.set_default_dtype(dtype)
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.multiprocessing.set_sharing_strategy(sharing)
            torch.jit.set_fusion_strategy(fusion)
            if precision is not None:
                torch.backends.fp32_precision = precision
    yield


class ForceEncoding(GraphModuleMixin, nn.Module):
    """DeNS force encoding (Eq. 5) added to nequip's node features:
    x += Linear(||f|| Y^(l)(f / ||f||), l = 0..lmax), as dens.models.equiformer's ForceEncoding
    (component-normalised Y scaled by ||f|| / sqrt(3), so the l = 1 part is f; NaN-free for
    zero rows; a type-0 bias, so atoms without force input get the encoding of zero forces, as
    the official MD17 code: atomicarchitects/equiformer 64cb7866 nets/equiformer_md17_dens.py:134,
    287-294). Y^(l) has parity (-1)^l; node irreps of the other parity get no path."""

    def __init__(self, irreps_in: dict[str, Any]) -> None:
        super().__init__()
        self._init_irreps(
            irreps_in=irreps_in,
            my_irreps_in={FORCE_INPUT_KEY: "1x1o"},
            required_irreps_in=[AtomicDataDict.NODE_FEATURES_KEY],
        )
        features = self.irreps_in[AtomicDataDict.NODE_FEATURES_KEY]
        self.lmax = features.lmax
        self.irreps_sh = o3.Irreps.spherical_harmonics(self.lmax)
        self.linear = o3.Linear(self.irreps_sh, features, biases=True)

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        forces = data[FORCE_INPUT_KEY]
        sq = forces.pow(2).sum(-1, keepdim=True)
        nonzero = sq > 0
        norm = torch.sqrt(torch.where(nonzero, sq, torch.ones_like(sq)))
        sh = o3.spherical_harmonics(
            self.irreps_sh, forces / norm, normalize=False, normalization="component"
        )
        sh = sh * (torch.where(nonzero, norm, torch.zeros_like(norm)) / math.sqrt(3.0))
        features = data[AtomicDataDict.NODE_FEATURES_KEY]
        data[AtomicDataDict.NODE_FEATURES_KEY] = features + self.linear(sh.to(features.dtype))
        return data


class NoiseHead(GraphModuleMixin, nn.Module):
    """DeNS noise head: one more nequip ``InteractionBlock`` (message passing over the edges,
    self-connection) from the node features to one 1o vector per atom, written to ``NOISE_KEY``;
    the node features are left as they were (the block runs on a shallow copy of the dict)."""

    def __init__(
        self,
        irreps_in: dict[str, Any],
        radial_mlp_depth: int,
        radial_mlp_width: int,
        avg_num_neighbors: float,
        type_names: Sequence[str],
    ) -> None:
        super().__init__()
        self._init_irreps(irreps_in=irreps_in, irreps_out={NOISE_KEY: "1x1o"})
        self.block = InteractionBlock(
            irreps_in=irreps_in,
            irreps_out="1x1o",
            radial_mlp_depth=radial_mlp_depth,
            radial_mlp_width=radial_mlp_width,
            type_names=list(type_names),
            avg_num_neighbors=avg_num_neighbors,
        )

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        data[NOISE_KEY] = self.block(dict(data))[AtomicDataDict.NODE_FEATURES_KEY]
        return data


def builder_arguments(settings: NequIPSettings, seed: int) -> dict[str, Any]:
    """nequip's ``NequIPGNNModel`` arguments: the settings' fields that are nequip's own
    (``is_nequip_argument``) as they are, type_names and a per-l num_features as lists, the
    nonlinearities as nequip's ``convnet_nonlinearity_*`` (nequip's defaults where None), the
    seed (31 bits), and per-type energy scales 1 and shifts 0 (the engine's normalised units)."""
    arguments: dict[str, Any] = {
        item.name: getattr(settings, item.name)
        for item in fields(settings)
        if is_nequip_argument(item)
    }
    features = settings.num_features
    arguments.update(
        seed=seed % 2**31,
        type_names=list(settings.type_names),
        num_features=features if isinstance(features, int) else list(features),
        per_type_energy_scales=1.0,
        per_type_energy_shifts=0.0,
    )
    for kind in ("scalars", "gates"):
        nonlinearity = getattr(settings, f"nonlinearity_{kind}")
        if nonlinearity is not None:
            arguments[f"convnet_nonlinearity_{kind}"] = dict(nonlinearity)
    return arguments


class NequIP(nn.Module):
    """NequIP (nequip's ``NequIPGNNModel``) with optional DeNS force encoding and noise head;
    hyper-parameters: NequIPSettings.

    forward(data, force_input=None, predict_noise=False) -> {"energy": [B], "forces": [N, 3],
    "noise": [N, 3] if predict_noise}; forces are -dE/dpos (``gradient_forces = True``).
    """

    gradient_forces = True
    settings_type = NequIPSettings

    def __init__(self, settings: NequIPSettings) -> None:
        super().__init__()
        check_settings(self, settings)
        self.settings = settings
        numbers = [ATOMIC_NUMBERS[name] for name in settings.type_names]
        self.type_names = list(settings.type_names)
        self.max_atomic_number = max(numbers) + 1
        self.r_max = settings.r_max
        type_of = torch.full((self.max_atomic_number,), -1, dtype=torch.long)
        type_of[torch.tensor(numbers)] = torch.arange(len(numbers))
        self.register_buffer("type_of", type_of, persistent=False)

        seed = draw_base_seed()
        with _nequip_state(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nequip's advice on energy scales: ours are set
            built = NequIPGNNModel(**builder_arguments(settings, seed))
        forces_output = built.model
        energy_model: SequentialGraphNetwork = forces_output.func

        previous = torch.get_default_dtype()
        torch.set_default_dtype(_DTYPES[settings.model_dtype])
        try:
            if settings.force_encoding:
                with part_init(seed, "force_encoding"):
                    encoding = ForceEncoding(energy_model.layer0_convnet.irreps_out)
                energy_model.insert("dens_force_encoding", encoding, after="layer0_convnet")
            if settings.noise_head:
                last = f"layer{settings.num_layers - 1}_convnet"
                with part_init(seed, "noise_head"):
                    head = NoiseHead(
                        getattr(energy_model, last).irreps_in,
                        settings.radial_mlp_depth,
                        settings.radial_mlp_width,
                        settings.avg_num_neighbors,
                        self.type_names,
                    )
                energy_model.insert("dens_noise_head", head, before=last)
            inputs = {FORCE_INPUT_KEY: "1x1o"} if settings.force_encoding else {}
            self.nequip = GraphModel(forces_output, model_input_fields=inputs)
        finally:
            torch.set_default_dtype(previous)
        self.force_encoding = settings.force_encoding
        self.noise_head = settings.noise_head

    def _apply(self, fn: Any, recurse: bool = True) -> NequIP:
        """nn.Module._apply, then nequip's build-time dtypes follow the parameters' dtype."""
        super()._apply(fn, recurse)
        dtype = next(p.dtype for p in self.parameters() if p.is_floating_point())
        for module in self.modules():
            for name in ("_output_dtype", "model_dtype"):
                if isinstance(getattr(module, name, None), torch.dtype):
                    setattr(module, name, dtype)
        return self

    def forward(
        self, data: Batch, force_input: Tensor | None = None, predict_noise: bool = False
    ) -> dict[str, Tensor]:
        """data: Batch with pos [N, 3], atomic_numbers [N], batch [N], natoms [B];
        force_input: [N, 3] forces to encode, or None (zero forces: the encoding's bias) when the
        model has a force encoding."""
        check_inputs(
            "NequIP",
            data,
            self.max_atomic_number,
            force_input,
            self.force_encoding,
            predict_noise,
            self.noise_head,
        )
        types = self.type_of.index_select(0, data.atomic_numbers)
        if bool((types < 0).any()):
            missing = sorted({int(z) for z in data.atomic_numbers[types < 0]})
            raise ValueError(
                f"NequIP: atomic numbers {missing} are not among the model's types "
                f"{self.type_names}"
            )
        grad_enabled = torch.is_grad_enabled()
        with torch.enable_grad():
            pos = data.pos.detach().clone() if not data.pos.requires_grad else data.pos
            src, dst = molecular_graph(data, pos, self.r_max)  # rebuilt from noisy pos
            inputs: dict[str, Tensor] = {
                AtomicDataDict.POSITIONS_KEY: pos,
                AtomicDataDict.EDGE_INDEX_KEY: torch.stack([dst, src]),  # r_src - r_dst
                AtomicDataDict.ATOM_TYPE_KEY: types,
                AtomicDataDict.BATCH_KEY: data.batch,
                AtomicDataDict.NUM_NODES_KEY: data.natoms,
            }
            if self.force_encoding:
                forces = torch.zeros_like(pos) if force_input is None else force_input
                inputs[FORCE_INPUT_KEY] = forces.to(pos.dtype)
            result = self.nequip(inputs)
        out = {
            "energy": result[AtomicDataDict.TOTAL_ENERGY_KEY].view(-1).to(pos.dtype),
            "forces": result[AtomicDataDict.FORCE_KEY],
        }
        if predict_noise:
            out["noise"] = result[NOISE_KEY]
        if not grad_enabled:
            out = {k: v.detach() for k, v in out.items()}
        return out
