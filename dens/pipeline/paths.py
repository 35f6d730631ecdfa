"""Where the pipeline reads and writes: the only place that turns (scale, experiment or dataset,
split) into a path.

Paths are relative to the pipeline directory (the Snakefile's directory, or the working
directory of a job), as Snakemake wants them; join them to ``Registry.root`` to open a file.
Called with wildcard strings (``run(scale, "{experiment}", "{seed}")``) they give Snakemake
patterns. :func:`run`, :func:`published_run` and :func:`dataset` return the directory objects of
dens.layout, which name every file inside (checkpoints, log, metrics, submissions, relaxation
files; splits, manifests, provenance).

    results/{scale}/data/{dataset}/              a prepared dataset (dens.layout.DatasetDirectory)
    results/{scale}/runs/{experiment}/seed{seed}/    one training run (dens.layout.RunDirectory)
    results/{scale}/published/{name}/      a published checkpoint imported as a run (never
                                          mixed with trained runs; config/published.yaml)
    results/{scale}/tables/{table}.csv|.md|.tex           the paper's tables, and `published`
    results/{scale}/figures/{figure}.png|.pdf            the paper's figures; curves/ per table
    results/{scale}/report.html                          every table, figure and curve
    results/{scale}/logs/{rule}/..., benchmarks/{rule}/...  one log and benchmark per job
    results/downloads/                    downloads of the paper scale: archives, checkpoints
    results/{scale}/downloads/            downloads of any other scale (downloads_dir), so that
                                          a file served there for a test (a tiny checkpoint)
                                          is never taken for the paper scale's
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from dens.layout import DatasetDirectory, RunDirectory

if TYPE_CHECKING:
    from dens.pipeline.registry import Registry

RESULTS = PurePosixPath("results")
PAPER_SCALE = "paper"


def results_dir(scale: str) -> PurePosixPath:
    return RESULTS / scale


def downloads_dir(scale: str) -> PurePosixPath:
    """Where the download rule saves files (config/archives.yaml) and extracts archives:
    results/downloads at the paper scale, results/{scale}/downloads at any other."""
    return RESULTS / "downloads" if scale == PAPER_SCALE else results_dir(scale) / "downloads"


def mirror_dir(scale: str) -> PurePosixPath:
    """Where ``make rehearsal`` generates the stand-in archives it serves on 127.0.0.1 at their
    URL paths, with their catalog (dens.pipeline.rehearsal): results/{scale}/mirror."""
    return results_dir(scale) / "mirror"


def benchmarks_dirs(scale: str) -> tuple[PurePosixPath, PurePosixPath]:
    """The folders of the jobs' Snakemake benchmark files (wall time, max_rss): the per-rule
    folders of job_benchmark and the download and extract jobs' (in downloads_dir)."""
    return results_dir(scale) / "benchmarks", downloads_dir(scale) / "benchmarks"


def run(scale: str, experiment: str, seed: int | str) -> RunDirectory[PurePosixPath]:
    """One training run: an experiment at a scale with one training seed (the files inside:
    dens.layout.RunDirectory)."""
    return RunDirectory(results_dir(scale) / "runs" / experiment / f"seed{seed}")


def published_run(scale: str, name: str) -> RunDirectory[PurePosixPath]:
    """The run of a published checkpoint (config/published.yaml ``name``): its best.pt,
    metrics.json, relax/ and test/ as in a trained run's directory."""
    return RunDirectory(results_dir(scale) / "published" / name)


def dataset(scale: str, name: str) -> DatasetDirectory[PurePosixPath]:
    """A prepared dataset: a folder of aselmdb shards per split, manifests, provenance
    (dens.layout)."""
    return DatasetDirectory(results_dir(scale) / "data" / name)


def dataset_files(registry: Registry, name: str) -> list[PurePosixPath]:
    """Every prepared split of dataset ``name`` at the registry's scale, then its provenance."""
    directory = dataset(registry.scale_name, name)
    return [directory.split(split) for split in registry.split_names(name)] + [directory.provenance]


def experiment_split_files(registry: Registry, experiment: str, role: str) -> list[PurePosixPath]:
    """The splits an experiment's dataset assigns to ``role`` (train, val, test, relax; see
    config/datasets.yaml), as files at the registry's scale; [] if the dataset has no such role."""
    name = registry.experiment(experiment)["dataset"]
    directory = dataset(registry.scale_name, name)
    return [directory.split(split) for split in registry.splits(name, role)]


def tables_dir(scale: str) -> PurePosixPath:
    return results_dir(scale) / "tables"


def table_file(scale: str, table: str, ext: str) -> PurePosixPath:
    return tables_dir(scale) / f"{table}.{ext}"


def figure_file(scale: str, figure: str, ext: str = "png") -> PurePosixPath:
    return results_dir(scale) / "figures" / f"{figure}.{ext}"


def curves_file(scale: str, table: str, ext: str) -> PurePosixPath:
    """Learning curves of a table's runs (dens.pipeline.curves), ``ext`` png or pdf."""
    return results_dir(scale) / "figures" / "curves" / f"{table}.{ext}"


def report_file(scale: str) -> PurePosixPath:
    """The HTML report of a scale: every table, figure and learning curve (dens.pipeline.report)."""
    return results_dir(scale) / "report.html"


def job_log(scale: str, rule: str, name: str) -> PurePosixPath:
    """Log of one job of ``rule`` (``name``: its wildcard, e.g. the experiment)."""
    return results_dir(scale) / "logs" / rule / f"{name}.log"


def job_benchmark(scale: str, rule: str, name: str) -> PurePosixPath:
    return results_dir(scale) / "benchmarks" / rule / f"{name}.tsv"
