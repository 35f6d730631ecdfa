"""The smoke scale of the pipeline end to end: data -> training -> evaluation -> tables, figures,
learning curves and the HTML report, for the MD17 half and the OC20/OC22 half.

Runs the default target, `snakemake --profile profiles/local --config scale=smoke`, on a copy of
the repository (so the working tree's results/ is untouched), then opens the outputs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pipeline_copy import copy_repository, snakemake
from test_config import OC_RUNS as EVERY_OC_RUN

from dens.config import MOLECULES, load_registry
from dens.curves import curve_tables
from dens.figures import FIGURES


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default target (the report: every table, figure and learning curve) at scale smoke."""
    root = copy_repository(tmp_path_factory.mktemp("pipeline"))
    result = snakemake(root, "--profile", "profiles/local", "--config", "scale=smoke")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_every_md17_run_wrote_metrics_and_logs(smoke_run: Path) -> None:
    runs = smoke_run / "results" / "smoke" / "runs"
    metrics = sorted(runs.glob("md17-*/*/seed0/metrics.json"))
    assert len(metrics) == 8 * 11
    for path in metrics:
        values = json.loads(path.read_text())
        assert values["scale"] == "smoke" and values["n_test"] > 0
        assert values["forces_mae_meV_per_A"] > 0 and values["num_parameters"] > 0
        experiment = values["experiment"]
        assert (smoke_run / "results/smoke/logs/train" / f"{experiment}/seed0.log").is_file()
        assert (runs / experiment / "seed0" / "log.csv").is_file()


def test_tables_hold_the_measured_numbers(smoke_run: Path) -> None:
    tables = smoke_run / "results" / "smoke" / "tables"
    rows = read_csv(tables / "table4.csv")
    forces = {
        row["molecule"]: row
        for row in rows
        if row["row"] == "Equiformer (Lmax=2) + DeNS" and row["column"] == "forces"
    }
    assert set(forces) == set(MOLECULES)
    for molecule in MOLECULES:
        metrics = json.loads(
            (
                smoke_run
                / f"results/smoke/runs/md17-{molecule}/equiformer-l2-dens/seed0/metrics.json"
            ).read_text()
        )
        assert float(forces[molecule]["ours"]) == metrics["forces_mae_meV_per_A"]  # exact
        assert forces[molecule]["status"] == "single seed" and forces[molecule]["n_seeds"] == "1"
    schnet = [row for row in rows if row["row"] == "SchNet" and row["molecule"] == "aspirin"]
    assert schnet and all(row["ours"] == "" and row["paper"] for row in schnet)
    # 4 measured methods: energy and forces blocks, then training time and parameters
    assert (tables / "table4.md").read_text().count("| ours (smoke) |") == 4 * 3
    for name in ["table5", "table6", "table7", "table8", "table9"]:
        assert (tables / f"{name}.tex").read_text().startswith(r"\begin{table}")
        assert (tables / f"{name}.md").is_file()
        for row in read_csv(tables / f"{name}.csv"):
            for key in ("ours", "ours_std", "paper"):
                if row.get(key) and name not in ("table7", "table8"):  # 7, 8: text settings too
                    float(row[key])


# Every OC experiment (test_config) but the cited baselines, trained only on request.
CITED_BASELINES = {"oc20-all-md/eqv2-153m", "oc20-all-md/eqv2-31m"}
OC_RUNS = [run for run in EVERY_OC_RUN if run not in CITED_BASELINES]


def test_oc_runs_fill_tables_1_to_3(smoke_run: Path) -> None:
    runs = smoke_run / "results" / "smoke" / "runs"
    trained = {"/".join(path.parts[-4:-2]) for path in runs.glob("oc2*/*/seed0/metrics.json")}
    assert trained == set(OC_RUNS)
    metrics = json.loads((runs / "oc20-2m/eqv2-dens-e12/seed0/metrics.json").read_text())
    assert set(metrics["splits"]) == {"val_id", "val_ood_ads", "val_ood_cat", "val_ood_both"}
    tables = smoke_run / "results" / "smoke" / "tables"
    rows = read_csv(tables / "table1a.csv")
    forces = {row["row"]: row for row in rows if row["column"] == "forces"}
    assert float(forces["EquiformerV2 + DeNS (12 epochs)"]["ours"]) == pytest.approx(
        metrics["forces_mae_meV_per_A"]
    )
    escn = json.loads((runs / "oc20-2m/escn-e20/seed0/metrics.json").read_text())
    assert float(forces["eSCN (20 epochs)"]["ours"]) == pytest.approx(escn["forces_mae_meV_per_A"])
    for path in ("oc20-all-md/eqv2-dens-160m", "oc22/eqv2-dens-127m"):
        submission = runs / path / "seed0" / "test" / "submission.npz"
        assert submission.stat().st_size > 0
    for name in ("table1b", "table2", "table3"):
        assert (tables / f"{name}.tex").read_text().startswith(r"\begin{table}")


def test_report_gathers_every_table_figure_and_curve(smoke_run: Path) -> None:
    registry = load_registry({"scale": "smoke"}, root=smoke_run)
    results = smoke_run / "results" / "smoke"
    for name in FIGURES:
        assert (results / "figures" / f"{name}.png").stat().st_size > 10_000
    for name in curve_tables(registry):
        for ext in ("png", "pdf"):
            assert (results / "figures" / "curves" / f"{name}.{ext}").stat().st_size > 5_000
    report = (results / "report.html").read_text()
    for name in registry.tables:
        assert f"<h2 id='{name}'>" in report
    assert report.count("data:image/png;base64,") == len(FIGURES) + len(curve_tables(registry))
    assert "ours (smoke)" in report and "scale smoke" in report


def test_a_second_run_has_nothing_to_do(smoke_run: Path) -> None:
    result = snakemake(smoke_run, "-n", "--profile", "profiles/local", "--config", "scale=smoke")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr
