"""Checks of the model families and model overrides the configuration names, made when the DAG
is built, without importing the models."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from dens.errors import ConfigError
from dens.models import FAMILIES, PENDING_FAMILIES
from dens.pipeline.registry.schemas import unknown

SWITCHES = {
    "attention": "model.attention",
    "layer_norm": "model.layer_norm",
    "force_encoding": "the dens entry (dens.force_encoding)",
    "noise_head": "the dens entry (a noise head with every DeNS run)",
}
"""Constructor arguments every model family takes that experiments set by other keys."""


def _override_error(where: str, key: str, family: str, known: Iterable[str]) -> ConfigError:
    if key in SWITCHES:
        return ConfigError(f"{where}: {key!r}: set by {SWITCHES[key]}, not by overrides")
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(
        f"{where}: {key!r}: not an argument of {family}{hint} (known: {', '.join(known)})"
    )


def check_model_families(
    model_presets: dict[str, Any],
    preset_sources: dict[str, Any],
    scale: dict[str, Any],
    scale_source: str,
) -> None:
    """The model families the configuration names are those ``dens.models`` registers
    (``FAMILIES``, and ``PENDING_FAMILIES`` still to come), the one place a family is
    registered: config/models.yaml gives presets for every registered family and for no other,
    its sources and a scale's ``models`` name no other. (An experiment's family is checked when
    it is resolved: its preset must exist.)"""
    known = set(FAMILIES) | set(PENDING_FAMILIES)
    named = (
        ("config/models.yaml", model_presets),
        ("config/models.yaml: sources", preset_sources),
        (f"{scale_source}: models", scale.get("models", {})),
    )
    for where, families in named:
        for family in families:
            if family not in known:
                raise ConfigError(
                    f"{where}: {unknown('model family', family, known)} "
                    "(dens.models.FAMILIES registers the families)"
                )
    missing = sorted(set(FAMILIES) - set(model_presets))
    if missing:
        raise ConfigError(
            f"config/models.yaml: no presets for the model families {', '.join(missing)} "
            "(registered in dens.models.FAMILIES)"
        )


def check_model_overrides(
    model_presets: dict[str, dict[str, dict[str, Any]]],
    scale: dict[str, Any],
    scale_source: str,
    experiments: dict[str, dict[str, Any]],
    sources: dict[str, str],
) -> None:
    """Refuse ``model.overrides`` of an experiment and ``models.<family>.overrides`` of a scale
    that name no constructor argument of the model family: the keys of its preset, which lists
    every argument but the switches experiments set otherwise (config/models.yaml). Runs when
    the DAG is built, without importing the models; an unknown family or preset is left to
    :meth:`Registry.resolve`, which names it."""
    for family, settings in scale.get("models", {}).items():
        presets = model_presets.get(family)
        if not presets:
            continue
        known = set.intersection(*(set(preset) for preset in presets.values()))
        for key in settings.get("overrides", {}):
            if key not in known:
                where = f"{scale_source}: models.{family}.overrides"
                raise _override_error(where, key, family, known)
    for name, experiment in experiments.items():
        model = experiment["model"]
        family = model["family"]
        scale_model = scale.get("models", {}).get(family, {})
        preset_name = scale_model.get("presets", {}).get(model["preset"], model["preset"])
        preset = model_presets.get(family, {}).get(preset_name)
        if preset is None:
            continue
        for key in model.get("overrides", {}):
            if key not in preset:
                where = f"{sources[name]}: experiments.{name}.model.overrides"
                raise _override_error(where, key, family, preset)
