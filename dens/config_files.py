"""Reading the project's configuration files: YAML parsed safely, every number finite, checked
against its JSON schema under ``workflow/schemas/``; a problem raises
:class:`dens.errors.ConfigError` naming the file, the key and the value (a syntax error: the line
and column). The library reads archive catalogs and reference files with these; the pipeline's
registry (dens.pipeline.registry) reads every file of ``config/`` with them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from dens.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout this package was imported from (find_root's fallback)."""


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a missing or malformed file raises :class:`ConfigError` naming it (a
    syntax error on one line: the file, the line and column, what is wrong).

    Safe loading through libyaml (``CSafeLoader``) where PyYAML has it: every job reads the
    370 kB of config/experiments.yaml, which takes ~7 times longer in pure Python."""
    try:
        with open(path) as handle:
            return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: file not found") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: {_yaml_problem(error)}") from error


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML syntax error in one line: ``line L, column C: not valid YAML: <problem> (<context>
    at line L', column C')``, lines and columns counted from 1."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return f"not valid YAML: {' '.join(str(error).split())}"
    mark = error.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {error.problem}"
    if error.context and error.context_mark is not None:
        start = error.context_mark
        text += f" ({error.context} at line {start.line + 1}, column {start.column + 1})"
    return text


def refuse_non_finite(document: Any, source: str) -> None:
    """Refuse a NaN or an infinity anywhere in a configuration document (YAML's ``.nan``,
    ``.inf``, or a number too large for a float): JSON schema bounds let NaN through (every
    comparison with it is false), and a run would train on it. Raises :class:`ConfigError`
    ``source: key.path: .nan: ...`` (list items by their index)."""
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            items = [(f"{key}.{k}" if key else str(k), v) for k, v in value.items()]
            stack += reversed(items)  # the first in file order is reported
        elif isinstance(value, list):
            stack += reversed([(f"{key}.{i}" if key else str(i), v) for i, v in enumerate(value)])
        elif isinstance(value, float) and not math.isfinite(value):
            spelled = ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
            raise ConfigError(
                f"{source}: {key or '(top level)'}: {spelled}: not a finite number (every number "
                "of the configuration must be finite)"
            )


def validate(document: Any, schema_name: str, source: str, root: Path) -> None:
    """Validate ``document`` against ``workflow/schemas/<schema_name>.schema.yaml``.

    Raises :class:`ConfigError` with ``source: key.path: value: reason`` (the most relevant error),
    first for a non-finite number anywhere in it (:func:`refuse_non_finite`).
    """
    refuse_non_finite(document, source)
    schema = read_yaml(root / "workflow" / "schemas" / f"{schema_name}.schema.yaml")
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    raise ConfigError(f"{source}: {key}: {error.instance!r}: {error.message}")


def find_root(start: Path | None = None) -> Path:
    """The pipeline directory: the working directory if it holds ``config/experiments.yaml``
    (Snakemake jobs run there; a copy of the repository works too), else this package's checkout."""
    start = Path.cwd() if start is None else start
    return start if (start / "config" / "experiments.yaml").is_file() else REPO_ROOT
