"""The experiment registry: names, scales, resolution and validation errors that name the input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from dens.config import MOLECULES, ConfigError, load_registry

MD17_RUNS = [
    "equiformer-l2",
    "equiformer-l2-dens",
    "equiformer-l3",
    "equiformer-l3-dens",
    "equiformer-l2-no-attn",
    "equiformer-l2-no-attn-dens",
    "equiformer-l2-no-attn-no-ln",
    "equiformer-l2-no-attn-no-ln-dens",
    "equiformer-l2-dens-no-force-encoding",
    "equiformer-l2-dens-no-energy-loss",
    "equiformer-l2-dens-all-atoms",
]
OC_RUNS = [
    "oc20-2m/eqv2-e12",
    "oc20-2m/eqv2-dens-e12",
    "oc20-2m/eqv2-e20",
    "oc20-2m/eqv2-dens-e20",
    "oc20-2m/eqv2-e30",
    "oc20-2m/eqv2-dens-e30",
    "oc20-2m/escn-e20",
    "oc20-2m/escn-dens-e20",
    "oc20-2m/eqv2-dens-e12-no-force-encoding",
    "oc20-2m/eqv2-dens-e12-no-energy-loss",
    "oc20-2m/eqv2-dens-e12-all-atoms",
    "oc20-all-md/eqv2-dens-160m",
    "oc20-all-md/eqv2-153m",
    "oc20-all-md/eqv2-31m",
    "oc22/eqv2-122m",
    "oc22/eqv2-dens-127m",
]


def test_every_paper_run_is_registered_with_its_exact_name() -> None:
    registry = load_registry({"scale": "paper"})
    expected = OC_RUNS + [f"md17-{m}/{run}" for m in MOLECULES for run in MD17_RUNS]
    assert sorted(registry.experiments) == sorted(expected)


def test_ablation_switches_and_dens_settings_follow_the_paper() -> None:
    registry = load_registry({"scale": "paper"})
    assert registry.experiment("oc20-2m/eqv2-e12")["dens"] is None
    e12 = registry.experiment("oc20-2m/eqv2-dens-e12")["dens"]
    assert (e12["p"], e12["coefficient"], e12["sigma"], e12["corruption_ratio"]) == (
        0.5,
        10,
        0.1,
        0.5,
    )
    assert registry.experiment("oc20-2m/eqv2-dens-e20")["dens"]["sigma"] == 0.15
    assert not registry.experiment("oc20-2m/eqv2-dens-e12-no-force-encoding")["dens"][
        "force_encoding"
    ]
    assert not registry.experiment("oc20-2m/eqv2-dens-e12-all-atoms")["dens"]["partial_corruption"]
    toluene = registry.experiment("md17-toluene/equiformer-l2-dens")["dens"]
    assert (toluene["p"], toluene["sigma"], toluene["coefficient_decay"]) == (
        0.125,
        0.025,
        "linear",
    )
    segnn = registry.experiment("md17-uracil/equiformer-l2-no-attn-no-ln-dens")["model"]
    assert (segnn["attention"], segnn["layer_norm"]) == (False, False)
    all_md = registry.experiment("oc20-all-md/eqv2-dens-160m")
    assert all_md["resources"]["gpus"] == 128 and all_md["dens"]["p"] == 0.125


def test_scale_overrides_epochs_batch_and_model_but_not_names() -> None:
    paper = load_registry({"scale": "paper"}).resolve("md17-ethanol/equiformer-l2-dens")
    mini = load_registry({"scale": "mini"}).resolve("md17-ethanol/equiformer-l2-dens")
    assert paper["optim"]["epochs"] == 1500 and mini["optim"]["epochs"] < 1500
    assert paper["model"]["preset"] == "l2" and mini["model"]["preset"] != "l2"
    assert mini["scale"] == "mini" and mini["dens"] == paper["dens"]
    assert mini["model"]["hyperparameters"]["force_encoding"] is True
    assert mini["model"]["hyperparameters"]["noise_head"] is True
    l3 = load_registry({"scale": "mini"}).resolve("md17-ethanol/equiformer-l3")
    assert l3["model"]["preset"] != mini["model"]["preset"]  # Lmax=3 stays distinct at mini
    assert l3["model"]["hyperparameters"]["lmax_sh"] == 3


def test_epochs_fraction_keeps_the_order_of_run_lengths() -> None:
    from dens.config import scaled_optim

    for epochs, expected in ((12, 2), (20, 3), (30, 5), (2, 1), (1, 1)):
        optim = {"epochs": epochs, "lr": 1e-3}
        scaled = scaled_optim(optim, {"epochs_fraction": 1 / 6, "batch_size": 4})
        assert scaled == {"epochs": expected, "lr": 1e-3, "batch_size": 4}
    assert scaled_optim({"epochs": 12}, {"epochs": 3}) == {"epochs": 3}
    scaled = scaled_optim({"epochs": 2, "lr": 4e-4, "min_lr": 4e-6}, {"lr_factor": 10})
    assert scaled == {"epochs": 2, "lr": pytest.approx(4e-3), "min_lr": pytest.approx(4e-5)}


def test_multistep_milestones_shrink_with_the_epochs() -> None:
    """eSCN's lr decays at 11.7, 15 and 18.3 of 20 epochs: at 1 epoch, at the same fractions."""
    from dens.config import scaled_optim

    optim = {"epochs": 20, "decay_epochs": [11.7, 15, 18.3], "lr_schedule": "multistep"}
    scaled = scaled_optim(optim, {"epochs": 1})
    assert scaled["decay_epochs"] == pytest.approx([0.585, 0.75, 0.915])
    assert scaled_optim(optim, {"epochs": 1, "decay_epochs": [0.5]})["decay_epochs"] == [0.5]
    assert scaled_optim(optim, {})["decay_epochs"] == pytest.approx([11.7, 15, 18.3])


