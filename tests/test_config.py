"""The experiment registry: names, scales, resolution and validation errors that name the input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from dens.errors import ConfigError
from dens.pipeline.registry import MOLECULES, load_registry

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
    # and, not in the paper, NequIP with and without DeNS (the optional extra `nequip`)
    expected += [f"md17-{m}/{run}" for m in MOLECULES for run in ("nequip", "nequip-dens")]
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
    from dens.pipeline.registry import scaled_optim

    for epochs, expected in ((12, 2), (20, 3), (30, 5), (2, 1), (1, 1)):
        optim = {"epochs": epochs, "lr": 1e-3}
        scaled = scaled_optim(optim, {"epochs_fraction": 1 / 6, "batch_size": 4})
        assert scaled == {"epochs": expected, "lr": 1e-3, "batch_size": 4}
    assert scaled_optim({"epochs": 12}, {"epochs": 3}) == {"epochs": 3}
    scaled = scaled_optim({"epochs": 2, "lr": 4e-4, "min_lr": 4e-6}, {"lr_factor": 10})
    assert scaled == {"epochs": 2, "lr": pytest.approx(4e-3), "min_lr": pytest.approx(4e-5)}


def test_multistep_milestones_shrink_with_the_epochs() -> None:
    """eSCN's lr decays at 11.7, 15 and 18.3 of 20 epochs: at 1 epoch, at the same fractions."""
    from dens.pipeline.registry import scaled_optim

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
    """Set ``section.key`` of one experiment: an entry of its own that extends the entry of its
    variant (config/experiments.yaml writes the MD17 runs as one entry per variant)."""
    path = root / "config" / "experiments.yaml"
    document = yaml.safe_load(path.read_text())
    dataset, variant = experiment.split("/")
    pattern = f"md17-{{molecule}}/{variant}"
    entry = document["experiments"][pattern]
    template = f"test/{variant}"
    document["templates"][template] = {k: v for k, v in entry.items() if k != "matrix"}
    others = [m for m in entry["matrix"]["molecule"] if m != dataset.removeprefix("md17-")]
    entry["matrix"] = {"molecule": others}  # a list of its own: the file shares one (anchor)
    molecule = {"molecule": [dataset.removeprefix("md17-")]}
    document["experiments"][experiment] = {
        "matrix": molecule,
        "extends": [template],
        section: {key: value},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))


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
    """The experiments whose metrics files a table job reads
    (dens.pipeline.tables.read.table_inputs)."""
    from dens.pipeline.tables.read import table_inputs

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
    from dens.pipeline.tables.read import table_inputs

    registry = load_registry({"scale": "mini"})
    assert len(experiments_read(registry, "table4")) == 4 * len(MOLECULES)
    assert len(experiments_read(registry, "table6")) == 5 * len(MOLECULES)
    assert table_inputs(registry, "table9") == []


def test_table_targets_come_from_the_tables_configured(pipeline_copy: Path) -> None:
    """The pipeline's table targets (tables.smk) are the registry's: one per paper table, the
    sub-tables of Table 1 under one target; a table added to config/tables.yaml gets its own."""
    registry = load_registry({"scale": "smoke"})
    targets = registry.table_targets()
    assert list(targets) == [f"table{n}" for n in range(1, 11)]
    assert targets["table1"] == ["table1a", "table1b"] and targets["table10"] == ["table10"]
    assert [name for names in targets.values() for name in names] == list(registry.tables)
    path = pipeline_copy / "config" / "tables.yaml"
    document = yaml.safe_load(path.read_text())
    document["tables"]["table3b"] = document["tables"]["table3"]
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    extended = load_registry({"scale": "smoke"}, root=pipeline_copy).table_targets()
    assert extended["table3"] == ["table3", "table3b"]


