"""The smoke scale of the pipeline end to end: data -> training -> evaluation -> tables.

Runs `snakemake --profile profiles/local --config scale=smoke` on a copy of the repository (so the
working tree's results/ is untouched) for every target whose stages exist, then opens the outputs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dens.config import MOLECULES

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["table4", "table5", "table6", "table7", "table8", "table9", "figure5"]


def copy_repository(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_repository(tmp_path_factory.mktemp("pipeline"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [
        str(Path(sys.executable).with_name("snakemake")),
        "--profile",
        "profiles/local",
        *[
            target if target.startswith("table") else f"results/smoke/figures/{target}.png"
            for target in TARGETS
        ],
        "--config",
        "scale=smoke",
    ]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
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
    rows = {row["row"]: row for row in read_csv(tables / "table4.csv")}
    for molecule in MOLECULES:
        metrics = json.loads(
            (
                smoke_run
                / f"results/smoke/runs/md17-{molecule}/equiformer-l2-dens/seed0/metrics.json"
            ).read_text()
        )
        cell = rows["Equiformer (Lmax=2) + DeNS"][f"{molecule} forces ours"]
        assert float(cell) == pytest.approx(metrics["forces_mae_meV_per_A"], rel=5e-3)
    assert rows["SchNet"]["aspirin forces ours"] == "—"
    for name in ["table5", "table6", "table7", "table8", "table9"]:
        assert (tables / f"{name}.tex").read_text().startswith(r"\begin{table}")
        assert read_csv(tables / f"{name}.csv")


def test_figure_and_a_second_run_has_nothing_to_do(smoke_run: Path) -> None:
    assert (smoke_run / "results/smoke/figures/figure5.png").stat().st_size > 10_000
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("snakemake")),
            "-n",
            "--profile",
            "profiles/local",
            "table4",
            "--config",
            "scale=smoke",
        ],
        cwd=smoke_run,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr
