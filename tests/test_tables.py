"""Tables are built only from metrics files runs wrote, with the paper's numbers beside them: a
tidy CSV of numbers, Markdown and LaTeX for reading."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dens.models import PENDING_FAMILIES
from dens.pipeline import paths
from dens.pipeline.challenges import ServerResultsError
from dens.pipeline.registry import MOLECULES, load_registry
from dens.pipeline.tables import write_table
from dens.pipeline.tables.read import MetricsError, table_inputs


def write_metrics(root: Path, experiment: str, seed: int = 0, **metrics: float) -> None:
    path = root / "results" / "smoke" / "runs" / experiment / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def experiments_of(registry, table: str) -> list[str]:
    """The experiments whose metrics a table job reads, in row order
    (dens.pipeline.tables.read.table_inputs: results/{scale}/runs/{experiment}/seed{S}/...)."""
    return list(dict.fromkeys("/".join(path.parts[3:5]) for path in table_inputs(registry, table)))


def cells(rows: list[dict[str, str]], row: str, column: str) -> dict[str, dict[str, str]]:
    """One table row's cells of one column, by molecule."""
    return {r["molecule"]: r for r in rows if r["row"] == row and r["column"] == column}


def train_every_molecule(root: Path) -> None:
    """The copy's smoke scale trains all eight MD17 molecules (md17_molecules removed, as at
    mini and paper)."""
    path = root / "config" / "scales" / "smoke.yaml"
    document = yaml.safe_load(path.read_text())
    del document["md17_molecules"]
    path.write_text(yaml.safe_dump(document))


def fill_table4(root: Path, seeds: list[int]) -> dict[tuple[str, int], dict[str, float]]:
    """Metrics of every run of Table 4 (all eight molecules) at the copy's smoke scale."""
    train_every_molecule(root)
    registry = load_registry({"scale": "smoke", "seeds": seeds}, root=root)
    written = {}
    for index, experiment in enumerate(experiments_of(registry, "table4")):
        for seed in seeds:
            metrics = {
                "energy_mae_meV": 10.0 + index + seed / 3,
                "forces_mae_meV_per_A": 20.0 + index / 7 + seed * 0.1,
                "train_hours": 0.01234 + seed,
                "num_parameters": 1_234_567 + seed,
            }
            write_metrics(root, experiment, seed, **metrics)
            written[(experiment, seed)] = metrics
    return written


def test_table4_csv_holds_the_metrics_files_numbers_at_full_precision(
    pipeline_copy: Path,
) -> None:
    written = fill_table4(pipeline_copy, [0])
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    csv_path, md_path, tex_path = write_table(registry, "table4", pipeline_copy / "out")
    assert (csv_path.suffix, md_path.suffix, tex_path.suffix) == (".csv", ".md", ".tex")
    rows = read_rows(csv_path)
    assert list(rows[0])[:9] == [
        "row", "molecule", "column", "unit", "ours", "ours_std", "n_seeds", "paper", "status"
    ]  # fmt: skip
    l2 = cells(rows, "Equiformer (Lmax=2) + DeNS", "forces")
    assert set(l2) == set(MOLECULES)
    for molecule, cell in l2.items():
        experiment = f"md17-{molecule}/equiformer-l2-dens"
        assert float(cell["ours"]) == written[(experiment, 0)]["forces_mae_meV_per_A"]
        assert cell["ours_std"] == "" and cell["n_seeds"] == "1"
        assert cell["status"] == "single seed" and cell["experiment"] == experiment
        assert cell["origin"] == f"results/smoke/runs/{experiment}/seed0/metrics.json"
        assert cell["unit"] == "meV/Å"
    assert float(l2["aspirin"]["paper"]) == 5.7
    schnet = cells(rows, "SchNet", "forces")["aspirin"]
    assert schnet["ours"] == "" and float(schnet["paper"]) == 58.5
    assert schnet["status"] == "cited: paper only" and schnet["origin"].startswith("cited")
    assert cells(rows, "PaiNN", "energy")["benzene"]["paper"] == ""  # the paper has none
    params = cells(rows, "Equiformer (Lmax=2)", "parameters")[""]
    assert float(params["ours"]) == 1_234_567 and float(params["paper"]) == 3.5e6
    assert params["experiment"] == "md17-{molecule}/equiformer-l2"
    for row in rows:  # numbers only: every filled ours/paper/ours_std cell is a float
        for key in ("ours", "ours_std", "paper"):
            if row[key]:
                float(row[key])