def test_the_smoke_scale_trains_two_md17_molecules_and_the_others_all_eight() -> None:
    """config/scales/smoke.yaml md17_molecules: the MD17 tables ask only for aspirin's and
    ethanol's runs at smoke (Table 10 too); mini and paper (no md17_molecules) every molecule.
    Fails where the setting is ignored (8 molecules at smoke) or filters other scales."""
    from dens.pipeline.curves import curve_inputs

    smoke, mini = load_registry({"scale": "smoke"}), load_registry({"scale": "mini"})
    for name, per_molecule in (("table4", 4), ("table6", 5), ("table10", 2)):
        read = experiments_read(smoke, name)
        assert {e.split("/")[0] for e in read} == {"md17-aspirin", "md17-ethanol"}
        assert len(read) == 2 * per_molecule
    assert len(experiments_read(mini, "table4")) == 4 * len(MOLECULES)
    assert experiments_read(smoke, "table1a") == experiments_read(mini, "table1a")  # OC: all
    curves = {path.parts[3] for path in curve_inputs(smoke, "table5")}
    assert curves == {"md17-aspirin", "md17-ethanol"}
    reason = smoke.not_run_at_scale("md17-benzene/equiformer-l2")
    assert reason == (
        "scale smoke trains the MD17 molecules aspirin, ethanol only "
        "(config/scales/smoke.yaml md17_molecules)"
    )
    assert smoke.not_run_at_scale("md17-ethanol/equiformer-l2") is None
    assert smoke.not_run_at_scale("oc22/eqv2-122m") is None
    assert mini.not_run_at_scale("md17-benzene/equiformer-l2") is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["aspirin", "caffeine"], r"md17_molecules\.1: 'caffeine': 'caffeine' is not one of"),
        ([], r"md17_molecules: \[\]: \[\] should be non-empty"),
        (["ethanol", "ethanol"], r"md17_molecules: .* has non-unique elements"),
    ],
)
def test_an_unknown_or_empty_md17_molecule_list_is_refused_naming_the_scale_file(
    pipeline_copy: Path, value: list[str], message: str
) -> None:
    path = pipeline_copy / "config" / "scales" / "mini.yaml"
    document = yaml.safe_load(path.read_text())
    document["md17_molecules"] = value
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=r"config/scales/mini\.yaml.*" + message):
        load_registry({"scale": "mini"}, root=pipeline_copy)


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


