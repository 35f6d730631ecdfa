"""Loading the registry: every configuration file read, validated and checked against the others
(:func:`load_registry`, a sequence of named steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dens.config_files import find_root, read_yaml, validate
from dens.errors import ConfigError
from dens.pipeline.registry.core import Registry, row_experiments
from dens.pipeline.registry.model_checks import check_model_families, check_model_overrides
from dens.pipeline.registry.schemas import unknown, validate_part
from dens.pipeline.registry.templates import expand_experiments


def load_registry(options: dict[str, Any], root: Path | None = None) -> Registry:
    """Load and validate every configuration file for the scale named in ``options``.

    Paths in the registry (config, schemas, results) are relative to ``root`` (default
    :func:`find_root`)."""
    root = find_root() if root is None else root
    options = read_options(options, root)
    scale_name = options["scale"]
    scale, scale_source = read_scale(scale_name, root)
    check_catalog(options, scale, scale_source, root)
    datasets = read_datasets(root)
    experiments, sources = read_experiments(options, datasets, root)
    model_presets, preset_sources = read_models(root)
    check_model_families(model_presets, preset_sources, scale, scale_source)
    check_model_overrides(model_presets, scale, scale_source, experiments, sources)
    tables_doc = read_yaml(root / "config" / "tables.yaml")
    validate(tables_doc, "tables", "config/tables.yaml", root)
    registry = Registry(
        root=root,
        options=options,
        scale_name=scale_name,
        scale=scale,
        experiments=experiments,
        datasets=datasets,
        model_presets=model_presets,
        tables=tables_doc["tables"],
        preset_sources=preset_sources,
    )
    check_experiments_resolve(registry)
    check_table_experiments(registry)
    return registry


def _parsed(key: str, value: Any) -> Any:
    """A ``--config`` value (a string, or a list of strings) read as YAML ("true", "3",
    "[0, 1]"); the scale stays a string."""
    if isinstance(value, list):
        return [_parsed(key, item) for item in value]
    return yaml.safe_load(value) if isinstance(value, str) and key != "scale" else value


def read_options(options: dict[str, Any], root: Path) -> dict[str, Any]:
    """config/config.yaml with ``options`` (--config) over it, validated."""
    defaults = read_yaml(root / "config" / "config.yaml")
    options = {**defaults, **{key: _parsed(key, value) for key, value in options.items()}}
    if "seed" in options:
        raise ConfigError(
            f"config: seed: {options['seed']!r}: the option is now seeds, a list of training seeds "
            "(--config 'seeds=[0,1,2]'); the seed of generated data is data_seed"
        )
    validate(
        options, "config", "config (config/config.yaml, the profile's configfile, --config)", root
    )
    return options


def read_scale(scale_name: str, root: Path) -> tuple[dict[str, Any], str]:
    """The scale's file (config/scales/<scale>.yaml), validated, and its path as it is named."""
    config_dir = root / "config"
    scales = sorted(p.stem for p in (config_dir / "scales").glob("*.yaml"))
    if scale_name not in scales:
        raise ConfigError(
            f"config: scale: unknown scale {scale_name!r}; known scales: {', '.join(scales)} "
            f"(files config/scales/<scale>.yaml)"
        )
    scale_path = config_dir / "scales" / f"{scale_name}.yaml"
    scale = read_yaml(scale_path)
    validate(scale, "scale", str(scale_path.relative_to(root)), root)
    if scale["gpus"] and scale["evaluate_in_train_job"]:
        raise ConfigError(
            f"{scale_path.relative_to(root)}: evaluate_in_train_job: true with gpus: true: a "
            "multi-GPU training job cannot score its run in its training processes; set "
            "evaluate_in_train_job: false (an evaluate job of its own per run)"
        )
    return scale, str(scale_path.relative_to(root))


def check_catalog(
    options: dict[str, Any], scale: dict[str, Any], scale_source: str, root: Path
) -> None:
    """Config ``catalog`` (a stand-in archive catalog) goes with a scale of ``catalog:
    stand_in`` and only with one: every other scale verifies the owners' checksums
    (config/archives.yaml). The stand-in is read and checked against that catalog
    (dens.data.download.catalog.load_catalog_with)."""
    from dens.data.download.catalog import load_catalog_with

    path = options["catalog"]
    stand_in = scale.get("catalog", "published") == "stand_in"
    if stand_in and path is None:
        raise ConfigError(
            f"config: catalog: None: {scale_source} (catalog: stand_in) downloads generated "
            "archives; name their catalog, e.g. --config catalog=PATH (`make rehearsal` "
            "generates it: README, Rehearse the paper scale)"
        )
    if path is not None and not stand_in:
        raise ConfigError(
            f"config: catalog: {path!r}: a stand-in catalog replaces the owners' checksums; "
            f"{scale_source} downloads the published archives (config/archives.yaml); only a "
            "scale with catalog: stand_in takes one"
        )
    if path is not None:
        load_catalog_with(path, root=root)


