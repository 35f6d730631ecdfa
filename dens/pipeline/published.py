"""The published EquiformerV2 + DeNS checkpoints beside the paper's numbers: target ``published``.

config/published.yaml (schema: workflow/schemas/published.schema.yaml) lists the checkpoints the
paper's authors published (the official DeNS README's Checkpoint table), each named after its
archive in config/archives.yaml: the registered experiment it is imported as, the S2EF validation
splits it is scored on, whether it relaxes the IS2RE validation splits (dataset role
``relax_val``) and writes an S2EF test submission, the linear energy reference it needs, and the
paper's numbers with their source. :func:`load_published` reads and checks it against the
catalog and the registry; workflow/rules/published.smk turns each checkpoint into jobs on
``results/{scale}/published/<name>/`` (dens.pipeline.paths.published_run: the run-directory layout
of a trained run, without seeds).

The table ``published``, these checkpoints' numbers beside the paper's, is built by
dens.pipeline.tables.published.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from dens.config_files import read_yaml, validate
from dens.errors import ConfigError
from dens.pipeline import paths
from dens.pipeline.registry import Registry

CONFIG = "config/published.yaml"
TABLE = "published"
AVERAGE = "average"
"""A row of the mean over the splits (each weighted equally: metrics.json's top level)."""


@dataclass(frozen=True)
class Checkpoint:
    """One entry of config/published.yaml."""

    name: str
    experiment: str
    dataset: str
    evaluate: tuple[str, ...]
    relax: bool
    submission: bool
    energy_reference: str | None
    paper: dict[str, dict[str, str]]  # split or AVERAGE -> metric -> the paper's number
    paper_source: str


@dataclass(frozen=True)
class Published:
    tolerance: float
    checkpoints: dict[str, Checkpoint]


def load_published(registry: Registry) -> Published:
    """config/published.yaml, validated against its schema and checked against the archive
    catalog (a published_checkpoint archive per name; an npz energy reference), the registered
    experiments and their datasets' splits; a violation raises ConfigError naming the key."""
    from dens.data.download.catalog import load_catalog

    root = registry.root
    document = read_yaml(root / CONFIG)
    validate(document, "published", CONFIG, root)
    catalog = load_catalog(root=root)
    checkpoints = {}
    for name, entry in document["checkpoints"].items():
        where = f"{CONFIG}: checkpoints.{name}"
        dataset = _checked_dataset(registry, catalog, name, entry, where)
        paper = {key: value for key, value in entry["paper"].items() if key != "source"}
        for key in paper:
            if key != AVERAGE and key not in entry["evaluate"]:
                raise ConfigError(
                    f"{where}.paper.{key}: neither {AVERAGE!r} nor a split of evaluate"
                )
        checkpoints[name] = Checkpoint(
            name=name,
            experiment=entry["experiment"],
            dataset=dataset,
            evaluate=tuple(entry["evaluate"]),
            relax=entry["relax"],
            submission=entry["submission"],
            energy_reference=entry["energy_reference"],
            paper=paper,
            paper_source=entry["paper"]["source"],
        )
    return Published(float(document["tolerance"]["relative"]), checkpoints)


def _checked_dataset(
    registry: Registry, catalog: Mapping[str, Any], name: str, entry: dict[str, Any], where: str
) -> str:
    """The dataset of a checkpoint's experiment, once its archive, experiment, splits, relax
    settings and energy reference are checked (ConfigError naming the key ``where``)."""
    archive = catalog.get(name)
    if archive is None or not archive.published_checkpoint:
        raise ConfigError(
            f"{where}: no archive {name!r} with published_checkpoint: true in config/archives.yaml"
        )
    try:
        dataset = registry.experiment(entry["experiment"])["dataset"]
    except ConfigError as error:
        raise ConfigError(f"{where}.experiment: {error}") from None
    splits = registry.split_names(dataset)
    for split in entry["evaluate"]:
        if split not in splits:
            raise ConfigError(
                f"{where}.evaluate: {split!r} is no split of {dataset} ({', '.join(splits)})"
            )
    if entry["relax"] and not (
        registry.splits(dataset, "relax_val") and registry.relax_settings(entry["experiment"])
    ):
        raise ConfigError(
            f"{where}.relax: {dataset} has no relax_val splits or {entry['experiment']} no "
            "relax settings"
        )
    if entry["submission"] and not registry.splits(dataset, "test"):
        raise ConfigError(f"{where}.submission: {dataset} has no test splits")
    reference = entry["energy_reference"]
    if reference is not None and (reference not in catalog or catalog[reference].format != "npz"):
        raise ConfigError(
            f"{where}.energy_reference: {reference!r} is no npz archive of config/archives.yaml"
        )
    return dataset


def in_all(registry: Registry) -> bool:
    """Whether the default target ``all`` (the report) includes ``published``: at a scale whose
    OC data are downloaded (the paper scale) or where a ``mirror`` serves the checkpoints; at
    the generated scales without one there is nothing to download them from."""
    downloads = any(
        registry.scale["data"][family]["source"] == "download" for family in ("oc20", "oc22")
    )
    return downloads or registry.options.get("mirror") is not None


def split_files(registry: Registry, checkpoint: Checkpoint, role: str) -> list[PurePosixPath]:
    """The prepared split files of a checkpoint's ``role``: "evaluate" (its evaluate splits),
    "relax_val" or "test" (its dataset's)."""
    names = checkpoint.evaluate if role == "evaluate" else registry.splits(checkpoint.dataset, role)
    return [paths.dataset(registry.scale_name, checkpoint.dataset).split(name) for name in names]