# -- model.overrides: hyper-parameters of the family, checked when the DAG is built --------------
# (that every family's presets list its settings' fields but the switches:
# tests/models/test_model_contract.py)


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
    experiment's optim.mixed_precision says so at every scale
    (dens.training.trainee.use_mixed_precision)."""
    from dens.training.settings import TrainSettings
    from dens.training.trainee import use_mixed_precision

    cuda = torch.device("cuda")
    for scale in ("paper", "mini"):
        registry = load_registry({"scale": scale})
        for name in registry.experiments:
            recipe = TrainSettings.from_experiment(registry.resolve(name)).optim.mixed_precision
            assert use_mixed_precision(None, cuda, recipe) is (not name.startswith("md17-")), name


# -- templates: each value and its source stated once ---------------------------------------------
def test_layers_merge_in_order_and_a_source_belongs_to_the_layer_that_set_the_value() -> None:
    """Later layers win (mappings key by key, null replaces); a value changed without a new
    source loses the old one (it would cite a file that says otherwise); a layer may cite a
    value set before it (the MD17 script templates cite their per-molecule values)."""
    from dens.pipeline.registry import merge_layers

    family = {
        "optim": {"lr": 1.0, "epochs": 10},
        "dens": {"p": 0.5, "sigma": 0.1},
        "value_sources": {"optim.lr": "family lr", "optim.epochs": "family epochs", "dens": "d"},
    }
    variant = {"optim": {"lr": 2.0}, "dens": None, "value_sources": {"dens": "no DeNS"}}
    experiment, sources = merge_layers([family, variant])
    assert experiment == {"optim": {"lr": 2.0, "epochs": 10}, "dens": None}
    assert sources == {"optim.epochs": "family epochs", "dens": "no DeNS"}
    _, sources = merge_layers([{"optim": {"lr": 3.0}}, {"value_sources": {"optim.lr": "late"}}])
    assert sources == {"optim.lr": "late"}
    # a source of a mapping covers its values until one of them changes
    normalizer = {
        "optim": {"normalizer": {"a": 1, "b": 2}},
        "value_sources": {"optim.normalizer": "x"},
    }
    assert merge_layers([normalizer])[1] == {"optim.normalizer": "x"}
    assert merge_layers([normalizer, {"optim": {"normalizer": {"b": 3}}}])[1] == {}


def test_matrix_extends_and_placeholders(tmp_path: Path) -> None:
    from dens.pipeline.registry import expand_experiments

    templates = {
        "base": {"optim": {"epochs": 5}, "value_sources": {"optim.lr": "script@{molecule}"}},
        "lr@a": {"optim": {"lr": 1.0}},
        "lr@b": {"optim": {"lr": 2.0}},
        "script": {"extends": ["lr@{molecule}", "base"]},
    }
    entries = {"m-{molecule}/run": {"matrix": {"molecule": ["a", "b"]}, "extends": ["script"]}}
    expanded = expand_experiments(entries, templates, "file")
    assert list(expanded) == ["m-a/run", "m-b/run"]
    assert expanded["m-b/run"] == {
        "optim": {"lr": 2.0, "epochs": 5},
        "value_sources": {"optim.lr": "script@b"},
    }
    with pytest.raises(ConfigError, match=r"'\{molecule\}' is not replaced"):
        expand_experiments({"m/run": {"source": "{molecule}"}}, templates, "file")
    with pytest.raises(ConfigError, match=r"extends: unknown template 'nope'"):
        expand_experiments({"m/run": {"extends": ["nope"]}}, templates, "file")
    with pytest.raises(ConfigError, match="a cycle of templates"):
        expand_experiments({"m/run": {"extends": ["x"]}}, {"x": {"extends": ["x"]}}, "file")
    with pytest.raises(ConfigError, match=r"value_sources: 'optim\.lr': the experiment has no"):
        expand_experiments({"m/run": {"value_sources": {"optim.lr": "s"}}}, {}, "file")


def test_a_typo_in_a_template_names_the_template(pipeline_copy: Path) -> None:
    path = pipeline_copy / "config" / "experiments.yaml"
    document = yaml.safe_load(path.read_text())
    document["templates"]["oc/dens"]["dens"]["sigmaa"] = 0.1
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(ConfigError, match=r"templates\.oc/dens\.dens: .*'sigmaa' was unexpected"):
        load_registry({"scale": "mini"}, root=pipeline_copy)


def test_every_paper_scale_value_has_a_source() -> None:
    """Each model, optimiser, DeNS, relaxation and resource value of every experiment at the
    paper scale cites the official file (and line) or the paper's table it comes from."""
    from dens.pipeline.registry import leaf_paths

    registry = load_registry({"scale": "paper"})
    missing = []
    for name in registry.experiments:
        resolved = registry.resolve(name)
        values = {k: resolved[k] for k in ("dataset", "model", "optim", "dens", "resources")}
        if registry.relax_settings(name) is not None:
            values["relax"] = registry.relax_settings(name)
        sources = registry.value_sources(name)
        missing += [f"{name}: {path}" for path in leaf_paths(values) if path not in sources]
    assert not missing, missing[:20]


def test_sources_cite_the_molecule_the_scale_and_the_preset() -> None:
    paper = load_registry({"scale": "paper"})
    toluene = paper.value_sources("md17-toluene/equiformer-l2-dens")
    assert "se_l2/target@toluene.sh DENOISING_POS_STD" in toluene["dens.sigma"]
    assert "graph_attention_transformer_md17.py:48" in toluene["model.hyperparameters.avg_degree"]
    oc22 = paper.value_sources("oc22/eqv2-dens-127m")
    assert "std@0.15.yml:170" in oc22["optim.grad_clip_norm"]
    assert "std@0.15.yml:43-52" in oc22["relax.max_steps"]
    assert oc22["relax.batch_size"] == "config/scales/paper.yaml relax"
    mini = load_registry({"scale": "mini"}).value_sources("oc22/eqv2-dens-127m")
    assert mini["optim.lr"] == mini["optim.epochs"] == "config/scales/mini.yaml optim.oc22"
    assert mini["model.preset"] == "config/scales/mini.yaml models.equiformer_v2.presets"
    assert mini["optim.weight_decay"] == oc22["optim.weight_decay"]
    e30 = paper.value_sources("oc20-2m/eqv2-dens-e30")["dens.sigma"]
    assert "0.15" in e30 and "body says 0.1" in e30 and "issue 22" in e30


