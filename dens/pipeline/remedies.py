"""How to make a missing or damaged file of a pipeline job again: its Snakemake target.

The library's errors (dens.errors.DataError) end with a generic remedy ("rebuild it", "retrain
the run that wrote it"). A ``dens`` command knows its job (scale, experiment, seed, dataset), so
it installs :func:`for_job` (dens.errors.name_remedies), which compares the file at fault with
the files of that job's run and dataset as dens.pipeline.paths names them (paths.run,
paths.dataset): nothing is parsed back out of a path. A file that is not one of them keeps the
library's remedy.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Iterator
from pathlib import Path

from dens.errors import DataError, DensError, MissingDataError
from dens.pipeline import paths
from dens.pipeline.registry import load_registry

Remedy = Callable[[DataError], str | None]


def for_job(args: argparse.Namespace) -> Remedy:
    """The remedy of a file of the job ``args`` describes (``scale``; ``experiment`` and ``seed``,
    or ``dataset``; ``data_seed`` and ``extra_experiments`` as the command reads them), for
    dens.errors.name_remedies. The registry is read once, at the first error."""

    @functools.cache
    def files() -> tuple[tuple[Path, tuple[str, str]], ...]:
        return tuple(_job_files(args))

    def remedy(error: DataError) -> str | None:
        if error.path is None:
            return None
        at_fault = Path(error.path).resolve()
        texts = next((texts for path, texts in files() if path.resolve() == at_fault), None)
        folder = Path(error.path).parent  # as the user named it: absolute or relative
        if texts is None:  # a shard of a split folder
            texts = next((t for path, t in files() if path.resolve() == at_fault.parent), None)
            folder = folder.parent
        if texts is None:
            return None
        missing, damaged = texts
        text = missing if isinstance(error, MissingDataError) else damaged
        return text.format(folder=folder, run_folder=folder.parent)

    return remedy


def _job_files(args: argparse.Namespace) -> Iterator[tuple[Path, tuple[str, str]]]:
    """(file, (remedy when missing, remedy when damaged)) for the splits of the job's dataset and
    the checkpoints of its run; nothing where the job names no scale or the configuration cannot
    be read (the command reports that itself)."""
    scale = getattr(args, "scale", None)
    experiment = getattr(args, "experiment", None)
    dataset = getattr(args, "dataset", None)
    if scale is None or (experiment is None and dataset is None):
        return
    options = {"scale": scale, "extra_experiments": getattr(args, "extra_experiments", None) or []}
    if getattr(args, "data_seed", None) is not None:
        options["data_seed"] = args.data_seed
    try:
        registry = load_registry(options)
        dataset = dataset or registry.experiment(experiment)["dataset"]
        splits = registry.split_names(dataset)
    except DensError:
        return
    directory = paths.dataset(scale, dataset)
    rebuild = (
        "rebuild it: delete {folder}/ and rerun snakemake "
        f"(or `snakemake --force {directory.provenance}`)"
    )
    for split in splits:
        made = f"make it with `snakemake {directory.split(split)}`"
        yield Path(directory.split(split)), (made, rebuild)
    if experiment is None or getattr(args, "seed", None) is None:
        return
    run = paths.run(scale, experiment, args.seed)
    retrain = (
        "retrain the run: delete {run_folder}/ and rerun snakemake "
        f"(`snakemake {run.checkpoint()}`)"
    )
    for kind in ("best", "last"):
        yield Path(run.checkpoint(kind)), (f"train it with `snakemake {run.checkpoint()}`", retrain)
