"""The training settings (dens.training.settings): one dataclass field per key of an experiment's
``optim``, whose range, required-ness and default are the JSON schema's (the schema checks the
DAG, the dataclasses the engine; they must not contradict each other), every resolved experiment
of every scale reads into them, and a wrong value is refused naming its key."""

from __future__ import annotations

import typing
from dataclasses import MISSING, fields
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from toy_model import toy_experiment

from dens.denoising import DeNSSettings, LossSettings
from dens.errors import ConfigError
from dens.setting_fields import config_key
from dens.training.settings import (
    LOSS_KEYS,
    OPTIM_KEYS,
    EvaluationSettings,
    GivenNormalizer,
    LabelSettings,
    OptimSettings,
    TrainSettings,
)

SCHEMAS = Path(__file__).resolve().parents[1] / "workflow" / "schemas"
BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
SETTINGS = (OptimSettings, EvaluationSettings, LabelSettings)


def schema_definitions(name: str) -> dict[str, Any]:
    return yaml.safe_load((SCHEMAS / f"{name}.schema.yaml").read_text())["$defs"]


def choices(hint: Any) -> set[Any]:
    """The values of a Literal (inside an optional), else the empty set."""
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    kinds = [option for option in options if option is not NoneType]
    return set(get_args(kinds[0])) if get_origin(kinds[0]) is Literal else set()


def settings_fields(cls: Any) -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(cls)
    return [(config_key(item), item, hints[item.name]) for item in fields(cls)]


def bounds_of(schema: dict[str, Any]) -> dict[str, Any]:
    numbers = schema.get("items", schema) if schema.get("type") == "array" else schema
    return {name: numbers[name] for name in BOUNDS if name in numbers}


def test_the_settings_know_every_optim_key_of_the_schema():
    assert set(schema_definitions("experiments")["optim"]["properties"]) == OPTIM_KEYS


@pytest.mark.parametrize("cls", [*SETTINGS, GivenNormalizer], ids=lambda cls: cls.__name__)
def test_ranges_required_keys_defaults_and_choices_are_the_schemas(cls):
    optim = schema_definitions("experiments")["optim"]
    schema = optim["properties"]["normalizer"] if cls is GivenNormalizer else optim
    for key, item, hint in settings_fields(cls):
        prop = schema["properties"][key]
        assert item.metadata.get("bounds", {}) == bounds_of(prop), key
        assert (key in schema.get("required", [])) == (item.default is MISSING), key
        if "default" in prop:
            assert item.default == prop["default"], key
        assert choices(hint) == set(prop.get("enum", [])), key


def test_the_dens_ranges_and_choices_are_the_schemas():
    """DeNSSettings states each range once, in its fields; the experiments' schema checks the
    same ranges and choices at DAG time (its required keys are stricter than the library's
    defaults: an experiment names every DeNS setting but ``decision``)."""
    schema = schema_definitions("experiments")["dens"]
    assert set(schema["properties"]) == {item.name for item in fields(DeNSSettings)}
    for key, item, hint in settings_fields(DeNSSettings):
        prop = schema["properties"][key]
        assert item.metadata.get("bounds", {}) == bounds_of(prop), key
        assert choices(hint) == set(prop.get("enum", [])), key


def test_the_loss_keys_ranges_and_choices_are_the_schemas():
    properties = schema_definitions("experiments")["optim"]["properties"]
    hints = typing.get_type_hints(LossSettings)
    bounds = {item.name: item.metadata.get("bounds", {}) for item in fields(LossSettings)}
    for key, name in LOSS_KEYS.items():
        assert choices(hints[name]) == set(properties[key].get("enum", [])), key
        assert bounds[name] == bounds_of(properties[key]), key


def test_a_scale_overrides_optim_keys_within_the_same_ranges():
    override = schema_definitions("scale")["optim_override"]["properties"]
    checked = 0
    for cls in SETTINGS:
        for key, _, hint in settings_fields(cls):
            if key in override and override[key].get("type") != "null":
                assert bounds_of(override[key]) == bounds_of(
                    schema_definitions("experiments")["optim"]["properties"][key]
                ), key
                assert choices(hint) == set(override[key].get("enum", [])), key
                checked += 1
    assert checked >= 6


@pytest.mark.parametrize("scale", ["paper", "mini", "smoke"])
def test_every_resolved_experiment_reads_into_settings(scale):
    from dens.pipeline.registry import load_registry

    registry = load_registry({"scale": scale})
    for name in registry.experiments:
        experiment = registry.resolve(name)
        settings = TrainSettings.from_experiment(experiment)
        assert settings.optim.epochs == experiment["optim"]["epochs"], name
        assert (settings.denoising is None) == (experiment["dens"] is None), name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": 0}, r"optim\.lr must be > 0, got 0"),
        ({"ema_decay": 1.0}, r"optim\.ema_decay must be < 1, got 1\.0"),
        ({"epochs": 2.5}, r"optim\.epochs must be of type int"),
        ({"lr_schedule": "linear"}, r"optim\.lr_schedule must be one of"),
        ({"decay_epochs": [1, -2]}, r"optim\.decay_epochs\[1\] must be > 0"),
        ({"eval_batch_size": 0}, r"optim\.eval_batch_size must be >= 1"),
        ({"warmup_epochs": float("nan")}, r"optim\.warmup_epochs must be a finite number"),
        ({"lr_schedule": "multistep"}, "needs decay_epochs and decay_rate"),
        ({"normalizer": {"energy_mean": 0, "energy_std": 0, "force_std": 1}}, "energy_std"),
        ({"momentum": 0.9}, r"unknown key\(s\) \['momentum'\]"),
        ({"energy_loss": "mse"}, "energy_loss must be 'mae'"),
        ({"batch_size": None}, r"optim\.batch_size must be set"),
    ],
)
def test_a_wrong_setting_is_refused_naming_its_key(change, message):
    experiment = toy_experiment()
    experiment["optim"] = experiment["optim"] | change
    with pytest.raises(ConfigError, match=message):
        TrainSettings.from_experiment(experiment)


def test_defaults_and_a_missing_key():
    experiment = toy_experiment()
    settings = TrainSettings.from_experiment(experiment)
    assert (settings.optim.amsgrad, settings.optim.mixed_precision) == (False, True)
    assert settings.optim.warmup_start_factor == 0.0 and settings.labels.reference == "mean"
    assert settings.loss == LossSettings(1, 10, "mae")
    with_file = LabelSettings.from_optim({"energy_reference_file": "refs.npz"})
    assert with_file.reference == "linear"
    del experiment["optim"]["lr"]
    with pytest.raises(ConfigError, match=r"optim\.lr must be set"):
        TrainSettings.from_experiment(experiment)
    with pytest.raises(ConfigError, match=r"seed must be < 4294967296"):
        TrainSettings.from_experiment(toy_experiment() | {"seed": 2**32})