def test_sample_of_resolved_experiments() -> None:
    """A few runs resolved in full, one per family of templates (values of the official files)."""
    paper = load_registry({"scale": "paper"})
    e12 = paper.resolve("oc20-2m/eqv2-dens-e12")
    expected = {
        "lr": 0.0002,
        "min_lr": 2.0e-06,
        "epochs": 12,
        "batch_size": 64,
        "warmup_epochs": 0.1,
        "warmup_start_factor": 0.2,
        "energy_coefficient": 2,
        "force_coefficient": 100,
        "grad_clip_norm": 100,
        "weight_decay": 0.001,
        "lr_schedule": "cosine_total",
    }
    assert {key: e12["optim"][key] for key in expected} == expected
    assert e12["dens"]["sigma"] == 0.1 and e12["dens"]["force_encoding_units"] == "eV/Å"
    assert e12["model"]["hyperparameters"]["drop_path_rate"] == 0.05
    all_md = paper.resolve("oc20-all-md/eqv2-dens-160m")
    assert (all_md["optim"]["energy_coefficient"], all_md["optim"]["warmup_epochs"]) == (4, 0.01)
    assert (all_md["dens"]["p"], all_md["dens"]["corruption_ratio"]) == (0.125, 0.25)
    assert all_md["dens"]["coefficient"] == 15 and all_md["optim"]["epochs"] == 2
    oc22 = paper.resolve("oc22/eqv2-122m")
    assert (oc22["optim"]["grad_clip_norm"], oc22["optim"]["energy_coefficient"]) == (50, 4)
    assert oc22["dens"] is None and oc22["optim"]["energy_reference"] == "linear"
    escn = paper.resolve("oc20-2m/escn-dens-e20")
    assert escn["optim"]["amsgrad"] and escn["optim"]["decay_epochs"] == [11.7, 15, 18.3]
    assert escn["optim"]["weight_decay"] == 0.01 and escn["dens"]["sigma"] == 0.15
    l3 = paper.resolve("md17-benzene/equiformer-l3-dens")
    assert (l3["optim"]["epochs"], l3["optim"]["batch_size"], l3["optim"]["lr"]) == (1500, 8, 1e-4)
    naphthalene = paper.resolve("md17-naphthalene/equiformer-l2-dens")["optim"]
    assert (naphthalene["energy_coefficient"], naphthalene["force_coefficient"]) == (2, 20)


def test_relaxation_settings_per_experiment_under_the_scale() -> None:
    """All+MD and OC22 relax as their official configs list (300 steps, maxstep 0.2, damping
    1.2, alpha 80), not with the 2M settings; the scale sets batches and caps the steps."""
    paper = load_registry({"scale": "paper"})
    for name in ("oc20-all-md/eqv2-dens-160m", "oc22/eqv2-dens-127m", "oc22/eqv2-122m"):
        assert paper.relax_settings(name) == {
            "max_steps": 300,
            "fmax": 0.02,
            "maxstep": 0.2,
            "memory": 50,
            "damping": 1.2,
            "alpha": 80.0,
            "batch_size": 32,
            "max_systems": None,
        }
    assert paper.relax_settings("md17-aspirin/equiformer-l2") is None
    smoke = load_registry({"scale": "smoke"}).relax_settings("oc22/eqv2-dens-127m")
    assert smoke["max_steps"] == 20 and smoke["damping"] == 1.2


def test_the_scale_caps_relaxation_steps_and_never_raises_them(tmp_path: Path) -> None:
    """mini caps relaxations at 200 steps: an experiment asking 300 gets 200, one asking 50
    keeps 50 (the cap is a minimum, not an override)."""
    path = tmp_path / "mine.yaml"
    short = {
        "max_steps": 50,
        "fmax": 0.05,
        "maxstep": 0.04,
        "memory": 50,
        "damping": 1.0,
        "alpha": 70.0,
    }
    path.write_text(
        yaml.safe_dump(
            {
                "experiments": {
                    "oc22/mine-short-relax": {
                        "extends": ["oc22/eqv2"],
                        "dens": None,
                        "relax": short,
                        "resources": {"runtime_hours": 1},
                        "source": "a user's experiment",
                    }
                }
            }
        )
    )
    mini = load_registry({"scale": "mini", "extra_experiments": [str(path)]})
    assert mini.relax_settings("oc22/eqv2-dens-127m")["max_steps"] == 200
    assert mini.relax_settings("oc22/mine-short-relax")["max_steps"] == 50


