"""The experiment registry: load, validate and resolve the pipeline's configuration.

Files (all under the repository's ``config/``, schemas under ``workflow/schemas/``):

- ``config.yaml``: pipeline options (scale, seeds, data_seed, ...), overridable with ``--config``.
- ``experiments.yaml``: every training run of the paper at the published setting, written as
  ``templates`` (family defaults, per-dataset or per-molecule values, per-variant changes) that
  ``experiments`` extend (:func:`expand_experiments`); each value and its source appear once.
- ``scales/<scale>.yaml``: what a scale overrides (data, model preset, epochs, batch size).
- ``datasets.yaml``, ``models.yaml`` (size presets per model family and their sources),
  ``tables.yaml``.

Every file is validated against its JSON schema; a violation raises :class:`ConfigError` naming the
file, the key path and the offending value. The Snakefile calls :func:`load_registry` at DAG time,
so a bad config stops before any job runs.

The package, by concern: :mod:`.schemas` (validating a file or a part of one), :mod:`.templates`
(expanding experiment templates), :mod:`.model_checks` (model families and overrides),
:mod:`.core` (the :class:`Registry` and what it resolves per scale), :mod:`.load`
(:func:`load_registry`).
"""

from dens.pipeline.registry.core import MOLECULES, Registry, row_experiments, scaled_optim
from dens.pipeline.registry.load import load_registry
from dens.pipeline.registry.model_checks import (
    SWITCHES,
    check_model_families,
    check_model_overrides,
)
from dens.pipeline.registry.schemas import validate_part
from dens.pipeline.registry.templates import (
    DESCRIPTIVE_KEYS,
    ENTRY_KEYS,
    PLACEHOLDER,
    covers,
    deep_merge,
    expand_experiments,
    leaf_paths,
    merge_layers,
    substitute,
)

__all__ = [
    "DESCRIPTIVE_KEYS",
    "ENTRY_KEYS",
    "MOLECULES",
    "PLACEHOLDER",
    "SWITCHES",
    "Registry",
    "check_model_families",
    "check_model_overrides",
    "covers",
    "deep_merge",
    "expand_experiments",
    "leaf_paths",
    "load_registry",
    "merge_layers",
    "row_experiments",
    "scaled_optim",
    "substitute",
    "validate_part",
]
