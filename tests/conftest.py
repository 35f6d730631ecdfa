"""Shared fixtures (a private copy of the pipeline's configuration to break on purpose) and the
order of the tests under pytest-xdist (`make test` runs them on every core, at most 4)."""

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
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)
