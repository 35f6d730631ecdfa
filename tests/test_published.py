"""The published checkpoints' configuration (config/published.yaml, dens.pipeline.published), the
IS2RE validation splits they relax, and the data generator's promise that adding those splits leaves
every other split as it was. The target end to end: tests/test_pipeline_smoke.py."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from dens.data import catalysts
from dens.errors import ConfigError
from dens.pipeline import paths
from dens.pipeline.challenges import challenge_for
from dens.pipeline.published import AVERAGE, in_all, load_published
from dens.pipeline.registry import Registry, load_registry
from dens.pipeline.submission import challenge_split
from dens.pipeline.tables.published import build_published_table, provenance_summary, table_inputs
from dens.pipeline.tables.read import MetricsError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke() -> Registry:
    return load_registry({"scale": "smoke"}, root=REPO)


def test_published_checkpoints_are_the_readme_table(smoke: Registry) -> None:
    """The four checkpoints of the DeNS README, imported as the experiments of their paper rows,
    with the paper's numbers; OC20 as the average over its four val sub-splits."""
    published = load_published(smoke)
    assert published.tolerance == 0.01
    experiments = {name: c.experiment for name, c in published.checkpoints.items()}
    assert experiments == {
        "eq2_dens_epochs_12_2M": "oc20-2m/eqv2-dens-e12",
        "eq2_dens_epochs_30_2M": "oc20-2m/eqv2-dens-e30",
        "eq2_dens_allmd": "oc20-all-md/eqv2-dens-160m",
        "eq2_dens_oc22": "oc22/eqv2-dens-127m",
    }
    paper = {name: c.paper for name, c in published.checkpoints.items()}
    assert paper["eq2_dens_epochs_12_2M"][AVERAGE] == {
        "forces_mae_meV_per_A": "19.09",
        "energy_mae_meV": "269",
    }
    assert paper["eq2_dens_allmd"][AVERAGE] == {
        "forces_mae_meV_per_A": "14.0",
        "energy_mae_meV": "222",
    }
    assert paper["eq2_dens_oc22"]["val_ood"] == {
        "forces_mae_meV_per_A": "27.11",
        "energy_mae_meV": "533.0",
    }
    relaxed = [name for name, c in published.checkpoints.items() if c.relax]
    assert relaxed == ["eq2_dens_allmd", "eq2_dens_oc22"]
    references = {name: c.energy_reference for name, c in published.checkpoints.items()}
    assert references["eq2_dens_oc22"] == "oc22_linfit_coeffs"


