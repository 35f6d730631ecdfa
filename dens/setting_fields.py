"""Settings as frozen dataclasses whose fields state their default and range once.

``setting`` declares a field: its default (none: required), its key in the configuration
(default: the field's name) and its range in JSON Schema's words (minimum, exclusiveMinimum,
maximum, exclusiveMaximum; of each item of a tuple, of each value of a mapping).
``check_fields``, called from a dataclass's ``__post_init__``, enforces them with the field's
type (a Literal's choices, bool, int, a finite float, str, a tuple, a Mapping) and raises
dens.errors.ConfigError naming the key. Used by the DeNS and loss settings
(dens.denoising), the training settings (dens.training.settings), the relaxation
(dens.relaxation.lbfgs.LBFGSSettings), the simulations (dens.simulate.SimulationSettings), the
model families' settings (dens.models) and the rehearsal's archive volume.
"""

from __future__ import annotations

import math
import operator
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, field, fields
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

from dens.errors import ConfigError

_LIMITS = {
    "minimum": (operator.ge, ">="),
    "exclusiveMinimum": (operator.gt, ">"),
    "maximum": (operator.le, "<="),
    "exclusiveMaximum": (operator.lt, "<"),
}


def setting(default: Any = MISSING, *, key: str | None = None, **bounds: float) -> Any:
    """A settings field: its default (none: required), its key in the experiment (default: the
    field's name) and its range (``_LIMITS``' names, as the JSON schema writes them)."""
    unknown = sorted(set(bounds) - set(_LIMITS))
    if unknown:
        raise TypeError(f"unknown bound(s) {unknown}")
    return field(default=default, metadata={"key": key, "bounds": bounds})


def config_key(item: Any) -> str:
    """The key of a settings field in the experiment's mapping."""
    return item.metadata.get("key") or item.name


def check_fields(settings: Any, section: str) -> None:
    """Check every field of a settings dataclass against its type and range (``setting``);
    an int given for a float becomes a float and a sequence for a tuple a tuple."""
    hints = typing.get_type_hints(type(settings))
    for item in fields(settings):
        where = f"{section}.{config_key(item)}" if section else config_key(item)
        bounds = item.metadata.get("bounds", {})
        value = _checked(where, getattr(settings, item.name), hints[item.name], bounds)
        object.__setattr__(settings, item.name, value)


def _checked(where: str, value: Any, hint: Any, bounds: Mapping[str, float]) -> Any:
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    if value is None:
        if NoneType in options:
            return None
        raise ConfigError(f"{where} must be set, got None")
    (kind,) = [option for option in options if option is not NoneType]
    if get_origin(kind) is Literal:
        if value not in get_args(kind):
            raise ConfigError(f"{where} must be one of {list(get_args(kind))}, got {value!r}")
        return value
    if get_origin(kind) is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        item_kind = get_args(kind)[1]
        return {k: _checked(f"{where}.{k}", v, item_kind, bounds) for k, v in value.items()}
    if get_origin(kind) is tuple:
        if isinstance(value, str | Mapping) or not isinstance(value, Sequence):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item_kind = get_args(kind)[0]
        return tuple(_checked(f"{where}[{k}]", v, item_kind, bounds) for k, v in enumerate(value))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be of type {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    for name, limit in bounds.items():
        holds, sign = _LIMITS[name]
        if not holds(value, limit):
            raise ConfigError(f"{where} must be {sign} {limit}, got {value!r}")
    return value


def from_mapping(cls: Any, values: Mapping[str, Any], section: str) -> Any:
    """``cls`` from the keys of ``values`` that name its fields (``config_key``); a required
    field whose key is absent is refused."""
    given = {}
    for item in fields(cls):
        key = config_key(item)
        if key in values:
            given[item.name] = values[key]
        elif item.default is MISSING:
            raise ConfigError(f"{section}.{key} must be set")
    return cls(**given)


def config_keys(cls: Any) -> set[str]:
    return {config_key(item) for item in fields(cls)}
