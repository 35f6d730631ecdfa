"""Learning curves (dens.pipeline.curves) and the HTML report (dens.pipeline.report) from
hand-written run files; the smoke pipeline test builds both from real runs."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from dens.errors import ConfigError
from dens.pipeline import paths
from dens.pipeline.curves import METRICS, curve_inputs, curve_tables, draw_curves, read_curves
from dens.pipeline.registry import load_registry
from dens.pipeline.report import write_report
from dens.pipeline.tables.build import build_table
from dens.pipeline.tables.render import to_html

LOG_FIELDS = ["epoch", "step", "kind", "val_energy_mae_meV", "val_forces_mae_meV_per_A"]
Row = tuple[int, int, str, float, float]


def write_log(root: Path, log: Path, rows: list[Row]) -> None:
    path = root / log
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LOG_FIELDS)
        writer.writerows(rows)


def fill_logs(root: Path, registry, table: str) -> dict[Path, list[Row]]:
    """Three epochs of 10 steps per log, validated at each end and at step 5 of the first."""
    written = {}
    for index, log in enumerate(curve_inputs(registry, table)):
        rows = [(1, 5, "mid_epoch", 120.0 + index, 60.0 + index)]
        for epoch in (1, 2, 3):
            rows.append((epoch, 10 * epoch, "epoch", 100.0 + index - epoch, 50.0 + index / epoch))
        write_log(root, log, rows)
        written[log] = rows
    return written


def test_curves_read_every_trained_runs_log(pipeline_copy: Path) -> None:
    registry = load_registry({"scale": "smoke", "seeds": [0, 1]}, root=pipeline_copy)
    written = fill_logs(pipeline_copy, registry, "table1b")
    data = read_curves(registry, "table1b", pipeline_copy)
    assert len(data) == len(written) * 4 * len(METRICS)  # every row, inside epochs too
    assert set(data["seed"]) == {0, 1}
    assert set(data["DeNS"]) == {"with DeNS", "without DeNS"}
    log = paths.run("smoke", "oc20-2m/eqv2-dens-e12", 1).log
    forces = data[
        (data["seed"] == 1)
        & (data["experiment"] == "eqv2-dens-e12")
        & (data["metric"] == METRICS["val_forces_mae_meV_per_A"])
    ]
    assert list(forces["value"]) == [row[4] for row in written[log]]
    assert list(forces["step"]) == [5, 10, 20, 30]


def test_curves_figure_is_written_as_png_and_pdf(pipeline_copy: Path, tmp_path: Path) -> None:
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    fill_logs(pipeline_copy, registry, "table3")
    written = draw_curves(registry, "table3", tmp_path / "curves" / "table3.png", pipeline_copy)
    assert [p.suffix for p in written] == [".png", ".pdf"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written[1].read_bytes()[:5] == b"%PDF-"


def test_curves_name_a_missing_log_and_refuse_settings_tables(pipeline_copy: Path) -> None:
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    with pytest.raises(ConfigError, match="eqv2-e12/seed0/log.csv"):
        read_curves(registry, "table1a", pipeline_copy)
    with pytest.raises(ConfigError, match="settings table"):
        curve_inputs(registry, "table7")
    assert "table7" not in curve_tables(registry) and "table4" in curve_tables(registry)


def test_html_table_escapes_and_keeps_every_line(pipeline_copy: Path) -> None:
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    table = build_table(registry, "table7")
    fragment = to_html(table)
    assert fragment.count("<table>") == len(table.parts)
    lines = sum(len(method) for part in table.parts for _, ms in part.blocks for method in ms)
    assert fragment.count("<tr") >= lines
    assert "Å" in fragment and "<script" not in fragment


def test_report_needs_its_figures(pipeline_copy: Path) -> None:
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    with pytest.raises(ConfigError, match="figure3.png: figure not found"):
        write_report(registry, pipeline_copy / "report.html", pipeline_copy)


def test_report_command_names_a_missing_figure(pipeline_copy: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dens", "report", "--scale", "smoke", "--out", "r.html"],
        cwd=pipeline_copy,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "figure not found" in result.stderr
