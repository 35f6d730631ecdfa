"""Experiment templates: each value of an experiment and its source stated once
(config/experiments.yaml ``templates``, which ``experiments`` extend;
:func:`expand_experiments`)."""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

from dens.errors import ConfigError
from dens.pipeline.registry.schemas import unknown


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in recursively (override wins)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


ENTRY_KEYS = ("extends", "matrix", "value_sources")
"""Keys of a template or experiment entry that are not values of the run."""
DESCRIPTIVE_KEYS = ("source", "optional")
"""Keys of an experiment that describe it rather than set its recipe (they need no source)."""
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
"""``{molecule}``: a matrix variable in an experiment's name, template names and strings."""


def substitute(value: Any, variables: dict[str, str]) -> Any:
    """``value`` with each ``{name}`` of ``variables`` replaced in every string it holds."""
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda match: variables.get(match[1], match[0]), value)
    if isinstance(value, dict):
        return {key: substitute(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, variables) for item in value]
    return value


def leaf_paths(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the values in a nested mapping: the leaves of each mapping (an empty one
    has none); anything else (a number, a list, null) is a value."""
    paths: list[str] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            paths += leaf_paths(value, f"{prefix}{key}.")
        else:
            paths.append(f"{prefix}{key}")
    return paths


def covers(source_key: str, path: str) -> bool:
    """A source stated for ``source_key`` applies to the value at ``path``: the same key, or a
    mapping above it (a source of ``optim.normalizer`` covers ``optim.normalizer.energy_std``)."""
    return path == source_key or path.startswith(source_key + ".")


def merge_layers(layers: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """An experiment and the sources of its values from its layers (the templates it extends,
    then its own entry), each merged over the ones before (dens.pipeline.registry.deep_merge:
    mappings key by key; a null, a number or a list replaces). A source belongs to the layer that
    set the value: a layer that sets a value drops every earlier source of it (of a mapping above it
    too, as that one no longer covers every value below it), then adds its own
    ``value_sources``, so that a value changed without a new source has none."""
    experiment: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        values = {key: value for key, value in layer.items() if key not in ENTRY_KEYS}
        for path in leaf_paths(values):
            for key in [k for k in sources if covers(k, path) or covers(path, k)]:
                del sources[key]
        experiment = deep_merge(experiment, values)
        sources.update(layer.get("value_sources", {}))
    return experiment, sources


def _layers(
    entry: dict[str, Any],
    templates: dict[str, dict[str, Any]],
    variables: dict[str, str],
    chain: tuple[str, ...],
) -> list[dict[str, Any]]:
    """The templates ``entry`` extends (each after the ones it extends, in ``extends`` order) and
    then ``entry`` itself, with the matrix ``variables`` substituted; ``chain`` names the entry
    and the templates that led to it (a cycle is refused)."""
    layers: list[dict[str, Any]] = []
    for parent in entry.get("extends", []):
        name = substitute(parent, variables)
        if name not in templates:
            raise ConfigError(f"{chain[0]}: extends: {unknown('template', name, templates)}")
        if f"templates.{name}" in chain:
            cycle = " -> ".join([*chain, f"templates.{name}"])
            raise ConfigError(f"{chain[0]}: extends: a cycle of templates: {cycle}")
        layers += _layers(templates[name], templates, variables, (*chain, f"templates.{name}"))
    layers.append(substitute(entry, variables))
    return layers


def expand_experiments(
    entries: dict[str, dict[str, Any]], templates: dict[str, dict[str, Any]], source: str
) -> dict[str, dict[str, Any]]:
    """The experiments of an experiment file: each entry merged over the templates it
    ``extends`` (:func:`merge_layers`), its sources as ``value_sources``; an entry with a
    ``matrix`` ({variable: [values]}) is one experiment per combination, its name, template names
    and strings with ``{variable}`` replaced (``md17-{molecule}/equiformer-l2`` with ``matrix:
    {molecule: [aspirin, ...]}``)."""
    experiments: dict[str, dict[str, Any]] = {}
    for pattern, entry in entries.items():
        matrix = entry.get("matrix", {})
        for combination in itertools.product(*matrix.values()):
            variables = dict(zip(matrix, combination, strict=True))
            name = substitute(pattern, variables)
            where = f"{source}: experiments.{name}"
            layers = _layers(entry, templates, variables, (where,))
            experiment, sources = merge_layers(layers)
            left = PLACEHOLDER.search(str([name, experiment, sources]))
            if left:
                raise ConfigError(
                    f"{where}: {left[0]!r} is not replaced: give the entry a matrix with "
                    f"{left[1]!r} (matrix: {{{left[1]}: [...]}})"
                )
            for key in sources:
                if not any(covers(key, path) for path in leaf_paths(experiment)):
                    raise ConfigError(
                        f"{where}: value_sources: {key!r}: the experiment has no such value"
                    )
            if name in experiments:
                raise ConfigError(f"{where}: defined twice")
            experiments[name] = {**experiment, "value_sources": sources}
    return experiments