def test_published_is_part_of_all_where_it_can_be_downloaded(smoke: Registry) -> None:
    assert not in_all(smoke)
    mirror = {**smoke.options, "mirror": "http://127.0.0.1:9"}
    assert in_all(dataclasses.replace(smoke, options=mirror))
    paper = yaml.safe_load((REPO / "config/scales/paper.yaml").read_text())
    assert in_all(dataclasses.replace(smoke, scale=paper))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("eq2_dens_oc22.experiment", "oc22/nope", "eq2_dens_oc22.experiment"),
        ("eq2_dens_oc22.evaluate", ["val_x"], "'val_x' is no split of oc22"),
        ("eq2_dens_epochs_12_2M.relax", True, "oc20-2m has no relax_val splits"),
        ("eq2_dens_oc22.energy_reference", "eq2_dens_allmd", "no npz archive"),
        ("oc20_s2ef_md", {}, "oc20_s2ef_md"),
        ("eq2_dens_oc22.paper.val_x", {"energy_mae_meV": "1"}, "paper.val_x"),
        ("eq2_dens_oc22.paper.val_id.energy_mae_meV", 391.6, "is not of type 'string'"),
    ],
)
def test_a_bad_published_entry_is_refused_naming_it(
    smoke: Registry, tmp_path: Path, key: str, value: object, message: str
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "config", root / "config")
    shutil.copytree(REPO / "workflow" / "schemas", root / "workflow" / "schemas")
    document = yaml.safe_load((REPO / "config" / "published.yaml").read_text())
    *parents, last = key.split(".")
    entry = document["checkpoints"]
    for part in parents:
        entry = entry[part]
    entry[last] = value or copy.deepcopy(document["checkpoints"]["eq2_dens_oc22"])
    (root / "config" / "published.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match="config/published.yaml") as caught:
        load_published(dataclasses.replace(smoke, root=root))
    assert message in str(caught.value)


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def test_the_published_table_reads_metrics_files_only(smoke: Registry, tmp_path: Path) -> None:
    """The table takes each checkpoint's sha256 from its metrics.json (``imported_from``, which
    dens evaluate copies from the imported best.pt): no checkpoint is read, none is an input."""
    registry = dataclasses.replace(smoke, root=tmp_path)
    published = load_published(smoke)
    inputs = table_inputs(registry, published)
    assert inputs and not any(path.suffix == ".pt" for path in inputs)
    for name, checkpoint in published.checkpoints.items():
        split = {"forces_mae_meV_per_A": 20.0, "energy_mae_meV": 250.0, "ewt": 0.1}
        metrics = {**split, "splits": dict.fromkeys(checkpoint.evaluate, split)}
        _write_json(
            tmp_path / paths.published_run("smoke", name).published("evaluate"),
            {**metrics, "imported_from": {"sha256": f"sha-of-{name}"}},
        )
        relax = {"metrics_source": "local labels", **split, "splits": {"id": split}}
        _write_json(tmp_path / paths.published_run("smoke", name).published("relax"), relax)
        provenance = {"dataset": checkpoint.dataset, "method": "EMT", "seed": 0, "splits": {}}
        _write_json(tmp_path / paths.dataset("smoke", checkpoint.dataset).provenance, provenance)
    table = build_published_table(registry, published)
    shas = {(r["checkpoint"], r["checkpoint_sha256"]) for r in table.records}
    assert shas == {(name, f"sha-of-{name}") for name in published.checkpoints}
    first = next(iter(published.checkpoints))
    metrics_file = tmp_path / paths.published_run("smoke", first).published("evaluate")
    _write_json(metrics_file, {**json.loads(metrics_file.read_text()), "imported_from": None})
    with pytest.raises(MetricsError, match=f"{metrics_file}: no imported_from.sha256"):
        build_published_table(registry, published)


def test_provenance_names_the_generator_or_the_archives_and_their_checksums() -> None:
    generated = {
        "dataset": "mini-OC22",
        "method": "EMT",
        "seed": 0,
        "splits": {"val_id": {"rows": 40}, "val_ood": {"rows": 38}},
    }
    assert provenance_summary(generated, ["val_id"]) == (
        "mini-OC22 generated with EMT (seed 0): val_id 40 rows"
    )
    downloaded = {
        "dataset": "oc22",
        "frames": {"val_id": 394727},
        "archives": {
            "oc22_s2ef_total_lmdbs": {
                "splits": ["train", "val_id"],
                "checksum": {"algorithm": "md5", "digest": "ebea523c6f8d61248a37b4dd660b11e6"},
            },
            "oc22_is2re_total_lmdbs": {"splits": ["is2re_val_id"], "checksum": None},
        },
    }
    assert provenance_summary(downloaded, ["val_id"]) == (
        "oc22: val_id 394727 rows; from oc22_s2ef_total_lmdbs (md5 "
        "ebea523c6f8d61248a37b4dd660b11e6)"
    )


@pytest.mark.parametrize(
    ("family", "split", "expected"),
    [("oc20", "is2re_val_ood_cat", "ood_cat"), ("oc22", "is2re_val_ood", "ood")],
)
def test_is2re_validation_files_name_their_challenge_split(family, split, expected) -> None:
    """A relax_val split file is scored as the challenge split its name gives (OC22's val_ood
    rows carry the held-out category, ood_ads ..., which is no OC22 split)."""
    challenge = challenge_for(family, "is2re")
    assert challenge_split(split, {"category": "ood_ads"}, challenge, "here") == expected


def _rows(path: Path) -> list[tuple]:
    """The rows of a split folder (its shards in order) as comparable tuples."""
    from dens.data.split_folder import split_rows

    return [
        (row.numbers.tobytes(), row.positions.tobytes(), row.energy, row.forces.tobytes())
        + tuple(sorted(row.key_value_pairs.items()))
        for _, row in split_rows(path)
    ]


def test_is2re_validation_splits_leave_the_other_splits_as_they_were(tmp_path: Path) -> None:
    """The relax_val splits draw their systems from streams of their own and come after the
    others in the family's table (sids): the smoke and mini data of every other split, and so
    every trained run's metrics, are the same with them as without them."""
    smoke = yaml.safe_load((REPO / "config/scales/smoke.yaml").read_text())["data"]["oc22"]
    base = {
        "name": "oc22",
        "family": "oc22",
        **smoke,
        "train_systems": 1,
        "splits": {"train": "train", "val": ["val_id"], "relax": ["is2re_test_ood"]},
    }
    with_val = copy.deepcopy(base)
    with_val["splits"]["relax_val"] = ["is2re_val_id", "is2re_val_ood"]
    catalysts.generate_catalysts("oc22", base, tmp_path / "without")
    catalysts.generate_catalysts("oc22", with_val, tmp_path / "with")
    for split in ("train", "val_id", "is2re_test_ood"):
        assert _rows(tmp_path / "with" / split) == _rows(tmp_path / "without" / split), split
    for split in ("is2re_val_id", "is2re_val_ood"):
        rows = _rows(tmp_path / "with" / split)
        assert len(rows) == smoke["relax_val_systems"]
        assert all(dict(row[4:])["sid"] >= 7 * catalysts.SID_STRIDE for row in rows)
    without_size = {k: v for k, v in with_val.items() if k != "relax_val_systems"}
    with pytest.raises(ConfigError, match="relax_val_systems"):
        catalysts.generate_catalysts("oc22", without_size, tmp_path / "none")
