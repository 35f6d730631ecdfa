"""A copy of the repository to run the pipeline in (the working tree's results/ stay untouched),
and `snakemake` run in it the way a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def copy_repository(dest: Path) -> Path:
    """The tracked and untracked-but-not-ignored files of the repository, copied to ``dest``."""
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


def snakemake_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("snakemake")), *args]


def environment() -> dict[str, str]:
    """The current environment with this venv's executables first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def snakemake(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        snakemake_command(*args), cwd=root, env=environment(), capture_output=True, text=True
    )
