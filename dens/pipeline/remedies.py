"""How to make a missing or damaged file of the pipeline's layout again: its Snakemake target.

The library's errors (dens.errors.DataError) end with a generic remedy ("rebuild it", "retrain
the run that wrote it"); the ``dens`` command installs :func:`remedy_for`
(dens.errors.name_remedies), which names the target for a prepared split
(dens.pipeline.paths.dataset) or a run's checkpoint (dens.pipeline.paths.run).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from dens.errors import DataError, MissingDataError
from dens.pipeline import paths


def split_layout(path: Path) -> tuple[str, str, str] | None:
    """(scale, dataset, split) when ``path`` is a prepared split in the pipeline's layout
    (paths.dataset, under any directory), else None."""
    parts = PurePosixPath(Path(path).as_posix()).parts
    if len(parts) < 5:
        return None
    scale, dataset, split = parts[-4], parts[-2], PurePosixPath(parts[-1]).stem
    if PurePosixPath(*parts[-5:]) != paths.dataset(scale, dataset).split(split):
        return None
    return scale, dataset, split


def checkpoint_target(path: Path) -> PurePosixPath | None:
    """checkpoints/best.pt of the run, relative to the pipeline directory, when ``path`` is a
    checkpoint in the pipeline's layout (paths.run, under any directory), else None."""
    parts = PurePosixPath(Path(path).as_posix()).parts
    if len(parts) < 7 or not parts[-3].startswith("seed") or parts[-2] != "checkpoints":
        return None
    for start in range(len(parts) - 7, -1, -1):
        if parts[start : start + 3 : 2] != (paths.RESULTS.name, "runs"):
            continue
        scale, experiment, seed = parts[start + 1], "/".join(parts[start + 3 : -3]), parts[-3][4:]
        kind = PurePosixPath(parts[-1]).stem
        if PurePosixPath(*parts[start:]) == paths.run(scale, experiment, seed).checkpoint(kind):
            return paths.run(scale, experiment, seed).checkpoint()
    return None


def remedy_for(error: DataError) -> str | None:
    """The Snakemake target that makes ``error.path`` again, said as a remedy; None for a file
    outside the pipeline's layout (the library's remedy stays)."""
    if error.path is None:
        return None
    missing = isinstance(error, MissingDataError)
    split = split_layout(error.path)
    if split is not None:
        scale, dataset, name = split
        if missing:
            return f"make it with `snakemake {paths.dataset(scale, dataset).split(name)}`"
        return (
            f"rebuild it: delete {error.path.parent}/ and rerun snakemake "
            f"(or `snakemake --force {paths.dataset(scale, dataset).provenance}`)"
        )
    target = checkpoint_target(error.path)
    if target is None:
        return None
    if missing:
        return f"train it with `snakemake {target}`"
    return (
        f"retrain the run: delete {error.path.parent.parent}/ and rerun snakemake "
        f"(`snakemake {target}`)"
    )