def test_two_seeds_give_mean_and_sample_std(pipeline_copy: Path) -> None:
    written = fill_table4(pipeline_copy, [0, 1])
    registry = load_registry({"scale": "smoke", "seeds": [0, 1]}, root=pipeline_copy)
    csv_path, md_path, tex_path = write_table(registry, "table4", pipeline_copy / "out")
    rows = read_rows(csv_path)
    experiment = "md17-ethanol/equiformer-l3"
    cell = cells(rows, "Equiformer (Lmax=3)", "energy")["ethanol"]
    values = [written[(experiment, seed)]["energy_mae_meV"] for seed in (0, 1)]
    assert float(cell["ours"]) == statistics.mean(values)
    assert float(cell["ours_std"]) == statistics.stdev(values)
    assert cell["n_seeds"] == "2" and cell["status"] == "measured"
    assert cell["origin"] == f"results/smoke/runs/{experiment}/seed{{0,1}}/metrics.json"
    hours = cells(rows, "Equiformer (Lmax=3)", "training time per molecule")[""]
    per_seed = [
        statistics.mean(written[(f"md17-{m}/equiformer-l3", s)]["train_hours"] for m in MOLECULES)
        for s in (0, 1)
    ]
    assert float(hours["ours"]) == statistics.mean(per_seed)
    assert float(hours["ours_std"]) == statistics.stdev(per_seed)
    mean, std = statistics.mean(values), statistics.stdev(values)
    assert f"{mean:.1f} ± {std:.1f}" in md_path.read_text()
    assert rf"{mean:.1f} $\pm$ {std:.1f}" in tex_path.read_text()
    assert "†" not in md_path.read_text() and r"\dagger" not in tex_path.read_text()


def test_table4_reads_well(pipeline_copy: Path) -> None:
    written = fill_table4(pipeline_copy, [0])
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    _, md_path, tex_path = write_table(registry, "table4", pipeline_copy / "out")
    tex = tex_path.read_text()
    assert max(len(line) for line in tex.splitlines()) <= 200
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    assert r"salicylic acid" in tex and "&" in tex and r"$^\dagger$ single seed" in tex
    assert "Liao et al., TMLR 2024" in tex and "measured at scale smoke" in tex
    md = md_path.read_text().splitlines()
    forces = [
        f"{written[(f'md17-{molecule}/equiformer-l2-dens', 0)]['forces_mae_meV_per_A']:.1f}†"
        for molecule in MOLECULES
    ]
    ours = md.index("| Equiformer (Lmax=2) + DeNS | ours (smoke) | " + " | ".join(forces) + " |")
    assert md[ours + 1].startswith("| | paper | 5.7 | 6.1 | 2.6 |")
    assert "| SchNet | paper (cited) | 16.0 | 3.5 |" in md_path.read_text()
    assert "| Equiformer (Lmax=2) | ours (smoke) | 0.012† | 1.23M† |" in md
    assert "| | paper | 17 | 3.50M |" in md
    assert "† single seed" in md_path.read_text()


def test_molecules_the_scale_does_not_train_say_not_run_and_why(pipeline_copy: Path) -> None:
    """config/scales/smoke.yaml md17_molecules [aspirin, ethanol]: Table 4 reads only their
    runs; the other molecules' cells say "not run" and the footnote why (never blank, never a
    missing-file error); per-method columns average the molecules trained. Fails on the old
    behaviour: table_inputs asks for 8 molecules and write_table wants benzene's metrics."""
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    read = experiments_of(registry, "table4")
    assert {e.split("/")[0] for e in read} == {"md17-aspirin", "md17-ethanol"} and len(read) == 8
    for index, experiment in enumerate(read):
        write_metrics(
            pipeline_copy, experiment, energy_mae_meV=1.0 + index, forces_mae_meV_per_A=2.0,
            train_hours=0.01 * (index + 1), num_parameters=1000,
        )  # fmt: skip
    csv_path, md_path, tex_path = write_table(registry, "table4", pipeline_copy / "out")
    rows = read_rows(csv_path)
    reason = (
        "scale smoke trains the MD17 molecules aspirin, ethanol only "
        "(config/scales/smoke.yaml md17_molecules)"
    )
    forces = cells(rows, "Equiformer (Lmax=2) + DeNS", "forces")
    assert set(forces) == set(MOLECULES)
    for molecule, cell in forces.items():
        if molecule in ("aspirin", "ethanol"):
            assert cell["status"] == "single seed" and float(cell["ours"]) == 2.0
        else:
            assert cell["status"] == f"not run: {reason}" and cell["ours"] == ""
            assert cell["origin"] == f"not run: {reason}" and float(cell["paper"]) > 0
    hours = cells(rows, "Equiformer (Lmax=2)", "training time per molecule")[""]
    l2 = [read.index(f"md17-{m}/equiformer-l2") for m in ("aspirin", "ethanol")]
    assert float(hours["ours"]) == statistics.mean(0.01 * (i + 1) for i in l2)
    md = md_path.read_text()
    assert "| Equiformer (Lmax=2) + DeNS | ours (smoke) | 2.0† | not run | 2.0† | not run |" in md
    assert f"not run: no metrics at this scale: {reason}." in md
    assert "the mean over the molecules trained here (aspirin, ethanol), not over all 8." in md
    assert r"ours (smoke) & 2.0$^\dagger$ & not run & 2.0$^\dagger$ & not run" in (
        tex_path.read_text()
    )


