"""Reading the configuration's files against their schemas (workflow/schemas/): a part of a file
validated against one definition (:func:`validate_part`), and the one-line error that names an
unknown name with close matches (:func:`unknown`)."""

from __future__ import annotations

import copy
import difflib
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema

from dens.config_files import read_yaml
from dens.errors import ConfigError


def unknown(kind: str, name: str, known: Iterable[str]) -> ConfigError:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    lister = "; `dens experiments` lists them" if kind == "experiment" else ""
    listing = ", ".join(known) if len(known) <= 12 else f"{len(known)} defined{lister}"
    return ConfigError(f"unknown {kind} {name!r}.{hint} Known: {listing}")


def validate_part(
    instance: Any, schema_name: str, definition: str, where: str, root: Path, partial: bool = False
) -> None:
    """Validate ``instance`` against ``$defs/<definition>`` of a schema; ``partial``: as a part of
    one (no key required), as a template or an experiment entry before :func:`merge_layers`.

    Raises :class:`ConfigError` with ``where.key.path: value: reason``."""
    path = root / "workflow" / "schemas" / f"{schema_name}.schema.yaml"
    try:
        modified = path.stat().st_mtime_ns
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: file not found") from error
    validator = _part_validator(path, modified, definition, partial)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return
    key = ".".join([where, *(str(part) for part in error.absolute_path)])
    if isinstance(error.instance, dict | list):  # a missing or extra key: the message names it
        raise ConfigError(f"{key}: {error.message}")
    raise ConfigError(f"{key}: {error.instance!r}: {error.message}")


@functools.lru_cache(maxsize=64)
def _part_validator(
    path: Path, modified_ns: int, definition: str, partial: bool
) -> jsonschema.Draft202012Validator:
    """The validator of ``$defs/<definition>`` of the schema file ``path`` (as of its modification
    time ``modified_ns``), built once per process: a registry validates ~180 experiment layers
    against a handful of definitions, and reading the schema each time cost a job ~0.5 s."""
    schema = read_yaml(path)
    definitions = copy.deepcopy(schema["$defs"])
    if partial:
        definitions = _without_required(definitions)
        definitions[definition]["properties"].update(schema["$defs"]["entry"]["properties"])
    wrapper = {"$ref": f"#/$defs/{definition}", "$defs": definitions}
    return jsonschema.Draft202012Validator(wrapper)


def _without_required(schema: Any) -> Any:
    """The schema with every ``required`` list dropped (a key named "required" under
    ``properties`` is kept)."""
    if isinstance(schema, list):
        return [_without_required(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: _without_required(value)
        for key, value in schema.items()
        if key != "required" or not isinstance(value, list)
    }
