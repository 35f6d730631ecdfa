"""The smoke scale of the pipeline end to end: data -> training -> evaluation -> tables, figures,
learning curves and the HTML report, for the MD17 half and the OC20/OC22 half; then the target
`published` in the same copy (its OC data already prepared) against a local HTTP server that
serves checkpoints in the published DeNS layout.

Runs the default target, `snakemake --profile profiles/local --config scale=smoke`, on a copy of
the repository (so the working tree's results/ is untouched), then opens the outputs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pipeline_copy import REPO, copy_repository, snakemake
from test_config import OC_RUNS as EVERY_OC_RUN

from dens.data.download.catalog import load_catalog
from dens.pipeline.curves import curve_tables
from dens.pipeline.figures import FIGURES
from dens.pipeline.published import load_published
from dens.pipeline.registry import MOLECULES, load_registry
from dens.pipeline.rehearsal.server import Served, serve
from dens.pipeline.report import write_report
from dens.pipeline.tables.published import NO_IS2RE_PAPER


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


TRAINED = ("aspirin", "ethanol")
"""The MD17 molecules the smoke scale trains (config/scales/smoke.yaml md17_molecules)."""


def test_every_md17_run_of_the_scale_s_molecules_wrote_metrics_and_logs(smoke_run: Path) -> None:
    runs = smoke_run / "results" / "smoke" / "runs"
    metrics = sorted(runs.glob("md17-*/*/seed0/metrics.json"))
    assert {path.parts[-4] for path in metrics} == {f"md17-{m}" for m in TRAINED}
    assert len(metrics) == len(TRAINED) * 11
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
    for molecule in set(MOLECULES) - set(TRAINED):  # said, not blank
        assert forces[molecule]["ours"] == "" and forces[molecule]["status"] == (
            f"not run: scale smoke trains the MD17 molecules {', '.join(TRAINED)} only "
            "(config/scales/smoke.yaml md17_molecules)"
        )
    for molecule in TRAINED:
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


# -- the published checkpoints (target published) from a local mirror ------------------------------
TINY = REPO / "tests/fixtures/published/eq2_dens_tiny.pt"
"""A tiny checkpoint in the published DeNS layout (ocp trainer save: monolithic
equiformer_v2_dens, module. prefixes, config, normalizers, EMA; its generate_reference.py)."""
LINREF = REPO / "tests/fixtures/oc22_linref/oc22_linfit_coeffs.npz"
"""The published OC22 linear reference (its README): the catalog pins its sha256."""
OC22_NORMALIZERS = {"energy": (0.0, 25.119809935106424), "forces": (0.0, 0.14759646356105804)}
"""The official DeNS OC22 config's normalisers (configs/oc22/equiformer_v2/
equiformer_v2_dens_N@18_L@6_M@2_e@4_f@100_std@0.15.yml, lines 12-17)."""


def published_checkpoint(name: str, epochs: int) -> bytes:
    """The tiny checkpoint made into ``name``'s: its epochs in the config (distinct files) and,
    for OC22, the dataset's linear reference and OC22's normalisers, as the official config."""
    state = torch.load(TINY, map_location="cpu", weights_only=True)
    state["config"]["optim"]["max_epochs"] = epochs
    if name == "eq2_dens_oc22":
        dataset = state["config"]["dataset"]
        dataset["lin_ref"] = "configs/oc22/linref/oc22_linfit_coeffs.npz"
        for key, (mean, std) in OC22_NORMALIZERS.items():
            dataset["transforms"]["normalizer"][key] = {"mean": mean, "stdev": std}
            state["normalizers"][key] = {"mean": torch.tensor(mean), "std": torch.tensor(std)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def url_path(name: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(load_catalog(root=REPO)[name].url).path.lstrip("/")


@pytest.fixture(scope="module")
def mirror() -> Iterator[Served]:
    """A copy of the download servers on 127.0.0.1: ``files`` maps URL paths to bytes (changed
    by the tests between runs)."""
    epochs = {"eq2_dens_epochs_12_2M": 12, "eq2_dens_epochs_30_2M": 30, "eq2_dens_allmd": 2}
    with serve() as served:
        served.files.update(
            {
                url_path(name): published_checkpoint(name, epochs.get(name, 6))
                for name in load_published(load_registry({"scale": "smoke"})).checkpoints
            }
        )
        served.files[url_path("oc22_linfit_coeffs")] = LINREF.read_bytes()
        yield served


def run_published(root: Path, mirror: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return snakemake(
        root, "--profile", "profiles/local", "published", "--config", "scale=smoke",
        f"mirror={mirror.url().rstrip('/')}", *args,
    )  # fmt: skip


@pytest.fixture(scope="module")
def published_run(smoke_run: Path, mirror: Served) -> Path:
    """`snakemake --profile profiles/local published --config scale=smoke mirror=...` after the
    default target (the OC data are prepared: only the published jobs run)."""
    result = run_published(smoke_run, mirror)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return smoke_run


def test_published_target_fills_its_table(published_run: Path, mirror: Served) -> None:
    results = published_run / "results" / "smoke"
    registry = load_registry({"scale": "smoke"}, root=published_run)
    published = load_published(registry)
    rows = read_csv(results / "tables" / "published.csv")
    assert {row["checkpoint"] for row in rows} == set(published.checkpoints)
    for name, checkpoint in published.checkpoints.items():
        run = results / "published" / name
        served = mirror.files[url_path(name)]
        metrics = json.loads((run / "metrics.json").read_text())
        mine = [row for row in rows if row["checkpoint"] == name]
        assert {row["checkpoint_sha256"] for row in mine} == {hashlib.sha256(served).hexdigest()}
        s2ef = {(r["split"], r["column"]): r for r in mine if r["task"] == "S2EF val"}
        assert {split for split, _ in s2ef} == {*checkpoint.evaluate, "average"}
        for split in checkpoint.evaluate:  # every number from the run's metrics.json
            values = metrics["splits"][split]
            assert float(s2ef[split, "force MAE"]["ours"]) == values["forces_mae_meV_per_A"]
            assert float(s2ef[split, "energy MAE"]["ours"]) == values["energy_mae_meV"]
        for split, paper in checkpoint.paper.items():
            row = s2ef[split, "force MAE"]
            assert float(row["paper"]) == float(paper["forces_mae_meV_per_A"])
            difference = float(row["ours"]) - float(row["paper"])
            assert float(row["difference"]) == pytest.approx(difference)
            assert row["flag"] == str(abs(difference) > 0.01 * float(row["paper"])).lower()
        provenance = {row["provenance_file"] for row in mine}
        assert provenance == {f"results/smoke/data/{checkpoint.dataset}/provenance.json"}
        assert all("generated with EMT (seed 0)" in row["data_provenance"] for row in mine)
        is2re = [row for row in mine if row["task"] == "IS2RE val"]
        assert bool(is2re) == checkpoint.relax
        if checkpoint.relax:
            relax = json.loads((run / "relax" / "metrics.json").read_text())
            assert {row["split"] for row in is2re} == {*relax["splits"], "average"}
            assert all(row["status"] == NO_IS2RE_PAPER and not row["paper"] for row in is2re)
        assert (run / "test" / "submission.npz").is_file() == checkpoint.submission
    oc22 = json.loads((results / "published/eq2_dens_oc22/metrics.json").read_text())
    assert set(oc22["splits"]) == {"val_id", "val_ood"}
    markdown = (results / "tables" / "published.md").read_text()
    # S2EF: each split and the average (2M: 4 + 1 twice, All+MD 4 + 1, OC22 2 + 1); IS2RE 5 + 3
    assert markdown.count("| ours (smoke) |") == 5 + 5 + 5 + 3 + 5 + 3
    assert "*IS2RE validation relaxations*" in markdown
    assert (results / "tables" / "published.tex").read_text().startswith(r"\begin{table}")
    report = write_report(registry, published_run / "report.html", published_run, published=True)
    assert "<h2 id='published'>" in report.read_text()


def test_published_downloads_refuse_a_truncated_and_a_changed_checkpoint(
    published_run: Path, mirror: Served
) -> None:
    """A truncated download (never pinned) and a checkpoint whose bytes changed after its digest
    was pinned are refused in one line naming the file; the other checkpoints' results stay."""
    results = published_run / "results" / "smoke"
    downloads = results / "downloads"
    kept = {path: path.read_bytes() for path in (results / "published").glob("*/**/metrics.json")}
    table = (results / "tables" / "published.csv").read_bytes()
    (downloads / "eq2_dens_epochs_30_2M.pt.sha256").unlink()  # as if never downloaded
    good = dict(mirror.files)
    path_30, path_oc22 = url_path("eq2_dens_epochs_30_2M"), url_path("eq2_dens_oc22")
    mirror.files[path_30] = good[path_30][: len(good[path_30]) // 2]  # a complete-looking half
    mirror.files[path_oc22] = published_checkpoint("eq2_dens_oc22", 7)  # changed after the pin
    fetch_again = [
        f"results/smoke/downloads/{name}.pt" for name in ("eq2_dens_epochs_30_2M", "eq2_dens_oc22")
    ]
    try:  # the user fetches the two again (and so redoes everything after them)
        result = run_published(published_run, mirror, "--forcerun", *fetch_again)
    finally:
        mirror.files.update(good)
    assert result.returncode != 0
    logs = downloads / "logs"
    truncated = (logs / "eq2_dens_epochs_30_2M.pt.log").read_text()
    changed = (logs / "eq2_dens_oc22.pt.log").read_text()
    for log, what in (
        (truncated, f"dens: error: {mirror.url(path_30)} did not give the pt file "),
        (
            changed,
            "dens: error: checksum mismatch for results/smoke/downloads/eq2_dens_oc22.pt (",
        ),
    ):
        assert "Traceback" not in log
        assert log.rstrip().splitlines()[-1].startswith(what), log[-2000:]
    assert "not a readable pt file" in truncated and "recorded in" in changed
    assert not (downloads / "eq2_dens_epochs_30_2M.pt").exists()
    assert not (downloads / "eq2_dens_epochs_30_2M.pt.sha256").exists()  # nothing pinned
    assert not (downloads / "eq2_dens_oc22.pt").exists()
    # nothing already evaluated is lost
    assert {path: path.read_bytes() for path in kept} == kept
    assert (results / "tables" / "published.csv").read_bytes() == table