def test_ablation_tables_show_check_marks(pipeline_copy: Path) -> None:
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    for experiment in experiments_of(registry, "table6"):
        write_metrics(pipeline_copy, experiment, energy_mae_meV=1.0, forces_mae_meV_per_A=2.0)
    csv_path, md_path, tex_path = write_table(registry, "table6", pipeline_copy / "out")
    rows = [row for row in read_rows(csv_path) if row["molecule"] == "aspirin"]
    forces = [row for row in rows if row["column"] == "forces"]
    assert [row["force encoding"] for row in forces] == ["false", "true", "false", "true", "true"]
    per_block = 3 + 4 + 3 + 3 + 0
    assert tex_path.read_text().count(r"\checkmark") == 2 * per_block  # energy and forces blocks
    assert md_path.read_text().count("✓") == 2 * per_block


def test_a_missing_metrics_file_or_metric_is_named(pipeline_copy: Path) -> None:
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    with pytest.raises(
        MetricsError, match=r"md17-aspirin/equiformer-l2/seed0/metrics.json: metrics file"
    ):
        write_table(registry, "table5", pipeline_copy / "out")
    for experiment in experiments_of(registry, "table5"):
        write_metrics(pipeline_copy, experiment, energy_mae_meV=1.0)
    with pytest.raises(MetricsError, match="no metric 'forces_mae_meV_per_A'"):
        write_table(registry, "table5", pipeline_copy / "out")


def test_a_missing_seed_is_named(pipeline_copy: Path) -> None:
    fill_table4(pipeline_copy, [0])
    registry = load_registry({"scale": "smoke", "seeds": [0, 1]}, root=pipeline_copy)
    with pytest.raises(MetricsError, match=r"equiformer-l2/seed1/metrics.json: metrics file"):
        write_table(registry, "table4", pipeline_copy / "out")


def test_settings_table_shows_configured_values_of_the_scale(pipeline_copy: Path) -> None:
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    csv_path, md_path, tex_path = write_table(registry, "table9", pipeline_copy / "out")
    rows = {(row["row"], row["column"]): row for row in read_rows(csv_path)}
    sigma = rows[("sigma (Å)", "toluene")]
    assert float(sigma["ours"]) == float(sigma["paper"]) == 0.025
    assert sigma["key"] == "dens.sigma" and sigma["experiment"] == "md17-toluene/equiformer-l2-dens"
    assert float(rows[("p_DeNS", "aspirin")]["ours"]) == 0.25
    assert "target@aspirin.sh" in rows[("energy coefficient lambda_E", "aspirin")]["source"]
    assert len(rows) == 6 * len(MOLECULES)
    md = md_path.read_text().splitlines()
    ours = md.index(
        "| sigma (Å) | ours (smoke) | " + " | ".join(["0.05"] * 6) + " | 0.025 | 0.05 |"
    )
    assert md[ours + 1] == "| | paper | " + " | ".join(["0.05"] * 6) + " | 0.025 | 0.05 |"
    assert "target@<column>.sh" in md_path.read_text()
    assert tex_path.read_text().startswith(r"\begin{table}")


# -- OC20/OC22 tables: test columns, "not run", "awaiting server", device-hours -------------------
RUN_160M = "oc20-all-md/eqv2-dens-160m"
OC22_RUNS = ("oc22/eqv2-122m", "oc22/eqv2-dens-127m")


@pytest.fixture
def eqv2_implemented(monkeypatch: pytest.MonkeyPatch) -> None:
    """EquiformerV2 trainable and eSCN not, whatever dens.models says today."""
    monkeypatch.delitem(PENDING_FAMILIES, "equiformer_v2", raising=False)
    monkeypatch.setitem(PENDING_FAMILIES, "escn", "eSCN is not implemented yet (test)")


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def run_file(root: Path, experiment: str, name: str) -> Path:
    return root / "results" / "smoke" / "runs" / experiment / "seed0" / name


def server_results(challenge: str, splits: dict[str, float]) -> dict:
    """A server results file: energy MAE (eV) per split, force MAE 0.0125 eV/Å."""
    return {
        "challenge": challenge,
        "units": {"energy": "eV", "forces": "eV/Å"},
        "splits": {s: {"energy_mae": e, "forces_mae": 0.0125} for s, e in splits.items()},
    }


def table2(root: Path) -> tuple[dict[str, dict[str, str]], str, str]:
    registry = load_registry({"scale": "smoke"}, root=root)
    csv_path, md_path, tex_path = write_table(registry, "table2", root / "out")
    rows = {
        r["column"]: r for r in read_rows(csv_path) if r["row"].startswith("EquiformerV2 + DeNS")
    }
    return rows, md_path.read_text(), tex_path.read_text()


def test_table2_test_columns_from_local_labels_then_the_server(
    pipeline_copy: Path, eqv2_implemented: None
) -> None:
    write_metrics(
        pipeline_copy,
        RUN_160M,
        energy_mae_meV=301.6,
        forces_mae_meV_per_A=41.3,
        train_samples_per_s_per_device=12.5,
        train_device_hours=0.5,
    )
    local = {
        "metrics_source": "local labels",
        "energy_mae_meV": 250.4,
        "forces_mae_meV_per_A": 30.3,
    }
    write_json(run_file(pipeline_copy, RUN_160M, "test/metrics.json"), local)
    relaxed = {"metrics_source": "local labels", "energy_mae_meV": 350.2}
    write_json(run_file(pipeline_copy, RUN_160M, "relax/metrics.json"), relaxed)
    rows, md, tex = table2(pipeline_copy)
    assert float(rows["S2EF val energy"]["ours"]) == 301.6
    assert float(rows["S2EF test energy"]["ours"]) == 250.4
    assert float(rows["S2EF test forces"]["paper"]) == 13.3
    assert rows["S2EF test energy"]["origin"] == (
        f"results/smoke/runs/{RUN_160M}/seed0/test/metrics.json (local labels)"
    )
    relax = rows["IS2RE test energy"]
    assert float(relax["ours"]) == 350.2 and relax["n_seeds"] == "1"
    assert float(relax["paper"]) == 293
    assert rows["throughput"]["unit"] == "samples/s per CPU device"  # no train_gpu_hours
    assert float(rows["throughput"]["ours"]) == 12.5
    assert "| ours (smoke) | 12.5†‡ | 302† | 41.3† |" in md
    assert "| ours (smoke) | 250† | 30.3† | 350† |" in md
    assert "‡ trained without a GPU: throughput in samples/s per CPU device." in md
    assert "S2EF test columns from local labels" in md
    assert "IS2RE columns from local labels" in md
    assert "| GemNet-OC-L-E | paper (cited) | 7.5 | 239 | 22.1 |" in md
    assert r"12.5$^\dagger$$^\ddagger$" in tex and r"& 350$^\dagger$ \\" in tex
    assert r"GemNet-OC-L-E & paper (cited) & 7.5 & 239 & 22.1 \\" in tex

    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    server = run_file(pipeline_copy, RUN_160M, "test/server_results.json")
    assert paths.run("smoke", RUN_160M, 0).server_results() not in table_inputs(registry, "table2")
    write_json(
        server,
        server_results(
            "oc20_s2ef", {"id": 0.2, "ood_ads": 0.21, "ood_cat": 0.22, "ood_both": 0.23}
        ),
    )
    assert paths.run("smoke", RUN_160M, 0).server_results() in table_inputs(registry, "table2")
    rows, md, _ = table2(pipeline_copy)
    assert float(rows["S2EF test energy"]["ours"]) == pytest.approx(215.0)
    assert float(rows["S2EF test forces"]["ours"]) == pytest.approx(12.5)
    assert rows["S2EF test energy"]["origin"].endswith(
        "test/server_results.json (evaluation server)"
    )
    assert "S2EF test columns from the evaluation server's results" in md