def test_an_experiment_of_a_dataset_with_relax_splits_needs_relax_settings(
    pipeline_copy: Path,
) -> None:
    path = pipeline_copy / "config" / "experiments.yaml"
    document = yaml.safe_load(path.read_text())
    del document["templates"]["oc22/eqv2"]["relax"]
    del document["templates"]["oc22/eqv2"]["value_sources"]["relax"]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(ConfigError, match=r"experiments\.oc22/eqv2-122m: no relax settings"):
        load_registry({"scale": "mini"}, root=pipeline_copy)


def test_oc_runs_train_with_the_official_trainer_s_reduction_decision_and_normaliser() -> None:
    """Every OC20/OC22 run (EquiformerV2 and eSCN): one mean over the batch's free atoms and one
    DeNS draw per batch, as the official OC trainer (denoising_forces_trainer.py:369, 488-580);
    MD17 keeps the per-atom batch mean and the per-structure draw of main_md17_dens.py. The
    official normalisers at the paper scale (OC22 forces by their own std, the published linear
    reference); the CPU scales fit their own (their EMT data have other statistics)."""
    oc20 = {"energy_mean": -0.7554450631141663, "energy_std": 2.887317180633545}
    oc20["force_std"] = oc20["energy_std"]
    oc22 = {"energy_mean": 0.0, "energy_std": 25.119809935106424, "force_std": 0.14759646356105804}
    for scale in ("paper", "mini", "smoke"):
        registry = load_registry({"scale": scale})
        for name in registry.experiments:
            run = registry.resolve(name)
            optim, dens = run["optim"], run["dens"]
            if name.startswith("md17-"):
                assert optim["loss_reduction"] == "atom", name
                assert dens is None or dens["decision"] == "structure", name
                assert "normalizer" not in optim, name
                continue
            assert optim["loss_reduction"] == "free_atoms", name
            assert dens is None or dens["decision"] == "batch", name
            official = oc22 if name.startswith("oc22/") else oc20
            assert optim["normalizer"] == (official if scale == "paper" else None), name
            reference = optim.get("energy_reference_file")
            if name.startswith("oc22/") and scale == "paper":
                assert reference == "results/downloads/oc22_linfit_coeffs.npz"
            else:
                assert reference is None, name


def _set(document: dict, path: str, value: object) -> None:
    *parents, last = path.split(".")
    for key in parents:
        document = document[int(key)] if isinstance(document, list) else document[key]
    if isinstance(document, list):
        document[int(last)] = value
    else:
        document[last] = value


@pytest.mark.parametrize(
    ("file", "path", "value", "spelled"),
    [
        ("config/experiments.yaml", "templates.oc/dens.dens.sigma", float("nan"), ".nan"),
        (
            "config/experiments.yaml",
            "templates.md17/equiformer/se_l2@ethanol.optim.lr",
            float("inf"),
            ".inf",
        ),
        ("config/scales/smoke.yaml", "optim.md17.warmup_epochs", float("-inf"), "-.inf"),
        ("config/models.yaml", "equiformer.l2.max_radius", float("nan"), ".nan"),
        ("config/datasets.yaml", "datasets.md17-ethanol.splits.val.0", float("nan"), ".nan"),
        ("config/tables.yaml", "tables.table1a.rows.0.paper.1", float("inf"), ".inf"),
    ],
)
def test_a_non_finite_number_in_any_config_file_is_refused(
    pipeline_copy: Path, file: str, path: str, value: float, spelled: str
) -> None:
    """JSON schema bounds let NaN through (every comparison with it is false): each file is
    walked for a NaN or an infinity, which is refused with the file, the key path and the value
    as YAML spells it; the schema's bounds alone would pass ``sigma: .nan``."""
    target = pipeline_copy / file
    document = yaml.safe_load(target.read_text())
    _set(document, path, value)
    target.write_text(yaml.safe_dump(document, sort_keys=False))
    message = f"^{re.escape(f'{file}: {path}: {spelled}: not a finite number')}"
    with pytest.raises(ConfigError, match=message):
        load_registry({"scale": "smoke"}, root=pipeline_copy)


