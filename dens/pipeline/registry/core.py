"""The :class:`Registry`: the validated configuration of one pipeline invocation (one scale),
which resolves an experiment at the scale (:meth:`Registry.resolve`), names its splits, data
settings, relaxation settings and the sources of its values."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dens.errors import ConfigError
from dens.pipeline.registry.schemas import unknown
from dens.pipeline.registry.templates import covers, leaf_paths

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
            raise unknown("experiment", name, self.experiments)
        return self.experiments[name]

    def dataset(self, name: str) -> dict[str, Any]:
        if name not in self.datasets:
            raise unknown("dataset", name, self.datasets)
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
        """How this scale obtains ``dataset``: source (download/generate) and generator sizes;
        ``catalog``: the stand-in archive catalog it is converted by (config ``catalog``)."""
        info = self.dataset(dataset)
        settings = {**info, "name": dataset, **self.scale["data"][info["family"]]}
        if settings["source"] == "download" and self.options["catalog"] is not None:
            settings["catalog"] = self.options["catalog"]
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
            "optim": self._one_gpu_share(
                self._downloads_here(
                    scaled_optim(experiment["optim"], self.scale["optim"].get(family, {}))
                ),
                experiment["resources"].get("gpus", 1),
            ),
            "dens": copy.deepcopy(experiment["dens"]),
            "resources": dict(experiment["resources"]),
        }

    def _one_gpu_share(self, optim: dict[str, Any], gpus: int) -> dict[str, Any]:
        """``optim`` with the batch sizes of one of the paper's ``gpus`` processes where the scale
        sets ``one_gpu_share`` (config/scales/rehearsal.yaml), else as it is."""
        if not self.scale.get("one_gpu_share") or gpus == 1:
            return optim
        for key in ("batch_size", "eval_batch_size"):
            if optim[key] % gpus:
                raise ConfigError(
                    f"config/scales/{self.scale_name}.yaml: one_gpu_share: optim.{key} "
                    f"{optim[key]} is not a multiple of the experiment's {gpus} GPUs"
                )
            optim[key] //= gpus
        return optim

    def _downloads_here(self, optim: dict[str, Any]) -> dict[str, Any]:
        """``optim`` with an energy_reference_file in the paper scale's downloads folder
        (config/experiments.yaml) moved to this scale's (dens.pipeline.paths.downloads_dir: the
        rehearsal downloads its own files)."""
        from dens.pipeline import paths

        reference = optim.get("energy_reference_file")
        published = f"{paths.downloads_dir(paths.PAPER_SCALE)}/"
        if isinstance(reference, str) and reference.startswith(published):
            here = paths.downloads_dir(self.scale_name)
            optim["energy_reference_file"] = str(here / reference.removeprefix(published))
        return optim

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
            raise unknown("model family", family, self.model_presets)
        if preset not in presets:
            raise unknown(f"{family} preset", preset, presets)
        return dict(presets[preset])

    # -- tables --------------------------------------------------------------------------------
    def table(self, name: str) -> dict[str, Any]:
        if name not in self.tables:
            raise unknown("table", name, self.tables)
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


def row_experiments(row: dict[str, Any], table: dict[str, Any]) -> list[str]:
    """Every experiment a table row names (one per molecule for MD17 tables)."""
    if table["kind"] == "settings":
        return [column["experiment"] for column in table["columns"]]
    if "experiment" not in row:
        return []
    if table["kind"] == "molecules":
        return [row["experiment"].format(molecule=m) for m in table["molecules"]]
    return [row["experiment"]]
