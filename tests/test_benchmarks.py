"""Every script under benchmarks/ runs once at its smallest size (benchmarks/README.md), so that
none can rot unseen: each runs as a subprocess on data written here (a few structures, the
project's own writers), exits 0 and prints or writes what it measures. The fairchem 1.x
reference side of the step benchmarks is skipped where fairchem 1.x is absent (CI), with a
one-line note; run them in the reference venv for both sides (benchmarks/README.md).

A test fails when its script crashes at that size, e.g. bench_equiformer_v2_step.py before it
handed fairchem 1.x a torch_geometric batch ('Batch' object has no attribute 'values'), or
dens_vs_baseline.py with one seed before it stopped taking a standard deviation of one value.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ase
import ase.build
import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from dens.data.aselmdb import AseLmdbDataset, write_aselmdb
from dens.pipeline import paths
from dens.pipeline.registry import load_registry

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
REFERENCE_SKIPPED = "NOTE: reference not timed: fairchem 1.x is not importable here"


def bench(script: str, *args: str, cwd: Path = REPO) -> str:
    """Run ``benchmarks/<script> args`` with this interpreter, one torch thread; its stdout."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


def ethanol(n: int, seed: int) -> list[ase.Atoms]:
    """``n`` rattled ethanol molecules with random energy and force labels (an MD17 split)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = ase.build.molecule("CH3CH2OH")
        atoms.positions += rng.normal(0.0, 0.05, size=atoms.positions.shape)
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(rng.normal()), forces=rng.normal(0.0, 0.5, size=(len(atoms), 3))
        )
        out.append(atoms)
    return out


def slab(seed: int) -> ase.Atoms:
    """A periodic Cu(111) 2x2x2 slab with an O adsorbate (tags 0/1/2, bottom layer fixed),
    rattled, EMT labels, an IS2RE ``sid`` and test split (``subsplit``)."""
    rng = np.random.default_rng(seed)
    atoms = ase.build.fcc111("Cu", (2, 2, 2), vacuum=5.0)
    ase.build.add_adsorbate(atoms, "O", 1.6, "fcc")
    bottom = atoms.positions[:, 2] < atoms.positions[:, 2].min() + 0.5
    atoms.set_constraint(FixAtoms(mask=bottom))
    atoms.set_tags(np.where(bottom, 0, np.where(atoms.numbers == 29, 1, 2)))
    atoms.positions[~bottom] += rng.normal(0.0, 0.1, size=(int((~bottom).sum()), 3))
    atoms.pbc = True
    atoms.info = {"sid": 100 + seed, "subsplit": "id"}
    atoms.calc = EMT()
    atoms.get_forces()
    return atoms


def split_file(root: Path, dataset: str, split: str) -> Path:
    """A split (folder) of the smoke scale's ``dataset`` in the pipeline directory ``root``."""
    return root / paths.dataset("smoke", dataset).split(split)


def shard(root: Path, dataset: str, split: str) -> Path:
    """The one shard of a split folder written here."""
    return root / paths.dataset("smoke", dataset).shard(split, 0)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline directory (config/ and workflow/schemas/ copied) whose smoke data holds tiny
    md17-ethanol, oc20-all-md and oc20-2m (16 slabs) splits, and in ``run`` the smoke scale's
    oc20-all-md/eqv2-dens-160m trained for one epoch on four slabs."""
    from dens.train import train

    root = tmp_path_factory.mktemp("bench")
    shutil.copytree(REPO / "config", root / "config")
    shutil.copytree(REPO / "workflow" / "schemas", root / "workflow" / "schemas")
    for split, n in (("train", 8), ("val", 2), ("test", 2)):  # one batch of the smoke scale
        write_aselmdb(shard(root, "md17-ethanol", split), ethanol(n, seed=len(split)))
    slabs = [slab(seed) for seed in range(16)]
    write_aselmdb(shard(root, "oc20-2m", "train"), slabs)  # one batch of the mini scale's
    write_aselmdb(shard(root, "oc20-all-md", "train"), slabs[:4])
    write_aselmdb(shard(root, "oc20-all-md", "val_id"), slabs[4:])
    write_aselmdb(shard(root, "oc20-all-md", "is2re_test"), slabs[4:], required_results=())
    experiment = load_registry({"scale": "smoke"}, root).resolve("oc20-all-md/eqv2-dens-160m", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(
            experiment,
            AseLmdbDataset(split_file(root, "oc20-all-md", "train")),
            AseLmdbDataset(split_file(root, "oc20-all-md", "val_id")),
            root / "run",
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    return root


def test_bench_equiformer_step() -> None:
    out = bench("bench_equiformer_step.py", "--presets", "mini", "--steps", "1", "--threads", "1")
    assert "mini DeNS/plain step time ratio" in out


@pytest.mark.parametrize("script", ["bench_equiformer_v2_step.py", "bench_escn_step.py"])
def test_reference_step_benchmarks(script: str) -> None:
    """Ours at the smallest size; the reference side too where fairchem 1.x imports, else one
    note and no traceback."""
    out = bench(script, "--smoke", "--threads", "1")
    assert "ours DeNS/plain (median)" in out
    assert (REFERENCE_SKIPPED in out) != ("reference DeNS/plain (median)" in out)


def test_convert_s2ef() -> None:
    out = bench("convert_s2ef.py", "--frames", "2", "--files", "1", "--processes", "1")
    assert "processes 1: convert" in out and "estimate S2EF-2M" in out


def test_gpu_train_step_on_cpu(root: Path, tmp_path: Path) -> None:
    summary = tmp_path / "steps.json"
    bench(
        "gpu_train_step.py",
        *("--device", "cpu", "--cases", "eqv2-mini+dens", "--steps", "1", "--warmup", "0"),
        *("--data", str(split_file(root, "oc20-2m", "train").parents[1]), "--out", str(summary)),
    )
    result = json.loads(summary.read_text())
    assert set(result["cases"]) == {"eqv2-mini+dens fp32"}
    case = result["cases"]["eqv2-mini+dens fp32"]
    assert case["all_losses_finite"] and {"median_ms", "eval_over_train"} <= set(case)


def test_bench_relax(root: Path) -> None:
    split = split_file(root, "oc20-all-md", "is2re_test")
    out = bench(
        "bench_relax.py",
        *("--run", str(root / "run"), "--split", str(split)),
        *("--systems", "2", "--max-steps", "3", "--batch-sizes", "2"),
    )
    results = json.loads(out[out.index("\n{") :])
    assert set(results) == {"ase", "batch2"}
    assert results["batch2"]["max_abs_energy_difference_vs_ase_meV"] < 10


def test_dens_vs_baseline(root: Path) -> None:
    bench(
        "dens_vs_baseline.py",
        *("--scale", "smoke", "--seeds", "0", "--epochs", "1", "--workers", "1"),
        cwd=root,
    )
    out = root / "benchmarks" / "results" / "dens_vs_baseline" / "smoke-1-epochs"
    summary = json.loads((out / "md17-ethanol--equiformer-l2-dens" / "summary.json").read_text())
    assert set(summary["runs"]) == {"baseline", "dens", "dens-p0"}
    assert set(summary["pairs"]) == {"dens - baseline", "dens-p0 - baseline", "dens - dens-p0"}
    assert (out / "md17-ethanol--equiformer-l2-dens" / "curves.png").is_file()
