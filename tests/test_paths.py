"""dens.pipeline.paths: the only place that turns scale, experiment and split into a path."""

from __future__ import annotations

import ast
from pathlib import Path, PurePosixPath

from dens.pipeline import paths
from dens.pipeline.registry import load_registry

REPO = Path(__file__).resolve().parents[1]


def test_layout() -> None:
    assert paths.dataset("mini", "md17-aspirin").split("train") == PurePosixPath(
        "results/mini/data/md17-aspirin/train.aselmdb"
    )
    assert paths.run("paper", "oc22/eqv2-127m", 2).metrics("relax") == PurePosixPath(
        "results/paper/runs/oc22/eqv2-127m/seed2/relax/metrics.json"
    )
    assert (
        str(paths.run("smoke", "{experiment}", "{seed}").path)
        == "results/smoke/runs/{experiment}/seed{seed}"
    )
    assert paths.run("mini", "a/b", 0).checkpoint().name == "best.pt"


def test_split_roles_of_experiments() -> None:
    registry = load_registry({"scale": "mini"})
    md17 = "md17-aspirin/equiformer-l2"
    assert [p.name for p in paths.experiment_split_files(registry, md17, "evaluate")] == [
        "test.aselmdb"
    ]
    oc20 = "oc20-2m/eqv2-e12"
    assert len(paths.experiment_split_files(registry, oc20, "evaluate")) == 4
    files = paths.dataset_files(registry, "oc22")
    assert files[-1].name == "provenance.json" and len(files) == 10  # 9 splits (2 relax_val)


def test_downloads_of_small_scales_never_mix_with_the_paper_scale() -> None:
    """A tiny checkpoint a test serves for scale smoke lands in results/smoke/downloads, never
    where the paper scale keeps the real one; published runs live apart from trained runs."""
    assert str(paths.downloads_dir("paper")) == "results/downloads"
    assert str(paths.downloads_dir("smoke")) == "results/smoke/downloads"
    assert str(paths.published_run("smoke", "eq2_dens_oc22").published("checkpoint")) == (
        "results/smoke/published/eq2_dens_oc22/checkpoints/best.pt"
    )
    assert (
        str(paths.published_run("paper", "x").published("relax"))
        == "results/paper/published/x/relax/metrics.json"
    )


def test_no_other_module_spells_out_results_paths() -> None:
    """The package and the rules get paths from dens.pipeline.paths: no "results" string literal in
    dens/ outside it, no results/ path in a rule (comments aside)."""
    offenders = []
    for path in REPO.glob("dens/**/*.py"):
        if path.name == "paths.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == "results":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    for path in REPO.glob("workflow/rules/*.smk"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if "results" in code or "/runs/" in code or "/data/" in code:
                offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert offenders == []
