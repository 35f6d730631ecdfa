"""Shared fixtures: a private copy of the pipeline's configuration to break on purpose."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pipeline_copy(tmp_path: Path) -> Path:
    """A copy of config/ and workflow/schemas/ that a test may edit; returns its root."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copytree(REPO / "workflow" / "schemas", tmp_path / "workflow" / "schemas")
    return tmp_path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run ~50x faster with one intra-op thread on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