def test_epochs_and_epochs_fraction_together_are_refused(pipeline_copy: Path) -> None:
    path = pipeline_copy / "config" / "scales" / "mini.yaml"
    document = yaml.safe_load(path.read_text())
    document["optim"]["oc20"].update(epochs=2, epochs_fraction=0.5)
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=r"scales/mini\.yaml.*optim"):
        load_registry({"scale": "mini"}, root=pipeline_copy)


def test_unknown_scale_is_refused_with_its_name() -> None:
    with pytest.raises(ConfigError, match="unknown scale 'huge'"):
        load_registry({"scale": "huge"})


def test_unknown_experiment_is_refused_with_close_matches() -> None:
    registry = load_registry({"scale": "mini"})
    with pytest.raises(ConfigError, match="md17-aspirn/equiformer-l2.*md17-aspirin/equiformer-l2"):
        registry.resolve("md17-aspirn/equiformer-l2")


def _break(root: Path, experiment: str, section: str, key: str, value: object) -> None:
    path = root / "config" / "experiments.yaml"
    document = yaml.safe_load(path.read_text())
    document["experiments"][experiment][section][key] = value
    path.write_text(yaml.safe_dump(document))


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("dens", "corruption_ratio", 1.5, r"dens\.corruption_ratio: 1\.5"),
        ("dens", "sigma", -0.1, r"dens\.sigma: -0\.1"),
        ("dens", "p", 1.2, r"dens\.p: 1\.2"),
        ("dens", "sigmaa", 0.1, r"'sigmaa' was unexpected"),
        ("optim", "epochs", 0, r"optim\.epochs: 0"),
    ],
)
def test_bad_values_name_file_key_and_value(
    pipeline_copy: Path, section: str, key: str, value: object, message: str
) -> None:
    _break(pipeline_copy, "md17-aspirin/equiformer-l2-dens", section, key, value)
    with pytest.raises(ConfigError, match=r"config/experiments\.yaml: .*" + message):
        load_registry({"scale": "mini"}, root=pipeline_copy)


def test_misspelled_pipeline_option_is_refused() -> None:
    with pytest.raises(ConfigError, match="'sede' was unexpected"):
        load_registry({"scale": "mini", "sede": 3})


def experiments_read(registry, table: str) -> set[str]:
    """The experiments whose metrics files a table job reads (dens.tables.table_inputs)."""
    from dens.tables import table_inputs

    return {"/".join(path.parts[3:5]) for path in table_inputs(registry, table)}


def test_cited_baselines_are_trained_only_on_request() -> None:
    default = load_registry({"scale": "paper"})
    assert experiments_read(default, "table2") == {"oc20-all-md/eqv2-dens-160m"}
    retrain = load_registry({"scale": "paper", "retrain_cited_baselines": True})
    assert experiments_read(retrain, "table2") == {
        "oc20-all-md/eqv2-dens-160m",
        "oc20-all-md/eqv2-153m",
        "oc20-all-md/eqv2-31m",
    }


def test_md17_tables_read_one_run_per_molecule() -> None:
    from dens.tables import table_inputs

    registry = load_registry({"scale": "mini"})
    assert len(experiments_read(registry, "table4")) == 4 * len(MOLECULES)
    assert len(experiments_read(registry, "table6")) == 5 * len(MOLECULES)
    assert table_inputs(registry, "table9") == []


def test_dens_modules_follow_the_experiment() -> None:
    """Force encoding and noise head are separate model switches driven by the dens entry:
    Table 6's no-force-encoding ablation keeps the noise head and drops the encoding."""
    registry = load_registry({"scale": "paper"})
    ablation = registry.resolve("md17-aspirin/equiformer-l2-dens-no-force-encoding")
    baseline = registry.resolve("md17-aspirin/equiformer-l2")
    assert ablation["model"]["hyperparameters"]["force_encoding"] is False
    assert ablation["model"]["hyperparameters"]["noise_head"] is True
    assert baseline["model"]["hyperparameters"]["force_encoding"] is False
    assert baseline["model"]["hyperparameters"]["noise_head"] is False


