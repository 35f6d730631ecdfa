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
"""

from __future__ import annotations

import copy
import difflib
import functools
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from dens.config_files import find_root, read_yaml, validate
from dens.errors import ConfigError
from dens.models import FAMILIES, PENDING_FAMILIES

MOLECULES = (
    "aspirin",
    "benzene",
    "ethanol",
    "malonaldehyde",
    "naphthalene",
    "salicylic_acid",
    "toluene",
    "uracil",
)


def _unknown(kind: str, name: str, known: Iterable[str]) -> ConfigError:
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


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in recursively (override wins)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def scaled_optim(optim: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """An experiment's optimisation with a scale's overrides for its dataset family: values
    replace the experiment's, except two relative ones that keep the differences between runs at
    a small scale: ``epochs_fraction`` f trains max(1, round(f * epochs)) of the experiment's own
    epochs, and ``lr_factor`` k multiplies its lr and min_lr (a tiny model trained for a few
    hundred steps needs a larger step than the paper's, but runs at 2e-4 and 4e-4 stay apart).
    A multistep schedule's ``decay_epochs`` shrink with the epochs (unless the scale sets them),
    so that the lr decays at the same fractions of training as in the paper run.
    """
    scaled = {**optim, **override}
    fraction = scaled.pop("epochs_fraction", None)
    if fraction is not None:
        scaled["epochs"] = max(1, round(float(fraction) * int(optim["epochs"])))
    if "decay_epochs" in optim and "decay_epochs" not in override:
        ratio = int(scaled["epochs"]) / int(optim["epochs"])
        scaled["decay_epochs"] = [float(d) * ratio for d in optim["decay_epochs"]]
    factor = scaled.pop("lr_factor", None)
    if factor is not None:
        scaled["lr"] = float(optim["lr"]) * float(factor)
        scaled["min_lr"] = float(optim["min_lr"]) * float(factor)
    return scaled


# -- templates: each value of an experiment and its source stated once ---------------------------
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
            raise ConfigError(f"{chain[0]}: extends: {_unknown('template', name, templates)}")
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


@dataclass(frozen=True)
class Registry:
    """The validated configuration of one pipeline invocation (one scale)."""

    root: Path
    options: dict[str, Any]
    scale_name: str
    scale: dict[str, Any]
    experiments: dict[str, dict[str, Any]]
    datasets: dict[str, dict[str, Any]]
    model_presets: dict[str, dict[str, dict[str, Any]]]
    tables: dict[str, dict[str, Any]]
    preset_sources: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    """config/models.yaml ``sources``: family -> preset -> argument (or "*", every other) ->
    where the paper-scale preset's value comes from."""

    # -- experiments -------------------------------------------------------------------------
    def experiment(self, name: str) -> dict[str, Any]:
        """The experiment as written in the experiment files (paper setting)."""
        if name not in self.experiments:
            raise _unknown("experiment", name, self.experiments)
        return self.experiments[name]

    def dataset(self, name: str) -> dict[str, Any]:
        if name not in self.datasets:
            raise _unknown("dataset", name, self.datasets)
        return self.datasets[name]

    def splits(self, dataset: str, role: str) -> list[str]:
        """The splits of ``dataset`` with ``role``: "train" (one), "val" (the first selects the
        best checkpoint), "test", "relax" (IS2RE initial structures), or "evaluate" (the role
        the dataset names as the one ``dens evaluate`` scores). [] if it has none."""
        info = self.dataset(dataset)
        roles = info["splits"]
        if role == "evaluate":
            role = info.get("evaluate", "test")
        value = roles.get(role, [])
        return [value] if isinstance(value, str) else list(value)

    def split_names(self, dataset: str) -> list[str]:
        """Every split of ``dataset`` once, in the order of its roles."""
        names: list[str] = []
        for value in self.dataset(dataset)["splits"].values():
            for split in [value] if isinstance(value, str) else value:
                if split not in names:
                    names.append(split)
        return names

    def data_settings(self, dataset: str) -> dict[str, Any]:
        """How this scale obtains ``dataset``: source (download/generate) and generator sizes."""
        info = self.dataset(dataset)
        settings = {**info, "name": dataset, **self.scale["data"][info["family"]]}
        if self.options["data_seed"] is not None and "seed" in settings:
            settings["seed"] = self.options["data_seed"]
        return settings

    def resolve(self, name: str, seed: int | None = None) -> dict[str, Any]:
        """The experiment at this registry's scale and training ``seed`` (default: the first of
        the configured seeds): what a training job needs, as plain data.

        Model hyper-parameters = the family's preset (the scale may map it to a smaller one) + the
        scale's and the experiment's overrides + the Table 5 switches + the two DeNS modules,
        which the experiment's ``dens`` entry switches separately: ``noise_head`` (every DeNS
        run) and ``force_encoding`` (DeNS runs whose ``dens.force_encoding`` is true; Table 6's
        ablation has none). Optimisation = the experiment's + the scale's overrides for the
        dataset family.
        """
        experiment = self.experiment(name)
        dens = experiment["dens"]
        family = self.dataset(experiment["dataset"])["family"]
        model = experiment["model"]
        scale_model = self.scale["models"].get(model["family"], {})
        preset = scale_model.get("presets", {}).get(model["preset"], model["preset"])
        hyperparameters = {
            **self.preset(model["family"], preset),
            **scale_model.get("overrides", {}),
            **model.get("overrides", {}),
            "attention": model["attention"],
            "layer_norm": model["layer_norm"],
            "force_encoding": dens is not None and dens["force_encoding"],
            "noise_head": dens is not None,
        }
        return {
            "name": name,
            "scale": self.scale_name,
            "seed": self.options["seeds"][0] if seed is None else int(seed),
            "dataset": experiment["dataset"],
            "dataset_family": family,
            "model": {
                "family": model["family"],
                "preset": preset,
                "hyperparameters": hyperparameters,
            },
            "optim": scaled_optim(experiment["optim"], self.scale["optim"].get(family, {})),
            "dens": copy.deepcopy(experiment["dens"]),
            "resources": dict(experiment["resources"]),
        }

    def relax_settings(self, name: str) -> dict[str, Any] | None:
        """The IS2RE relaxation settings of the experiment at this scale: its ``relax`` (the
        L-BFGS settings of its official config) with the scale's ``relax`` over it (systems per
        batch, how many systems, and at the CPU scales a cap on the steps: the smaller of the
        two); None for an
        experiment without relax settings (its dataset has no relax splits)."""
        relax = self.experiment(name).get("relax")
        if relax is None:
            return None
        settings = {**relax, **self.scale["relax"]}
        if "max_steps" in self.scale["relax"]:  # a cap, never more steps than the experiment's
            settings["max_steps"] = min(relax["max_steps"], self.scale["relax"]["max_steps"])
        return settings

    def value_sources(self, name: str) -> dict[str, str]:
        """Where each value of the run at this scale comes from: dotted path in
        :meth:`resolve`'s output (``relax.*``: :meth:`relax_settings`) -> citation. Values the
        scale sets cite the scale file; the model's hyper-parameters cite the preset's sources
        (config/models.yaml ``sources``) or the experiment's; the rest the experiment's
        ``value_sources`` (config/experiments.yaml). A value without a source is left out."""
        experiment = self.experiment(name)
        own = experiment["value_sources"]
        resolved = self.resolve(name)
        family = resolved["dataset_family"]
        model = experiment["model"]
        scale_file = f"config/scales/{self.scale_name}.yaml"
        scale_model = self.scale["models"].get(model["family"], {})
        scale_optim = self.scale["optim"].get(family, {})
        derived = {"epochs_fraction": ["epochs", "decay_epochs"], "lr_factor": ["lr", "min_lr"]}
        scaled = {k for key in scale_optim for k in derived.get(key, [key])}
        if "epochs" in scaled:
            scaled.add("decay_epochs")
        switches = {
            "attention": "model.attention",
            "layer_norm": "model.layer_norm",
            "force_encoding": "dens.force_encoding" if experiment["dens"] else "dens",
            "noise_head": "dens",
        }
        preset = resolved["model"]["preset"]
        from_preset = self.preset_sources.get(model["family"], {}).get(preset, {})

        def own_source(path: str) -> str | None:
            return next((own[key] for key in own if covers(key, path)), None)

        def source(path: str) -> str | None:
            section, _, key = path.partition(".")
            argument = key.removeprefix("hyperparameters.").split(".")[0]
            if section == "optim" and key.split(".")[0] in scaled:
                return f"{scale_file} optim.{family}"
            if section == "relax" and key in self.scale["relax"]:
                return f"{scale_file} relax"
            if path == "model.preset" and model["preset"] in scale_model.get("presets", {}):
                return f"{scale_file} models.{model['family']}.presets"
            if not key.startswith("hyperparameters."):
                return own_source(path)
            if argument in scale_model.get("overrides", {}):
                return f"{scale_file} models.{model['family']}.overrides"
            if argument in model.get("overrides", {}):
                return own_source(f"model.overrides.{argument}")
            if argument == "noise_head" and experiment["dens"]:
                return "the dens entry: a noise head with every DeNS run (paper Sec. 3.2.3)"
            if argument in switches:
                return own_source(switches[argument])
            if model["preset"] in scale_model.get("presets", {}) and not from_preset:
                return f"config/models.yaml {model['family']}.{preset} (this project's preset)"
            return from_preset.get(argument, from_preset.get("*"))

        values = {k: resolved[k] for k in ("dataset", "model", "optim", "dens", "resources")}
        relax = self.relax_settings(name)
        if relax is not None:
            values["relax"] = relax
        found = {path: source(path) for path in leaf_paths(values)}
        return {path: text for path, text in found.items() if text}

    def not_run_at_scale(self, name: str) -> str | None:
        """Why this scale does not train the experiment, or None (it does): an MD17 experiment
        whose molecule is not in the scale's ``md17_molecules`` (config/scales/<scale>.yaml;
        absent or null: every molecule). The one place that says which runs a scale trains:
        the tables and learning curves ask only for those runs
        (dens.pipeline.tables.read.table_inputs, dens.pipeline.curves.curve_inputs), hence the DAG
        too."""
        molecules = self.scale.get("md17_molecules")
        molecule = self.dataset(self.experiment(name)["dataset"]).get("molecule")
        if molecules is None or molecule is None or molecule in molecules:
            return None
        return (
            f"scale {self.scale_name} trains the MD17 molecules {', '.join(molecules)} only "
            f"(config/scales/{self.scale_name}.yaml md17_molecules)"
        )

    def preset(self, family: str, preset: str) -> dict[str, Any]:
        presets = self.model_presets.get(family)
        if presets is None:
            raise _unknown("model family", family, self.model_presets)
        if preset not in presets:
            raise _unknown(f"{family} preset", preset, presets)
        return dict(presets[preset])

    # -- tables --------------------------------------------------------------------------------
    def table(self, name: str) -> dict[str, Any]:
        if name not in self.tables:
            raise _unknown("table", name, self.tables)
        return self.tables[name]

    def table_targets(self) -> dict[str, list[str]]:
        """The paper's tables as pipeline targets, in configuration order: each target and the
        tables of config/tables.yaml it writes. A table's target is its name without the letter
        of a sub-table (``table1`` writes ``table1a`` and ``table1b``; the schema allows names
        ``table<N>`` and ``table<N>a``/``b``)."""
        targets: dict[str, list[str]] = {}
        for name in self.tables:
            targets.setdefault(re.sub(r"[ab]$", "", name), []).append(name)
        return targets

    def table_row_experiments(self, row: dict[str, Any], table: dict[str, Any]) -> list[str]:
        """Experiments a table row reads (one per molecule for MD17 tables); [] if not trained."""
        if row.get("cited") and not self.options["retrain_cited_baselines"]:
            return []
        return row_experiments(row, table)


def load_registry(options: dict[str, Any], root: Path | None = None) -> Registry:
    """Load and validate every configuration file for the scale named in ``options``.

    Paths in the registry (config, schemas, results) are relative to ``root`` (default
    :func:`find_root`)."""
    root = find_root() if root is None else root
    config_dir = root / "config"
    defaults = read_yaml(config_dir / "config.yaml")

    # --config passes strings, or lists of strings: read them as YAML ("true", "3", "[0, 1]").
    def parsed(key: str, value: Any) -> Any:
        if isinstance(value, list):
            return [parsed(key, item) for item in value]
        return yaml.safe_load(value) if isinstance(value, str) and key != "scale" else value

    options = {**defaults, **{key: parsed(key, value) for key, value in options.items()}}
    if "seed" in options:
        raise ConfigError(
            f"config: seed: {options['seed']!r}: the option is now seeds, a list of training seeds "
            "(--config 'seeds=[0,1,2]'); the seed of generated data is data_seed"
        )
    validate(
        options, "config", "config (config/config.yaml, the profile's configfile, --config)", root
    )

    scales = sorted(p.stem for p in (config_dir / "scales").glob("*.yaml"))
    scale_name = options["scale"]
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

    datasets_doc = read_yaml(config_dir / "datasets.yaml")
    validate(datasets_doc, "datasets", "config/datasets.yaml", root)
    datasets = datasets_doc["datasets"]
    for name, info in datasets.items():
        role = info.get("evaluate", "test")
        if role not in info["splits"]:
            raise ConfigError(
                f"config/datasets.yaml: datasets.{name}.evaluate: {role!r}: the dataset has no "
                f"{role} splits (roles: {', '.join(info['splits'])})"
            )

    experiments: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}  # experiment -> the file that defines it
    templates: dict[str, dict[str, Any]] = {}  # of every file so far: later files extend them
    files = [config_dir / "experiments.yaml"] + [Path(p) for p in options["extra_experiments"]]
    for path in files:
        source = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
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
        for name, template in document.get("templates", {}).items():
            if name in templates:
                raise ConfigError(f"{source}: templates.{name}: defined twice")
            templates[name] = template
        for name, experiment in expand_experiments(
            document["experiments"], templates, source
        ).items():
            if name in experiments:
                raise ConfigError(f"{source}: experiments.{name}: defined twice")
            where = f"{source}: experiments.{name}"
            validate_part(experiment, "experiments", "experiment", where, root)
            if experiment["dataset"] not in datasets:
                raise ConfigError(
                    f"{where}.dataset: {experiment['dataset']!r}: "
                    f"{_unknown('dataset', experiment['dataset'], datasets)}"
                )
            if datasets[experiment["dataset"]]["splits"].get("relax") and "relax" not in experiment:
                raise ConfigError(
                    f"{where}: no relax settings (relax.max_steps, fmax, maxstep, memory, "
                    f"damping, alpha), which its dataset's relax splits need"
                )
            experiments[name] = experiment
            sources[name] = source

    model_presets = read_yaml(config_dir / "models.yaml")
    validate(model_presets, "models", "config/models.yaml", root)
    preset_sources = model_presets.pop("sources", {})
    check_model_families(model_presets, preset_sources, scale, str(scale_path.relative_to(root)))
    check_model_overrides(
        model_presets, scale, str(scale_path.relative_to(root)), experiments, sources
    )

    tables_doc = read_yaml(config_dir / "tables.yaml")
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
    for name in experiments:
        try:
            registry.resolve(name)
        except ConfigError as error:
            raise ConfigError(
                f"experiments.{name}.model.preset ({scale_name} scale): {error}"
            ) from error
    for table_name, table in registry.tables.items():
        for row in table["rows"]:
            for experiment in row_experiments(row, table):
                if experiment not in experiments:
                    raise ConfigError(
                        f"config/tables.yaml: tables.{table_name}: row {row['label']!r}: "
                        f"{_unknown('experiment', experiment, experiments)}"
                    )
    return registry


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
                    f"{where}: {_unknown('model family', family, known)} "
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


def row_experiments(row: dict[str, Any], table: dict[str, Any]) -> list[str]:
    """Every experiment a table row names (one per molecule for MD17 tables)."""
    if table["kind"] == "settings":
        return [column["experiment"] for column in table["columns"]]
    if "experiment" not in row:
        return []
    if table["kind"] == "molecules":
        return [row["experiment"].format(molecule=m) for m in table["molecules"]]
    return [row["experiment"]]
