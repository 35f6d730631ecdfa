"""Fixture builders for the OC20/OC22 converters (tests/data/test_oc_converters.py): the builders
of archives laid out like the released ones and the 127.0.0.1 server are the project's
(dens.pipeline.rehearsal.builders and .server, which the rehearsal's generator uses too); here
only what tests need besides: a pickled exploit, and a catalog in a repository root of its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from dens.pipeline.rehearsal.builders import (  # noqa: F401 (re-exported for the tests)
    legacy_records,
    md5,
    s2ef_archive_dir,
    slab_frames,
    tar_dir,
    write_legacy_lmdb,
    write_s2ef_files,
)
from dens.pipeline.rehearsal.server import Served, serve  # noqa: F401 (re-exported)

REPO = Path(__file__).resolve().parents[2]


class Exploit:
    """Pickles as a call to ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (self.command,))


# ------------------------------------------------------------------------------- catalog ----


def write_catalog(root: Path, entries: dict[str, dict[str, Any]]) -> Path:
    """A repository root with config/archives.yaml = ``entries`` and the real schema."""
    (root / "config").mkdir(parents=True, exist_ok=True)
    schemas = root / "workflow" / "schemas"
    schemas.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "workflow/schemas/archives.schema.yaml", schemas)
    (root / "config" / "experiments.yaml").write_text("{}\n")
    (root / "config" / "archives.yaml").write_text(
        yaml.safe_dump({"archives": entries}, sort_keys=False)
    )
    return root


def catalog_entry(url: str, fmt: str, data: bytes, dataset: dict, **extra: Any) -> dict:
    entry = {
        "url": url,
        "format": fmt,
        "checksum": {"algorithm": "md5", "digest": md5(data)},
        "checksum_source": "test fixture",
        "payload": "test fixture",
        "size": None,
        "dataset": dataset,
    }
    entry.update(extra)
    return entry