def read_datasets(root: Path) -> dict[str, dict[str, Any]]:
    """config/datasets.yaml's datasets, validated; each one's evaluate role names splits."""
    datasets_doc = read_yaml(root / "config" / "datasets.yaml")
    validate(datasets_doc, "datasets", "config/datasets.yaml", root)
    datasets = datasets_doc["datasets"]
    for name, info in datasets.items():
        role = info.get("evaluate", "test")
        if role not in info["splits"]:
            raise ConfigError(
                f"config/datasets.yaml: datasets.{name}.evaluate: {role!r}: the dataset has no "
                f"{role} splits (roles: {', '.join(info['splits'])})"
            )
    return datasets


def read_experiments(
    options: dict[str, Any], datasets: dict[str, dict[str, Any]], root: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The experiments of config/experiments.yaml and of the ``extra_experiments`` files, in
    order (a later file extends the templates of the ones before), and the file that defines
    each."""
    experiments: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}  # experiment -> the file that defines it
    templates: dict[str, dict[str, Any]] = {}  # of every file so far: later files extend them
    files = [root / "config" / "experiments.yaml"] + [Path(p) for p in options["extra_experiments"]]
    for path in files:
        source = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        document = read_experiment_file(path, source, root)
        for name, template in document.get("templates", {}).items():
            if name in templates:
                raise ConfigError(f"{source}: templates.{name}: defined twice")
            templates[name] = template
        for name, experiment in expand_experiments(
            document["experiments"], templates, source
        ).items():
            if name in experiments:
                raise ConfigError(f"{source}: experiments.{name}: defined twice")
            check_experiment(experiment, f"{source}: experiments.{name}", datasets, root)
            experiments[name] = experiment
            sources[name] = source
    return experiments, sources


def read_experiment_file(path: Path, source: str, root: Path) -> dict[str, Any]:
    """An experiment file, validated, each template and experiment entry as a part of an
    experiment."""
    document = read_yaml(path if path.is_absolute() else root / path)
    validate(document, "experiments", source, root)
    for kind in ("templates", "experiments"):
        for name, entry in document.get(kind, {}).items():
            validate_part(
                entry,
                "experiments",
                "experiment",
                f"{source}: {kind}.{name}",
                root,
                partial=True,
            )
    return document


def check_experiment(
    experiment: dict[str, Any], where: str, datasets: dict[str, dict[str, Any]], root: Path
) -> None:
    """An expanded experiment: complete, on a known dataset, with relax settings if its dataset
    has relax splits."""
    validate_part(experiment, "experiments", "experiment", where, root)
    if experiment["dataset"] not in datasets:
        raise ConfigError(
            f"{where}.dataset: {experiment['dataset']!r}: "
            f"{unknown('dataset', experiment['dataset'], datasets)}"
        )
    if datasets[experiment["dataset"]]["splits"].get("relax") and "relax" not in experiment:
        raise ConfigError(
            f"{where}: no relax settings (relax.max_steps, fmax, maxstep, memory, "
            f"damping, alpha), which its dataset's relax splits need"
        )


def read_models(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """config/models.yaml, validated: the presets per family and their ``sources``."""
    model_presets = read_yaml(root / "config" / "models.yaml")
    validate(model_presets, "models", "config/models.yaml", root)
    preset_sources = model_presets.pop("sources", {})
    return model_presets, preset_sources


def check_experiments_resolve(registry: Registry) -> None:
    """Every experiment resolves at the registry's scale (its preset exists)."""
    for name in registry.experiments:
        try:
            registry.resolve(name)
        except ConfigError as error:
            raise ConfigError(
                f"experiments.{name}.model.preset ({registry.scale_name} scale): {error}"
            ) from error


def check_table_experiments(registry: Registry) -> None:
    """Every experiment a row of config/tables.yaml names is defined."""
    for table_name, table in registry.tables.items():
        for row in table["rows"]:
            for experiment in row_experiments(row, table):
                if experiment not in registry.experiments:
                    raise ConfigError(
                        f"config/tables.yaml: tables.{table_name}: row {row['label']!r}: "
                        f"{unknown('experiment', experiment, registry.experiments)}"
                    )
