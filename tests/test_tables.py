"""Tables are built only from metrics files runs wrote, with the paper's numbers beside them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dens.config import MOLECULES, load_registry
from dens.tables import MetricsError, write_table


def write_metrics(root: Path, experiment: str, **metrics: float) -> None:
    path = root / "results" / "smoke" / "runs" / experiment / "seed0" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_table4_puts_measured_numbers_beside_the_papers(pipeline_copy: Path) -> None:
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    for index, experiment in enumerate(registry.table_inputs("table4")["evaluate"]):
        write_metrics(
            pipeline_copy,
            experiment,
            energy_mae_meV=10.0 + index,
            forces_mae_meV_per_A=20.0 + index,
            train_hours=0.5,
            num_parameters=1_234_567,
        )
    csv_path, tex_path = write_table(registry, "table4", pipeline_copy / "out")
    rows = {row["row"]: row for row in read_rows(csv_path)}
    schnet, l2 = rows["SchNet"], rows["Equiformer (Lmax=2)"]
    assert schnet["aspirin forces paper"] == "58.50" and schnet["aspirin forces ours"] == "—"
    assert schnet["origin"].startswith("cited")
    assert l2["aspirin energy ours"] == "10.00" and l2["aspirin forces paper"] == "7.20"
    assert l2["parameters ours"] == "1.23M" and l2["parameters paper"] == "3.50M"
    assert l2["origin"] == "measured (smoke): md17-{molecule}/equiformer-l2"
    assert (
        r"\checkmark" not in tex_path.read_text() and "Equiformer (Lmax=2)" in tex_path.read_text()
    )


def test_ablation_tables_show_check_marks(pipeline_copy: Path) -> None:
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    for experiment in registry.table_inputs("table6")["evaluate"]:
        write_metrics(pipeline_copy, experiment, energy_mae_meV=1.0, forces_mae_meV_per_A=2.0)
    csv_path, tex_path = write_table(registry, "table6", pipeline_copy / "out")
    rows = read_rows(csv_path)
    assert [row["force encoding"] for row in rows] == ["", "yes", "", "yes", "yes"]
    assert tex_path.read_text().count(r"\checkmark") == 3 + 4 + 3 + 3 + 0


def test_a_missing_metrics_file_or_metric_is_named(pipeline_copy: Path) -> None:
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    with pytest.raises(
        MetricsError, match=r"md17-aspirin/equiformer-l2/seed0/metrics.json: metrics file"
    ):
        write_table(registry, "table5", pipeline_copy / "out")
    for experiment in registry.table_inputs("table5")["evaluate"]:
        write_metrics(pipeline_copy, experiment, energy_mae_meV=1.0)
    with pytest.raises(MetricsError, match="no metric 'forces_mae_meV_per_A'"):
        write_table(registry, "table5", pipeline_copy / "out")


def test_settings_table_shows_configured_values_of_the_scale(pipeline_copy: Path) -> None:
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    csv_path, _ = write_table(registry, "table9", pipeline_copy / "out")
    rows = {row["hyper-parameter"]: row for row in read_rows(csv_path)}
    assert rows["sigma (Å)"]["toluene ours (smoke)"] == "0.025"
    assert rows["sigma (Å)"]["toluene paper"] == "0.025"
    assert rows["p_DeNS"]["aspirin ours (smoke)"] == rows["p_DeNS"]["aspirin paper"] == "0.25"
    assert len(rows) == 6 and len(MOLECULES) == 8
