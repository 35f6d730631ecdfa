"""Tables are built only from metrics files runs wrote, with the paper's numbers beside them: a
tidy CSV of numbers, Markdown and LaTeX for reading."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from dens.config import MOLECULES, load_registry
from dens.tables import MetricsError, write_table


def write_metrics(root: Path, experiment: str, seed: int = 0, **metrics: float) -> None:
    path = root / "results" / "smoke" / "runs" / experiment / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def cells(rows: list[dict[str, str]], row: str, column: str) -> dict[str, dict[str, str]]:
    """One table row's cells of one column, by molecule."""
    return {r["molecule"]: r for r in rows if r["row"] == row and r["column"] == column}


def fill_table4(root: Path, seeds: list[int]) -> dict[tuple[str, int], dict[str, float]]:
    registry = load_registry({"scale": "smoke", "seeds": seeds}, root=root)
    written = {}
    for index, experiment in enumerate(registry.table_inputs("table4")["evaluate"]):
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


def test_ablation_tables_show_check_marks(pipeline_copy: Path) -> None:
    registry = load_registry({"scale": "smoke"}, root=pipeline_copy)
    for experiment in registry.table_inputs("table6")["evaluate"]:
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
    for experiment in registry.table_inputs("table5")["evaluate"]:
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
