"""Fixtures shared by the tests of dens.data: ``server``, the HTTP server on 127.0.0.1 of
test_download.py that logs every request (test_disk_space.py asserts that none was made), and
``tmpfs``, real tmpfs mounts of a known size (root only, else the test is skipped)."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_disk_errors import _mount, _unmount
from test_download import server  # noqa: F401 (a fixture)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``mount(size)``: an empty tmpfs of ``size`` (mount's syntax: ``8m``) under tmp_path."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        target = tmp_path / f"fs{len(mounted)}"
        if not _mount(target, f"size={size}"):
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        _unmount(target)
