"""The NequIP adapter's hyper-parameters (``NequIPSettings``), with the checks that need no
network: the DeNS Table 5 switches, the layers the DeNS modules need, the build dtype and the atom
types. A field marked ``nequip_argument`` is also nequip's ``NequIPGNNModel`` argument of the same
name, which the adapter passes on as it is (dens.models.nequip.network)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ase.data import atomic_numbers as ATOMIC_NUMBERS

MODEL_DTYPES = ("float32", "float64")
"""The dtypes a model may be built in (``model_dtype``)."""


def nequip_argument(default: Any) -> Any:
    """A settings field that nequip's ``NequIPGNNModel`` takes, under the same name and as it is
    (``is_nequip_argument``)."""
    return field(default=default, metadata={"nequip_argument": True})


def is_nequip_argument(item: Any) -> bool:
    """Whether a field of NequIPSettings (``dataclasses.fields``) is passed to nequip as it is."""
    return bool(item.metadata.get("nequip_argument"))


@dataclass(frozen=True)
class NequIPSettings:
    """r_max: cutoff in Å; num_layers: interaction blocks (>= 2 for the DeNS modules); l_max,
    parity, num_features (one or per l), type_embed_num_features (None: num_features[0]),
    radial_mlp_depth / radial_mlp_width, num_bessels, bessel_trainable, polynomial_cutoff_p,
    avg_num_neighbors (normalisation of the edge sums), readout_mlp_hidden_layers_depth /
    readout_mlp_hidden_layers_width (None: the last layer's width),
    convnet_resnet, nonlinearity_scalars / nonlinearity_gates ({"e": ..., "o": ...}): nequip's
    arguments of the same names; type_names: element symbols the model embeds (nequip's atom
    types; an atomic number outside them is refused); model_dtype: "float32" or "float64" at
    build time (``.to(dtype)`` casts it later too); force_encoding / noise_head: the DeNS
    modules (dens.models.nequip.network); attention / layer_norm: the Table 5 switches, which
    NequIP has neither of (both must be False).

    Stored immutable: r_max and avg_num_neighbors as floats, type_names and a per-l num_features
    as tuples, the nonlinearities as copies of the mappings given.

    ValueError unless the switches are off, num_layers >= 2 with a DeNS module, model_dtype is
    one of MODEL_DTYPES and type_names are element symbols (at least one)."""

    r_max: float = nequip_argument(4.0)
    num_layers: int = nequip_argument(4)
    l_max: int = nequip_argument(2)
    parity: bool = nequip_argument(True)
    num_features: int | Sequence[int] = 32
    type_embed_num_features: int | None = nequip_argument(None)
    radial_mlp_depth: int = nequip_argument(2)
    radial_mlp_width: int = nequip_argument(64)
    num_bessels: int = nequip_argument(8)
    bessel_trainable: bool = nequip_argument(False)
    polynomial_cutoff_p: int = nequip_argument(6)
    avg_num_neighbors: float = nequip_argument(1.0)
    readout_mlp_hidden_layers_depth: int = nequip_argument(0)
    readout_mlp_hidden_layers_width: int | None = nequip_argument(None)
    convnet_resnet: bool = nequip_argument(False)
    nonlinearity_scalars: dict[str, str] | None = None
    nonlinearity_gates: dict[str, str] | None = None
    type_names: Sequence[str] = ("H", "C", "N", "O")
    model_dtype: str = nequip_argument("float32")
    force_encoding: bool = False
    noise_head: bool = False
    attention: bool = False
    layer_norm: bool = False

    def __post_init__(self) -> None:
        if self.attention or self.layer_norm:
            raise ValueError(
                "NequIP has no attention or layer normalisation to switch (DeNS Table 5 ablates "
                f"them for Equiformer); got attention={self.attention}, "
                f"layer_norm={self.layer_norm}"
            )
        if (self.force_encoding or self.noise_head) and self.num_layers < 2:
            raise ValueError(
                "the DeNS force encoding and noise head need num_layers >= 2: NequIP's first "
                f"layer reads scalars and its last outputs scalars only; got {self.num_layers}"
            )
        if self.model_dtype not in MODEL_DTYPES:
            raise ValueError(
                f"model_dtype must be one of {sorted(MODEL_DTYPES)}, got {self.model_dtype!r}"
            )
        type_names = tuple(self.type_names)
        unknown = [name for name in type_names if name not in ATOMIC_NUMBERS]
        if unknown or not type_names:
            raise ValueError(f"type_names must be element symbols, got {list(type_names)}")
        features = self.num_features
        stored = {
            "r_max": float(self.r_max),
            "avg_num_neighbors": float(self.avg_num_neighbors),
            "num_features": features if isinstance(features, int) else tuple(features),
            "type_names": type_names,
            "nonlinearity_scalars": _copied(self.nonlinearity_scalars),
            "nonlinearity_gates": _copied(self.nonlinearity_gates),
        }
        for name, value in stored.items():
            object.__setattr__(self, name, value)


def _copied(mapping: dict[str, str] | None) -> dict[str, str] | None:
    return None if mapping is None else dict(mapping)