def test_table2_awaits_the_server_without_labels(
    pipeline_copy: Path, eqv2_implemented: None
) -> None:
    write_metrics(
        pipeline_copy,
        RUN_160M,
        energy_mae_meV=1.0,
        forces_mae_meV_per_A=2.0,
        train_samples_per_s_per_device=3.0,
        train_gpu_hours=4.0,
    )
    write_json(run_file(pipeline_copy, RUN_160M, "test/metrics.json"), {"metrics_source": None})
    write_json(run_file(pipeline_copy, RUN_160M, "relax/metrics.json"), {"metrics_source": None})
    rows, md, tex = table2(pipeline_copy)
    for column in ("S2EF test energy", "S2EF test forces", "IS2RE test energy"):
        assert rows[column]["status"] == "awaiting server" and rows[column]["ours"] == ""
    assert rows["throughput"]["unit"] == "samples/GPU/s"  # trained on a GPU
    assert "| ours (smoke) | awaiting server | awaiting server | awaiting server |" in md
    assert "‡" not in md
    assert (
        "write its results to results/smoke/runs/<experiment>/seed<S>/test/server_results.json"
        in md
    )
    assert "relax/submission.npz to the evaluation server" in md
    assert r"awaiting server & awaiting server & awaiting server \\" in tex
    relax_server = run_file(pipeline_copy, RUN_160M, "relax/server_results.json")
    splits = {"id": 0.3, "ood_ads": 0.31, "ood_cat": 0.32, "ood_both": 0.33}
    write_json(
        relax_server,
        {
            "challenge": "oc20_is2re",
            "units": {"energy": "eV"},
            "splits": {s: {"energy_mae": e} for s, e in splits.items()},
        },
    )
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    assert paths.run("smoke", RUN_160M, 0).server_results("relax") in table_inputs(
        registry, "table2"
    )
    rows, md, _ = table2(pipeline_copy)
    assert float(rows["IS2RE test energy"]["ours"]) == pytest.approx(315.0)
    assert "IS2RE columns from the evaluation server's results" in md
    server = run_file(pipeline_copy, RUN_160M, "test/server_results.json")
    write_json(server, server_results("oc20_s2ef", {"id": 0.2}))
    with pytest.raises(ServerResultsError, match=r"server_results.json: splits: missing ood_ads"):
        table2(pipeline_copy)


def test_table3_reads_id_and_ood_splits(pipeline_copy: Path, eqv2_implemented: None) -> None:
    for index, experiment in enumerate(OC22_RUNS):
        splits = {
            "val_id": {"energy_mae_meV": 400.0 + index, "forces_mae_meV_per_A": 20.0},
            "val_ood": {"energy_mae_meV": 600.0 + index, "forces_mae_meV_per_A": 30.0},
        }
        write_metrics(pipeline_copy, experiment, num_parameters=1_250_000, splits=splits)
        test = {
            "metrics_source": "local labels",
            "splits": {
                "id": {"energy_mae_meV": 250.0 + index, "forces_mae_meV_per_A": 21.0},
                "ood": {"energy_mae_meV": 650.0 + index, "forces_mae_meV_per_A": 33.0},
            },
        }
        write_json(run_file(pipeline_copy, experiment, "test/metrics.json"), test)
        relaxed = {
            "metrics_source": "local labels",
            "splits": {"id": {"energy_mae_meV": 1000.0 + index}, "ood": {"energy_mae_meV": 1500.0}},
        }
        write_json(run_file(pipeline_copy, experiment, "relax/metrics.json"), relaxed)
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    csv_path, md_path, _ = write_table(registry, "table3", pipeline_copy / "out")
    rows = {
        (r["row"][:20], r["column"]): r for r in read_rows(csv_path) if r["row"].startswith("Equi")
    }
    dens = "EquiformerV2 + DeNS "
    assert float(rows[(dens, "val energy OOD")]["ours"]) == 601.0
    assert float(rows[(dens, "test energy ID")]["ours"]) == 251.0
    assert float(rows[(dens, "test forces OOD")]["ours"]) == 33.0
    assert float(rows[(dens, "test forces OOD")]["paper"]) == 29.31
    assert float(rows[(dens, "parameters")]["paper"]) == 127e6
    assert float(rows[(dens, "IS2RE test energy ID")]["ours"]) == 1001.0
    assert float(rows[(dens, "IS2RE test energy OOD")]["paper"]) == 1282
    md = md_path.read_text()
    assert "| ours (smoke) | 1.2M† | 401.0† | 601.0† | 20.00† | 30.00† |" in md
    assert "| | paper | 122M | 433 | 629 | 22.88 | 30.70 |" in md  # the paper's trailing zero
    assert "| eSCN | paper (cited) | 350 | 789 | 23.8 | 35.7 |" in md
    write_json(run_file(pipeline_copy, OC22_RUNS[1], "test/metrics.json"), {"metrics_source": "x"})
    with pytest.raises(
        MetricsError, match=r"eqv2-dens-127m/seed0/test/metrics.json: no split 'id'"
    ):
        write_table(registry, "table3", pipeline_copy / "out")


