"""Where the pipeline reads and writes: the only place that turns (scale, experiment or dataset,
split) into a path.

Paths are relative to the pipeline directory (the Snakefile's directory, or the working
directory of a job), as Snakemake wants them; join them to ``Registry.root`` to open a file.
Called with wildcard strings (``run_dir(scale, "{experiment}")``) they give Snakemake patterns.

    results/{scale}/data/{dataset}/{split}.aselmdb       prepared splits (dens.data)
    results/{scale}/data/{dataset}/provenance.json       how they were made; written last
    results/{scale}/runs/{experiment}/seed{seed}/        one training run (one seed)
        checkpoints/best.pt, checkpoints/last.pt, log.csv
        metrics.json, relax/metrics.json, simulate/metrics.json
        test/submission.npz, test/metrics.json    S2EF test predictions for the evaluation server
        test/server_results.json                  the server's results, dropped in by the user
        relax/submission.npz, relax/server_results.json     the same for IS2RE (dens.relaxation)
        relax/systems.jsonl, relax/relaxed.aselmdb          relaxed systems (dens.relaxation)
    results/{scale}/tables/{table}.csv|.md|.tex           the paper's tables
    results/{scale}/figures/{figure}.png|.pdf            the paper's figures
    results/{scale}/published/{name}/      a published checkpoint imported as a run (never
        checkpoints/best.pt, metrics.json,  mixed with trained runs; config/published.yaml):
        relax/..., test/...                 the run-directory layout above, without seeds
    results/{scale}/tables/published.csv|.md|.tex  the published checkpoints beside the paper
    results/{scale}/logs/{rule}/..., benchmarks/{rule}/...  one log and benchmark per job
    results/downloads/                    downloads of the paper scale: archives, checkpoints
    results/{scale}/downloads/            downloads of any other scale (downloads_dir), so that
                                          a file served there for a test (a tiny checkpoint)
                                          is never taken for the paper scale's
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from dens.run_files import (  # the names of files inside a run: dens.run_files owns them
    METRICS_FILES,
    PUBLISHED_FILES,
    SERVER_RESULTS_FILES,
    SUBMISSION_FILES,
)

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


def published_dir(scale: str, name: str) -> PurePosixPath:
    """The run of a published checkpoint (config/published.yaml ``name``): its best.pt,
    metrics.json, relax/ and test/ as in a trained run's directory."""
    return results_dir(scale) / "published" / name


def published_file(scale: str, name: str, kind: str) -> PurePosixPath:
    """A file of a published checkpoint's run, ``kind`` one of :data:`PUBLISHED_FILES`."""
    return published_dir(scale, name) / PUBLISHED_FILES[kind]


def data_dir(scale: str, dataset: str) -> PurePosixPath:
    return results_dir(scale) / "data" / dataset


def split_file(scale: str, dataset: str, split: str) -> PurePosixPath:
    """One prepared split of a dataset (aselmdb)."""
    return data_dir(scale, dataset) / f"{split}.aselmdb"


def provenance_file(scale: str, dataset: str) -> PurePosixPath:
    return data_dir(scale, dataset) / "provenance.json"


def dataset_files(registry: Registry, dataset: str) -> list[PurePosixPath]:
    """Every prepared split of ``dataset`` at the registry's scale, then its provenance record."""
    scale = registry.scale_name
    files = [split_file(scale, dataset, split) for split in registry.split_names(dataset)]
    return files + [provenance_file(scale, dataset)]


def experiment_split_files(registry: Registry, experiment: str, role: str) -> list[PurePosixPath]:
    """The splits an experiment's dataset assigns to ``role`` (train, val, test, relax; see
    config/datasets.yaml), as files at the registry's scale; [] if the dataset has no such role."""
    dataset = registry.experiment(experiment)["dataset"]
    return [
        split_file(registry.scale_name, dataset, split) for split in registry.splits(dataset, role)
    ]


def run_dir(scale: str, experiment: str, seed: int | str) -> PurePosixPath:
    """One training run: an experiment at a scale with one training seed."""
    return results_dir(scale) / "runs" / experiment / f"seed{seed}"


def checkpoint_file(
    scale: str, experiment: str, seed: int | str, kind: str = "best"
) -> PurePosixPath:
    return run_dir(scale, experiment, seed) / "checkpoints" / f"{kind}.pt"


def training_log(scale: str, experiment: str, seed: int | str) -> PurePosixPath:
    return run_dir(scale, experiment, seed) / "log.csv"


def metrics_file(
    scale: str, experiment: str, seed: int | str, stage: str = "evaluate"
) -> PurePosixPath:
    """metrics.json of a run's evaluation, relaxation or simulation."""
    return run_dir(scale, experiment, seed) / METRICS_FILES[stage]


def submission_file(
    scale: str, experiment: str, seed: int | str, stage: str = "test"
) -> PurePosixPath:
    """The file a run's predictions are uploaded to the evaluation server in (stage "test": S2EF
    test, "relax": IS2RE)."""
    return run_dir(scale, experiment, seed) / SUBMISSION_FILES[stage]


def server_results_file(
    scale: str, experiment: str, seed: int | str, stage: str = "test"
) -> PurePosixPath:
    """Where the user puts the evaluation server's results of a run's submission file (stage
    "test": S2EF, "relax": IS2RE)."""
    return run_dir(scale, experiment, seed) / SERVER_RESULTS_FILES[stage]


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