def test_a_non_finite_option_or_catalog_value_is_refused(pipeline_copy: Path) -> None:
    from dens.data.download.catalog import load_catalog

    with pytest.raises(
        ConfigError,
        match=r"config/config\.yaml, the profile's configfile, --config\): seeds\.1: \.nan:",
    ):
        load_registry({"scale": "smoke", "seeds": ["0", ".nan"]}, root=pipeline_copy)
    with pytest.raises(ConfigError, match=r"max_job_hours: \.inf: not a finite number"):
        load_registry({"scale": "smoke", "max_job_hours": "1.0e+999"}, root=pipeline_copy)
    catalog = pipeline_copy / "config" / "archives.yaml"
    document = yaml.safe_load(catalog.read_text())
    document["archives"]["oc20_s2ef_train_2M"]["frames"]["train"] = float("nan")
    catalog.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(
        ConfigError, match=r"^config/archives\.yaml: archives\.oc20_s2ef_train_2M\.frames\.train: "
    ):
        load_catalog(root=pipeline_copy)


def test_a_yaml_syntax_error_names_the_file_line_and_column(pipeline_copy: Path) -> None:
    path = pipeline_copy / "config" / "config.yaml"
    lines = path.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("seeds:"))
    lines[row] = "seeds: [0"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_registry({"scale": "smoke"}, root=pipeline_copy)
    message = str(caught.value)
    assert "\n" not in message
    assert re.match(rf"^{re.escape(str(path))}: line \d+, column \d+: not valid YAML: ", message)
    assert f"(while parsing a flow sequence at line {row + 1}, column 8)" in message


def test_a_missing_key_is_named_without_dumping_the_experiment(tmp_path: Path) -> None:
    """A required key missing from an experiment names the key, not the whole resolved entry."""
    path = tmp_path / "mine.yaml"
    entry = {"extends": ["oc22/eqv2"], "dens": None, "source": "a user's experiment"}
    path.write_text(yaml.safe_dump({"experiments": {"oc22/mine": entry}}))
    with pytest.raises(ConfigError) as error:
        load_registry({"scale": "mini", "extra_experiments": [str(path)]})
    message = str(error.value)
    assert message.endswith(
        "experiments.oc22/mine.resources: 'runtime_hours' is a required property"
    )
    assert "value_sources" not in message and len(message) < 300


def test_one_gpu_share_trains_with_the_per_gpu_batch_and_refuses_an_uneven_split(
    pipeline_copy: Path,
) -> None:
    """one_gpu_share (the rehearsal): a run's batches are its official config's per-GPU ones;
    a global batch that its GPUs do not divide is refused naming the scale file and the key."""
    path = pipeline_copy / "config" / "scales" / "paper.yaml"
    document = yaml.safe_load(path.read_text())
    document["one_gpu_share"] = True
    path.write_text(yaml.safe_dump(document))
    registry = load_registry({"scale": "paper"}, root=pipeline_copy)
    optim = registry.resolve("oc20-2m/eqv2-dens-e12")["optim"]  # 64 on 16 V100s
    assert (optim["batch_size"], optim["eval_batch_size"]) == (4, 4)
    assert registry.resolve("md17-aspirin/equiformer-l2")["optim"]["batch_size"] == 8  # 1 GPU
    document["optim"] = {"oc20": {"batch_size": 100}}
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(
        ConfigError,
        match=r"config/scales/paper\.yaml: one_gpu_share: optim\.batch_size 100 is not a "
        r"multiple of the experiment's 16 GPUs",
    ):
        load_registry({"scale": "paper"}, root=pipeline_copy).resolve("oc20-2m/eqv2-dens-e12")