def test_pending_model_families_say_not_run(pipeline_copy: Path, monkeypatch) -> None:
    monkeypatch.setitem(PENDING_FAMILIES, "equiformer_v2", "EquiformerV2 is not here (test)")
    monkeypatch.setitem(PENDING_FAMILIES, "escn", "eSCN is not here (test)")
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    assert table_inputs(registry, "table1a") == [] and table_inputs(registry, "table3") == []
    csv_path, md_path, tex_path = write_table(registry, "table1a", pipeline_copy / "out")
    rows = read_rows(csv_path)
    assert len(rows) == 8 * 4 and all(row["ours"] == "" for row in rows)
    escn = [row for row in rows if row["row"].startswith("eSCN")]
    assert {row["status"] for row in escn} == {"not run: eSCN is not here (test)"}
    md = md_path.read_text()
    assert (
        "| eSCN + DeNS (20 epochs) | ours (smoke) | not run | not run | not run | not run |" in md
    )
    assert "| | paper | 19.14 | 268 | 52M | 1829 |" in md
    assert "EquiformerV2 is not here (test); eSCN is not here (test)." in md
    assert r"ours (smoke) & not run & not run & not run & not run \\" in tex_path.read_text()


def test_training_time_in_gpu_hours_or_cpu_device_hours(
    pipeline_copy: Path, eqv2_implemented: None
) -> None:
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    for index, experiment in enumerate(table_inputs(registry, "table1a")):
        name = str(experiment).split("/runs/")[1].rsplit("/seed", 1)[0]
        hours = {"train_gpu_hours": 10.0} if index == 0 else {"train_device_hours": 0.25}
        write_metrics(
            pipeline_copy, name, energy_mae_meV=1.0, forces_mae_meV_per_A=2.0,
            num_parameters=10, **hours,
        )  # fmt: skip
    csv_path, md_path, _ = write_table(registry, "table1a", pipeline_copy / "out")
    time = {r["row"]: r for r in read_rows(csv_path) if r["column"] == "training time"}
    assert time["EquiformerV2 (12 epochs)"]["unit"] == "GPU-hours"
    assert float(time["EquiformerV2 (12 epochs)"]["ours"]) == 10.0
    assert time["EquiformerV2 + DeNS (12 epochs)"]["unit"] == "CPU device-hours"
    assert float(time["EquiformerV2 + DeNS (12 epochs)"]["ours"]) == 0.25
    assert time["eSCN (20 epochs)"]["status"].startswith("not run")
    md = md_path.read_text()
    assert "| 10† |" in md and "| 0.25†‡ |" in md
    assert "‡ trained without a GPU: training time in CPU device-hours." in md


def test_tables_module_imports_no_torch() -> None:
    """The Snakefile imports the tables (dens.pipeline.tables.read.table_inputs) to build the DAG,
    and the report, the curves and the figures read only metrics files, training logs and the
    registry: none of them imports torch or the inference stack."""
    modules = ["dens.pipeline.tables", "dens.pipeline.report", "dens.pipeline.curves"]
    code = (
        f"import sys, {', '.join(modules)}, dens.pipeline.figures; "
        "stack = [m for m in ('torch', 'dens.inference', 'dens.evaluate') if m in sys.modules]; "
        "assert not stack, stack"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
