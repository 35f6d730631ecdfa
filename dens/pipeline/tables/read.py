"""Reading a table's numbers: the metrics files runs wrote and the evaluation server's results.

One metrics file per run and configured training seed (``metrics.json``, ``test/metrics.json``,
``relax/metrics.json`` or ``simulate/metrics.json`` in
``results/{scale}/runs/<experiment>/seed<S>/``, dens.pipeline.paths), and for the S2EF test and
IS2RE columns the server's results file where the user put it in (dens.pipeline.challenges). A
missing file, split or metric raises :class:`MetricsError` naming the file. :func:`table_inputs`
lists the files a table's job reads; :func:`not_run_reason` says why a run has none at this scale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dens import layout
from dens.errors import DensError
from dens.models import PENDING_FAMILIES
from dens.pipeline import paths
from dens.pipeline.challenges import challenge_for, read_server_results
from dens.pipeline.registry import Registry

GPU_MARKER = "train_gpu_hours"
"""The metric dens.evaluate writes only for runs trained on GPUs."""
SERVER_TASKS = {"test": "s2ef", "relax": "is2re"}
"""The evaluation-server task of each source whose metrics a server can give."""


class MetricsError(DensError, ValueError):
    """A metrics file a table needs is missing or lacks a metric; the message names it."""


def not_run_reason(registry: Registry, experiment: str) -> str | None:
    """Why a run has no metrics at this scale, or None: its model family is not implemented
    yet (dens.models.PENDING_FAMILIES), or the scale does not train it (its MD17 molecule is not
    in the scale's ``md17_molecules``: dens.pipeline.registry.Registry.not_run_at_scale)."""
    pending = PENDING_FAMILIES.get(registry.experiment(experiment)["model"]["family"])
    return pending if pending is not None else registry.not_run_at_scale(experiment)


def table_sources(table: dict[str, Any]) -> list[str]:
    """The metrics sources a table's columns read (evaluate, test, relax, simulate), sorted."""
    columns = table["columns"] + table.get("summary_columns", [])
    return sorted({column.get("source", "evaluate") for column in columns})


def table_inputs(registry: Registry, name: str) -> list[PurePosixPath]:
    """The files a table's job reads: per configured seed, the metrics file of each source of
    each row that can be measured (not cited, :func:`not_run_reason` None) and the evaluation
    server's results files that are present (the table reruns when one is added)."""
    table = registry.table(name)
    if table["kind"] == "settings":
        return []
    scale, files = registry.scale_name, []
    for row in table["rows"]:
        for experiment in registry.table_row_experiments(row, table):
            for source in table_sources(table):
                if not_run_reason(registry, experiment) is not None:
                    continue
                for seed in registry.options["seeds"]:
                    files.append(paths.run(scale, experiment, seed).metrics(source))
                    if source not in layout.SERVER_RESULTS_FILES:
                        continue
                    server = paths.run(scale, experiment, seed).server_results(source)
                    if (registry.root / server).is_file():
                        files.append(server)
    return list(dict.fromkeys(files))


def read_metrics(path: Path) -> dict[str, Any]:
    """A metrics file; MetricsError naming it when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise MetricsError(f"{path}: metrics file missing (run the experiment first)") from error
    except json.JSONDecodeError as error:
        raise MetricsError(f"{path}: not valid JSON: {error}") from error


@dataclass(frozen=True)
class Reading:
    """One seed's value of a cell and where it came from."""

    value: Any
    from_server: bool = False  # S2EF test columns: the server's results, not local labels
    unit: str | None = None  # the unit when not the column's (a run trained without a GPU)
    awaiting: bool = False  # S2EF test columns: no labels here and no server results yet


def _server_or_local_metrics(
    registry: Registry, experiment: str, seed: int, source: str
) -> tuple[dict[str, Any], Path, bool]:
    """A run's S2EF test (source "test") or IS2RE (source "relax") metrics, the file they come
    from and whether it is the server's: the server's results file where present, else the job's
    metrics file (dens.pipeline.submission, dens.pipeline.is2re)."""
    scale, root = registry.scale_name, registry.root
    server = root / paths.run(scale, experiment, seed).server_results(source)
    if server.is_file():
        family = registry.dataset(registry.experiment(experiment)["dataset"])["family"]
        challenge = challenge_for(family, SERVER_TASKS[source])
        return read_server_results(server, challenge, root), server, True
    path = root / paths.run(scale, experiment, seed).metrics(source)
    return read_metrics(path), path, False


def _metric_values(metrics: dict[str, Any], column: dict[str, Any], path: Path) -> dict[str, Any]:
    """The metrics a column reads from a file: those of its ``split`` (``splits`` in the file)
    where it names one, else the file's top level."""
    if "split" not in column:
        return metrics
    values = metrics.get("splits", {}).get(column["split"])
    if values is None:
        known = ", ".join(metrics.get("splits", {})) or "none"
        raise MetricsError(f"{path}: no split {column['split']!r} (splits: {known})")
    return values


def read_seed(registry: Registry, experiment: str, seed: int, column: dict[str, Any]) -> Reading:
    """One metric of one run (one training seed) from the metrics file its column's source names;
    ``split`` reads the metric of one split (``splits`` in the file); ``without_gpu`` reads
    another metric or unit for a run trained without a GPU (its metrics have no
    :data:`GPU_MARKER`). A missing file, split or metric raises MetricsError naming the file."""
    source = column.get("source", "evaluate")
    from_server = False
    if source in SERVER_TASKS:
        metrics, path, from_server = _server_or_local_metrics(registry, experiment, seed, source)
        if metrics.get("metrics_source") is None:
            return Reading(None, awaiting=True)
    else:
        path = registry.root / paths.run(registry.scale_name, experiment, seed).metrics(source)
        metrics = read_metrics(path)
    metric, unit = column["metric"], None
    fallback = column.get("without_gpu")
    if fallback is not None and GPU_MARKER not in metrics:
        metric, unit = fallback.get("metric", metric), fallback["unit"]
    values = _metric_values(metrics, column, path)
    if metric not in values:
        raise MetricsError(f"{path}: no metric {metric!r} (has: {', '.join(values)})")
    return Reading(values[metric], from_server, unit)