def test_dataset_split_roles() -> None:
    registry = load_registry({"scale": "mini"})
    assert registry.splits("md17-aspirin", "train") == ["train"]
    assert registry.splits("md17-aspirin", "evaluate") == ["test"]
    assert registry.splits("oc20-2m", "evaluate") == [
        "val_id",
        "val_ood_ads",
        "val_ood_cat",
        "val_ood_both",
    ]
    assert registry.splits("oc20-2m", "relax") == []
    assert registry.splits("oc22", "relax") == ["is2re_test_id", "is2re_test_ood"]
    assert registry.split_names("oc20-all-md")[-2:] == ["s2ef_test", "is2re_test"]


def test_readme_experiment_example_is_a_valid_extra_experiment(tmp_path) -> None:
    """The YAML block of README.md's "Add your own experiment" validates and resolves."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Add your own experiment") :]
    block = section[section.index("```yaml") + len("```yaml") : section.index("```\n", 8)]
    path = tmp_path / "my_experiments.yaml"
    path.write_text(block)
    registry = load_registry({"scale": "mini", "extra_experiments": [str(path)]})
    resolved = registry.resolve("md17-aspirin/equiformer-l2-dens-sigma0.1")
    assert resolved["dens"]["sigma"] == 0.1


# -- model.overrides: constructor arguments of the family, checked when the DAG is built ----------
SWITCHES = {"force_encoding", "noise_head", "attention", "layer_norm"}


def test_equiformer_presets_list_every_constructor_argument_but_the_switches() -> None:
    """What an override may change is what a preset lists: every argument of the constructor
    except the switches experiments set by other keys (model.attention, dens ...)."""
    import inspect

    from dens.models.equiformer import Equiformer

    arguments = set(inspect.signature(Equiformer).parameters) - SWITCHES
    presets = yaml.safe_load((Path(__file__).parents[1] / "config" / "models.yaml").read_text())
    for name, preset in presets["equiformer"].items():
        assert set(preset) == arguments, name
    assert SWITCHES <= set(inspect.signature(Equiformer).parameters)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"foo": 1},
            r"^config/experiments\.yaml: experiments\.md17-aspirin/equiformer-l2\.model\."
            r"overrides: 'foo': not an argument of equiformer \(known: alpha_drop, avg_degree",
        ),
        ({"weight_int": "uniform"}, r"'weight_int': .* did you mean 'weight_init'\?"),
        ({"attention": False}, r"'attention': set by model\.attention, not by overrides"),
        ({"force_encoding": True}, r"'force_encoding': set by the dens entry"),
    ],
)
def test_unknown_model_override_is_refused_when_the_dag_is_built(
    pipeline_copy: Path, overrides: dict, message: str
) -> None:
    _break(pipeline_copy, "md17-aspirin/equiformer-l2", "model", "overrides", overrides)
    for scale in ("paper", "smoke"):
        with pytest.raises(ConfigError, match=message):
            load_registry({"scale": scale}, root=pipeline_copy)


def test_known_model_overrides_resolve(pipeline_copy: Path) -> None:
    overrides = {"weight_init": "uniform", "drop_path_rate": 0.05, "num_layers": 2}
    _break(pipeline_copy, "md17-aspirin/equiformer-l2", "model", "overrides", overrides)
    resolved = load_registry({"scale": "mini"}, root=pipeline_copy).resolve(
        "md17-aspirin/equiformer-l2"
    )
    assert overrides.items() <= resolved["model"]["hyperparameters"].items()


def test_unknown_scale_model_override_names_the_scale_file(pipeline_copy: Path) -> None:
    path = pipeline_copy / "config" / "scales" / "mini.yaml"
    document = yaml.safe_load(path.read_text())
    document["models"]["equiformer"]["overrides"] = {"layers": 2}
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(
        ConfigError,
        match=r"^config/scales/mini\.yaml: models\.equiformer\.overrides: 'layers': not an arg",
    ):
        load_registry({"scale": "mini"}, root=pipeline_copy)
    load_registry({"scale": "smoke"}, root=pipeline_copy)  # other scales are unaffected


def test_md17_runs_train_in_float32_and_oc_runs_in_mixed_precision_on_gpus() -> None:
    """The official MD17 code trains in float32, the official OC20/OC22 scripts with --amp: each
    experiment's optim.mixed_precision says so at every scale (dens.train.use_mixed_precision)."""
    from dens.train import use_mixed_precision

    cuda = torch.device("cuda")
    for scale in ("paper", "mini"):
        registry = load_registry({"scale": scale})
        for name in registry.experiments:
            optim = registry.resolve(name)["optim"]
            recipe = bool(optim.get("mixed_precision", True))
            assert use_mixed_precision(None, cuda, recipe) is (not name.startswith("md17-")), name
