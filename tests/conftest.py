"""Shared fixtures (a private copy of the pipeline's configuration to break on purpose) and the
order of the tests under pytest-xdist (`make test` runs them on every core, at most 4, a whole
file per worker: the tests that use the Slurm cluster share tests/integration/test_slurm.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pipeline_copy(tmp_path: Path) -> Path:
    """A copy of config/, workflow/schemas/ and workflow/report/ that a test may edit; returns
    its root."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    for part in ("schemas", "report"):
        shutil.copytree(REPO / "workflow" / part, tmp_path / "workflow" / part)
    return tmp_path


REMEDY_EXPERIMENT = "md17-ethanol/equiformer-l2"
"""The experiment (scale smoke, seed 0) whose run and dataset files get their Snakemake targets
under the ``pipeline_remedies`` fixture."""


@pytest.fixture
def pipeline_remedies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The remedies a ``dens`` command of a pipeline job names (dens.pipeline.remedies.for_job):
    the job is REMEDIES_JOB, run in tmp_path as its pipeline directory, so that its run's
    checkpoints and its dataset's splits under tmp_path/results/ get their Snakemake targets."""
    import argparse

    from dens.errors import name_remedies
    from dens.pipeline.remedies import for_job

    monkeypatch.chdir(tmp_path)
    name_remedies(for_job(argparse.Namespace(scale="smoke", seed=0, experiment=REMEDY_EXPERIMENT)))
    yield
    name_remedies(None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run ~50x faster with one intra-op thread on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LONGEST_FIRST = ("test_pipeline_smoke.py",)
"""Test files that run for minutes (the smoke pipeline): collected first, so that a worker starts
them at once while the others share out the rest."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first. `make test` hands out whole files (`--dist loadfile`), so a module
    fixture such as the smoke pipeline run is built once, on one worker."""
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)
