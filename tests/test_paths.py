"""dens.pipeline.paths: the only place that turns scale, experiment and split into a path."""

from __future__ import annotations

import ast
import re
from pathlib import Path, PurePosixPath

from dens.pipeline import paths
from dens.pipeline.registry import load_registry

REPO = Path(__file__).resolve().parents[1]


def test_layout() -> None:
    assert paths.dataset("mini", "md17-aspirin").split("train") == PurePosixPath(
        "results/mini/data/md17-aspirin/train"
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
    assert [p.name for p in paths.experiment_split_files(registry, md17, "evaluate")] == ["test"]
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


def _run_and_dataset_file_names() -> set[str]:
    """The names dens.layout gives the files inside a run and a dataset directory."""
    from dens.layout import MANIFEST_SUFFIX, DatasetDirectory, RunDirectory

    run, data = RunDirectory(PurePosixPath("run")), DatasetDirectory(PurePosixPath("data"))
    files = [run.checkpoint("best"), run.checkpoint("last"), run.best_epoch_checkpoint, run.log]
    files += [run.relax_systems, run.relax_state, run.relaxed_structures, run.kept_dir]
    files += [run.metrics(stage) for stage in ("evaluate", "relax", "simulate", "test")]
    files += [run.submission(stage) for stage in ("test", "relax")]
    files += [run.server_results(stage) for stage in ("test", "relax")]
    files += [data.provenance]
    return {file.name for file in files} | {MANIFEST_SUFFIX}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that stand alone as statements (docstrings, attribute notes)."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def test_no_other_module_spells_out_a_file_of_a_run_or_dataset() -> None:
    """dens.layout names the files inside a run and a dataset directory (and dens.pipeline.paths
    where those directories are): no other module of dens/ holds such a name as a string, alone
    or as a path component ("log.csv", "checkpoints/best.pt", f"{x}/metrics.json"); prose in
    messages and docstrings may mention them."""
    names = _run_and_dataset_file_names()
    pattern = re.compile(
        r"^(?:{0})$|/(?:{0})\b".format("|".join(re.escape(name) for name in sorted(names)))
    )
    owners = {REPO / "dens" / "layout.py", REPO / "dens" / "pipeline" / "paths.py"}
    offenders = []
    for path in sorted(REPO.glob("dens/**/*.py")):
        if path in owners:
            continue
        tree = ast.parse(path.read_text())
        prose = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in prose and pattern.search(node.value):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_the_file_name_check_sees_a_spelled_out_name() -> None:
    names = _run_and_dataset_file_names()
    assert {"log.csv", "best.pt", "last.pt", "metrics.json", "provenance.json"} <= names
    tree = ast.parse('path = run_dir / "log.csv"\nother = f"{run}/checkpoints/best.pt"\n')
    found = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
    pattern = re.compile(
        r"^(?:{0})$|/(?:{0})\b".format("|".join(re.escape(name) for name in sorted(names)))
    )
    assert [value for value in found if pattern.search(value)] == [
        "log.csv",
        "/checkpoints/best.pt",
    ]
