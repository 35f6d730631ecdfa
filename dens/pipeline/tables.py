"""The paper's tables: tidy CSV for analysis, Markdown and LaTeX for reading.

Every measured number comes from a metrics file a run wrote (``metrics.json``,
``test/metrics.json``, ``relax/metrics.json`` or ``simulate/metrics.json`` in
``results/{scale}/runs/<experiment>/seed<S>/``, dens.pipeline.paths), one file per configured
training seed (``seeds`` in config/config.yaml); a missing file, split or metric raises
:class:`MetricsError` naming the file. S2EF test columns (source ``test``) read the evaluation
server's results, ``test/server_results.json``, which the user drops in (dens.pipeline.submission),
where present, else the submission job's ``test/metrics.json``: scores from local labels where the
test split has them (generated data), else ``awaiting server``. Cells of runs whose model family is
not implemented yet (dens.models.PENDING_FAMILIES, empty today) or that the scale does not train
(MD17 molecules outside its ``md17_molecules``:
dens.pipeline.registry.Registry.not_run_at_scale) say ``not run`` and why; :func:`table_inputs`,
the table job's inputs, leaves them out. Paper numbers come only from
``config/tables.yaml`` and appear only as ``paper``. Rows the paper cites from other work carry
paper numbers only (unless ``retrain_cited_baselines`` trains them). ``write_table`` writes
three files per table into ``results/{scale}/tables/``:

``<name>.csv``: tidy, one line per cell, numbers only (full precision, never display strings).
  Result tables (kinds ``runs`` and ``molecules``) have the columns
      row            the paper's row label (method or ablation index)
      <flag columns> Tables 1b, 5, 6: one ``true``/``false`` column per check-mark column
      molecule       MD17 tables: the molecule; empty for per-method cells (training time,
                     parameters: the mean over the molecules the scale trains, per seed)
                     and other tables
      column         the metric column's name; unit its unit (``without_gpu``'s where used)
      ours           mean over the seeds (empty when not measured)
      ours_std       sample standard deviation over the seeds (empty with one seed)
      n_seeds        how many seeds ``ours`` averages (empty when not measured)
      paper          the paper's number (``83M`` read as 83000000; empty when the paper has none)
      status         ``measured`` (several seeds), ``single seed``, ``cited: paper only`` (not
                     trained here), ``not run: <why>``, ``awaiting server`` or ``no value`` (a
                     metrics file holds null or text)
      scale          the scale ``ours`` was measured at
      experiment     the run ``ours`` comes from (a ``{molecule}`` template for per-method cells)
      origin         the metrics files read (``seed{0,1}`` = seeds 0 and 1; S2EF test cells
                     add ``(local labels)`` or ``(evaluation server)``) or why none was
  Settings tables (kind ``settings``: 7, 8, 9) have one line per (hyper-parameter, column):
  ``row``, ``key`` (path in the resolved experiment), ``column``, ``experiment``, ``ours`` (the
  value configured at this scale, numeric where numeric), ``paper``, ``source`` (where the
  value comes from: dens.pipeline.registry.Registry.value_sources) and ``scale``.

``<name>.md`` and ``<name>.tex`` (booktabs): for reading. Each method takes two lines, ``ours
(<scale>)`` and ``paper`` under it (cited rows: one ``paper (cited)`` line); MD17 tables have the
molecules as columns and one block per metric (energy, forces, ...) like the paper's Table 4, with
the per-method columns (training time, parameters) in a second tabular; wide tables of runs are
split into one tabular per column ``part`` (Tables 2, 3), as the paper groups them. Our numbers
are shown at the paper's precision: a column's ``decimals`` in config/tables.yaml, else the most
decimals the paper prints in that column, but at least two significant digits (small-scale
training times); parameter counts in millions (``M``); paper numbers as the paper prints them.
Several seeds show ``mean ± std``; single-seed cells carry a dagger (†); ``‡`` marks a number in
the column's ``without_gpu`` unit (a run trained without a GPU: CPU device-hours instead of
GPU-hours); ``—`` = no number. Footnotes say what ``ours`` and ``paper`` are, why cells are
``not run`` and where test numbers come from.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dens import atomic_files, layout
from dens.errors import ConfigError, DensError
from dens.models import PENDING_FAMILIES
from dens.pipeline import paths
from dens.pipeline.registry import Registry

MISSING = "—"
SINGLE_SEED = "†"
WITHOUT_GPU = "‡"
CHECK = "✓"
NOT_RUN = "not run"
AWAITING = "awaiting server"
SERVER_SOURCE = "evaluation server"
LOCAL_SOURCE = "local labels"
GPU_MARKER = "train_gpu_hours"
"""The metric dens.evaluate writes only for runs trained on GPUs."""
PAPER = "Liao et al., TMLR 2024"
RESULT_COLUMNS = [
    "row",
    "molecule",
    "column",
    "unit",
    "ours",
    "ours_std",
    "n_seeds",
    "paper",
    "status",
    "scale",
    "experiment",
    "origin",
]
SETTINGS_COLUMNS = ["row", "key", "column", "experiment", "ours", "paper", "source", "scale"]


class MetricsError(DensError, ValueError):
    """A metrics file a table needs is missing or lacks a metric; the message names it."""


# -- reading -----------------------------------------------------------------------------------
def not_run_reason(registry: Registry, experiment: str) -> str | None:
    """Why a run has no metrics at this scale, or None: its model family is not implemented
    yet (dens.models.PENDING_FAMILIES), or the scale does not train it (its MD17 molecule is not
    in the scale's ``md17_molecules``: dens.pipeline.registry.Registry.not_run_at_scale)."""
    pending = PENDING_FAMILIES.get(registry.experiment(experiment)["model"]["family"])
    return pending if pending is not None else registry.not_run_at_scale(experiment)


def _sources(table: dict[str, Any]) -> list[str]:
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
            for source in _sources(table):
                if not_run_reason(registry, experiment) is not None:
                    continue
                for seed in registry.options["seeds"]:
                    files.append(paths.metrics_file(scale, experiment, seed, source))
                    if source not in layout.SERVER_RESULTS_FILES:
                        continue
                    server = paths.server_results_file(scale, experiment, seed, source)
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


SERVER_TASKS = {"test": "s2ef", "relax": "is2re"}
"""The evaluation-server task of each source whose metrics a server can give."""


def _server_or_local_metrics(
    registry: Registry, experiment: str, seed: int, source: str
) -> tuple[dict[str, Any], bool]:
    """A run's S2EF test (source "test") or IS2RE (source "relax") metrics and whether they come
    from the server: the server's results file where present, else the job's metrics file
    (dens.pipeline.submission)."""
    from dens.pipeline.submission import challenge_for, read_server_results

    scale = registry.scale_name
    server = registry.root / paths.server_results_file(scale, experiment, seed, source)
    if server.is_file():
        family = registry.dataset(registry.experiment(experiment)["dataset"])["family"]
        challenge = challenge_for(family, SERVER_TASKS[source])
        return read_server_results(server, challenge, registry.root), True
    return read_metrics(registry.root / paths.metrics_file(scale, experiment, seed, source)), False


def read_seed(registry: Registry, experiment: str, seed: int, column: dict[str, Any]) -> Reading:
    """One metric of one run (one training seed) from the metrics file its column's source names;
    ``split`` reads the metric of one split (``splits`` in the file); ``without_gpu`` reads
    another metric or unit for a run trained without a GPU (its metrics have no
    :data:`GPU_MARKER`). A missing file, split or metric raises MetricsError naming the file."""
    source = column.get("source", "evaluate")
    path = registry.root / paths.metrics_file(registry.scale_name, experiment, seed, source)
    from_server = False
    if source in SERVER_TASKS:
        metrics, from_server = _server_or_local_metrics(registry, experiment, seed, source)
        if metrics.get("metrics_source") is None:
            return Reading(None, awaiting=True)
        if from_server:
            server = paths.server_results_file(registry.scale_name, experiment, seed, source)
            path = registry.root / server
    else:
        metrics = read_metrics(path)
    metric, unit = column["metric"], None
    fallback = column.get("without_gpu")
    if fallback is not None and GPU_MARKER not in metrics:
        metric, unit = fallback.get("metric", metric), fallback["unit"]
    values = metrics
    if "split" in column:
        values = metrics.get("splits", {}).get(column["split"])
        if values is None:
            known = ", ".join(metrics.get("splits", {})) or "none"
            raise MetricsError(f"{path}: no split {column['split']!r} (splits: {known})")
    if metric not in values:
        raise MetricsError(f"{path}: no metric {metric!r} (has: {', '.join(values)})")
    return Reading(values[metric], from_server, unit)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _mean(values: list[Any]) -> Any:
    """The mean, exact for one value (an int stays an int); None if any value is not a number."""
    if not values or not all(_is_number(v) for v in values):
        return None
    return values[0] if len(values) == 1 else statistics.mean(values)


@dataclass(frozen=True)
class Ours:
    """Our number of one cell: mean and sample standard deviation over the seeds, or why there is
    none (``state``: :data:`NOT_RUN` with the reason, or :data:`AWAITING`)."""

    mean: Any
    std: float | None
    n_seeds: int
    origin: str
    unit: str | None = None  # when not the column's: a run trained without a GPU
    state: str = ""
    reason: str = ""
    sources: tuple[str, ...] = ()  # S2EF test columns: local labels and/or the server

    @property
    def status(self) -> str:
        if self.state:
            return f"{self.state}: {self.reason}" if self.reason else self.state
        if self.mean is None:
            return "no value"
        return "single seed" if self.n_seeds == 1 else "measured"


def _seeds_pattern(seeds: list[int]) -> str:
    return str(seeds[0]) if len(seeds) == 1 else "{" + ",".join(map(str, seeds)) + "}"


def measure(
    registry: Registry, experiments: list[str], column: dict[str, Any], pattern: str
) -> Ours:
    """A metric over the seeds; with several experiments (a per-method cell of an MD17 table),
    each seed's value is the mean over the experiments. ``pattern`` names the experiment(s) in
    ``origin`` (an experiment, or a template with ``{molecule}``)."""
    scale, source = registry.scale_name, column.get("source", "evaluate")
    seeds = registry.options["seeds"]
    seed = _seeds_pattern(seeds)
    for experiment in experiments:
        reason = not_run_reason(registry, experiment)
        if reason is not None:
            return Ours(None, None, 0, f"{NOT_RUN}: {reason}", state=NOT_RUN, reason=reason)
    readings = [[read_seed(registry, e, s, column) for s in seeds] for e in experiments]
    flat = [reading for per_experiment in readings for reading in per_experiment]
    if any(reading.awaiting for reading in flat):
        server = paths.server_results_file(scale, pattern, seed, source)
        return Ours(None, None, 0, f"{server} (not there yet)", state=AWAITING, sources=(source,))
    units = {reading.unit for reading in flat}
    if len(units) > 1:
        raise MetricsError(
            f"{paths.run_dir(scale, pattern, seed)}: {column['metric']}: some runs were trained "
            "with a GPU and some without; the column cannot average them"
        )
    origins, sources = [], []
    if not all(reading.from_server for reading in flat):
        local = paths.metrics_file(scale, pattern, seed, source)
        origins.append(f"{local} ({LOCAL_SOURCE})" if source in SERVER_TASKS else str(local))
        sources += [f"{source}:{LOCAL_SOURCE}"] if source in SERVER_TASKS else []
    if any(reading.from_server for reading in flat):
        server = paths.server_results_file(scale, pattern, seed, source)
        origins.append(f"{server} ({SERVER_SOURCE})")
        sources.append(f"{source}:{SERVER_SOURCE}")
    per_seed = [_mean([r.value for r in per_seed]) for per_seed in zip(*readings, strict=True)]
    mean = _mean(per_seed)
    std = statistics.stdev(per_seed) if mean is not None and len(per_seed) > 1 else None
    origin = " + ".join(origins)
    return Ours(mean, std, len(per_seed), origin, unit=units.pop(), sources=tuple(sources))


@dataclass
class Outcomes:
    """What a table's cells found besides numbers, for its footnotes."""

    not_run: dict[str, None] = field(default_factory=dict)  # the reasons, in order
    awaiting: set[str] = field(default_factory=set)  # sources (test, relax) awaiting the server
    server_sources: set[str] = field(default_factory=set)  # "<source>:<local labels|server>"
    without_gpu: dict[str, str] = field(default_factory=dict)  # column name -> unit shown

    def add(self, ours: Ours, column: dict[str, Any]) -> None:
        if ours.state == NOT_RUN:
            self.not_run[ours.reason] = None
        if ours.state == AWAITING:
            self.awaiting.update(ours.sources)
        else:
            self.server_sources.update(ours.sources)
        if ours.unit:
            self.without_gpu[column["name"]] = ours.unit

    def notes(self, scale: str) -> list[str]:
        notes = []
        if self.without_gpu:
            shown = "; ".join(f"{name} in {unit}" for name, unit in self.without_gpu.items())
            notes.append(f"{WITHOUT_GPU} trained without a GPU: {shown}.")
        for source, what in (("test", "S2EF test"), ("relax", "IS2RE")):
            directory = layout.METRICS_FILES[source].split("/")[0]
            if f"{source}:{LOCAL_SOURCE}" in self.server_sources:
                notes.append(
                    f"{what} columns from {LOCAL_SOURCE}: the generated {what} splits of scale "
                    f"{scale} carry labels, scored like the evaluation server scores the "
                    f"submission file's predictions ({layout.METRICS_FILES[source]})."
                )
            if f"{source}:{SERVER_SOURCE}" in self.server_sources:
                notes.append(
                    f"{what} columns from the {SERVER_SOURCE}'s results "
                    f"({directory}/server_results.json)."
                )
            if source in self.awaiting:
                submission = paths.submission_file(scale, "<experiment>", "<S>", source)
                server = paths.server_results_file(scale, "<experiment>", "<S>", source)
                notes.append(
                    f"{AWAITING}: the {what} test labels are not public; upload {submission} to "
                    f"the {SERVER_SOURCE} and write its results to {server} (format: "
                    "dens.pipeline.submission), then rerun the table."
                )
        if self.not_run:
            notes.append(f"{NOT_RUN}: no metrics at this scale: {'; '.join(self.not_run)}.")
        return notes


def paper_number(value: Any) -> Any:
    """A paper number as a number: ``83M`` -> 83000000.0, ``1.5k`` -> 1500.0, ``'30.70'`` (quoted
    to keep the paper's trailing zero) -> 30.7; text stays text."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kM]?)\s*", value)
        if match:
            return float(match[1]) * {"": 1.0, "k": 1e3, "M": 1e6}[match[2]]
    return value


def _lookup(resolved: dict[str, Any], key: str) -> Any:
    value: Any = resolved
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


# -- formatting --------------------------------------------------------------------------------
def _decimals_printed(value: Any) -> int:
    """How many decimals the paper prints for a transcribed number (``20.46`` -> 2, ``83M`` ->
    0)."""
    text = str(value)
    match = re.fullmatch(r"-?[0-9]*\.([0-9]+)[kM]?", text)
    return len(match[1]) if match else 0


def column_decimals(column: dict[str, Any], paper_values: list[Any]) -> int:
    """Decimals of our numbers in a column: ``decimals`` if configured, else the paper's."""
    if "decimals" in column:
        return int(column["decimals"])
    return max((_decimals_printed(v) for v in paper_values if v is not None), default=0)


def _scaled(value: Any, metric: str) -> tuple[Any, str]:
    """Parameter counts in millions, other metrics as they are: (value, suffix)."""
    return (value / 1e6, "M") if metric == "num_parameters" else (value, "")


def _digits(value: float, decimals: int) -> int:
    """``decimals``, or more where needed for two significant digits."""
    if value == 0 or not math.isfinite(value):
        return decimals
    return max(decimals, 1 - math.floor(math.log10(abs(value))))


def format_number(value: Any, decimals: int, metric: str = "") -> str:
    """A number at ``decimals`` decimals, at least two significant digits; parameter counts in
    millions (``M``)."""
    if value is None:
        return MISSING
    if not _is_number(value):
        return str(value)
    value, suffix = _scaled(value, metric)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{_digits(value, decimals)}f}{suffix}"


def format_ours(ours: Ours | None, decimals: int, metric: str = "") -> str:
    """``mean ± std`` over several seeds, ``mean†`` for one seed, ``—`` for none, ``not run`` or
    ``awaiting server`` where there can be none yet; the standard deviation at the mean's
    decimals; ``‡`` marks a number in another unit (a run trained without a GPU)."""
    if ours is not None and ours.state:
        return ours.state
    if ours is None or ours.mean is None:
        return MISSING
    marker = WITHOUT_GPU if ours.unit else ""
    if ours.std is None:
        single = SINGLE_SEED if ours.n_seeds == 1 else ""
        return format_number(ours.mean, decimals, metric) + single + marker
    mean, suffix = _scaled(ours.mean, metric)
    std, _ = _scaled(ours.std, metric)
    digits = _digits(mean, decimals)
    return f"{mean:.{digits}f} ± {std:.{digits}f}{suffix}{marker}"


def format_plain(value: Any) -> str:
    """A paper number or a configured setting as written (the paper's own precision)."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _heading(column: dict[str, Any]) -> str:
    return f"{column['name']} ({column['unit']})" if column.get("unit") else column["name"]


# -- layout ------------------------------------------------------------------------------------
@dataclass
class Part:
    """One tabular: a header, then blocks (an optional title line and lines of cells)."""

    header: list[str]
    units: list[str]  # second header line (units); all empty = none
    aligns: str  # one of l (text), c (check marks), r (numbers) per column
    title: str | None = None  # a part of a table split as the paper does
    blocks: list[tuple[str | None, list[list[list[str]]]]] = field(default_factory=list)
    # a block: (title, methods), a method: its lines (ours, paper), a line: its cells


def _part(
    lead: list[str], flags: list[str], names: list[str], units: list[str], align: str = "r"
) -> Part:
    """A part with text columns ``lead`` (label), check-mark columns ``flags``, the ours/paper
    column and value columns ``names`` (numbers: right-aligned)."""
    return Part(
        [*lead, *flags, "", *names],
        [""] * (len(lead) + len(flags) + 1) + units,
        "l" * len(lead) + "c" * len(flags) + "l" + align * len(names),
    )


@dataclass
class Table:
    """A built table: the CSV records and the display parts with their footnotes."""

    fields: list[str]
    records: list[dict[str, Any]]
    caption: str
    parts: list[Part]
    notes: list[str]


def _method_lines(
    label: str,
    flags: list[str],
    scale: str,
    measured: bool,
    ours: list[str],
    paper: list[str],
) -> list[list[str]]:
    """A method's display lines: ours and the paper's under it, or the paper's alone (cited);
    [] when neither has a number."""
    if all(cell == MISSING for cell in ours + paper):
        return []
    if not measured:
        return [[label, *flags, "paper (cited)", *paper]]
    return [[label, *flags, f"ours ({scale})", *ours], ["", *[""] * len(flags), "paper", *paper]]


def _summary_experiments(
    registry: Registry, row: dict[str, Any], table: dict[str, Any]
) -> list[str]:
    """The runs a per-method cell of an MD17 table averages: the row's experiments this scale
    trains (:func:`not_run_reason` None), or all of them when it trains none (the cell then says
    ``not run``)."""
    experiments = registry.table_row_experiments(row, table)
    run = [e for e in experiments if not_run_reason(registry, e) is None]
    return run or experiments


def _molecule(registry: Registry, experiment: str) -> str:
    """The MD17 molecule of an experiment's dataset (config/datasets.yaml ``molecule``)."""
    return registry.dataset(registry.experiment(experiment)["dataset"])["molecule"]


def build_table(registry: Registry, name: str) -> Table:
    """Records and display of one table; every measured number read from metrics files."""
    table = registry.table(name)
    if table["kind"] == "settings":
        return _settings_table(registry, table)
    return _results_table(registry, table)


def _results_table(registry: Registry, table: dict[str, Any]) -> Table:
    scale, kind = registry.scale_name, table["kind"]
    flag_names = list(table.get("flag_columns", []))
    columns, summary = table["columns"], table.get("summary_columns", [])
    molecules = table.get("molecules", []) if kind == "molecules" else [""]
    row_header = table.get("row_header", "method")

    def paper_of(row: dict[str, Any], molecule: str, index: int) -> Any:
        values = (row["paper"].get(molecule) or []) if kind == "molecules" else row["paper"]
        return values[index] if index < len(values) else None

    def summary_paper(row: dict[str, Any], index: int) -> Any:
        values = row.get("paper_summary", [])
        return values[index] if index < len(values) else None

    decimals = {  # (is a summary column, index) -> decimals of our numbers
        (False, i): column_decimals(
            column, [paper_of(row, m, i) for row in table["rows"] for m in molecules]
        )
        for i, column in enumerate(columns)
    } | {
        (True, i): column_decimals(column, [summary_paper(row, i) for row in table["rows"]])
        for i, column in enumerate(summary)
    }

    records: list[dict[str, Any]] = []
    cited_rows = retrainable = single = 0
    outcomes = Outcomes()
    averaged: dict[str, None] = {}  # molecules of per-method cells that average only some
    # display: per row, per (molecule, column index) our text and the paper's
    display: list[tuple[dict[str, Any], bool, dict[tuple[str, int, bool], tuple[str, str]]]] = []
    for row in table["rows"]:
        measured = bool(registry.table_row_experiments(row, table))
        flags = {flag: value for flag, value in zip(flag_names, row.get("flags", []), strict=False)}
        if not measured:
            cited_rows += 1
            retrainable += "experiment" in row
            origin = "cited: paper numbers only" + (
                " (set retrain_cited_baselines to train it)" if "experiment" in row else ""
            )
        texts: dict[tuple[str, int, bool], tuple[str, str]] = {}
        cells = [
            (molecule, index, column, False, paper_of(row, molecule, index))
            for molecule in molecules
            for index, column in enumerate(columns)
        ] + [
            ("", index, column, True, summary_paper(row, index))
            for index, column in enumerate(summary)
        ]
        for molecule, index, column, is_summary, paper in cells:
            ours = None
            experiment = ""
            if measured:
                experiment = row["experiment"]
                if kind == "molecules" and not is_summary:
                    experiment = experiment.format(molecule=molecule)
                experiments = [experiment]
                if is_summary:
                    experiments = _summary_experiments(registry, row, table)
                    if len(experiments) < len(registry.table_row_experiments(row, table)):
                        averaged.update({_molecule(registry, e): None for e in experiments})
                ours = measure(registry, experiments, column, experiment)
                single += ours.n_seeds == 1 and ours.mean is not None
                outcomes.add(ours, column)
            records.append(
                {
                    "row": row["label"],
                    **{flag: "true" if value else "false" for flag, value in flags.items()},
                    "molecule": molecule,
                    "column": column["name"],
                    "unit": (ours and ours.unit) or column.get("unit", ""),
                    "ours": ours.mean if ours else None,
                    "ours_std": ours.std if ours else None,
                    "n_seeds": ours.n_seeds if ours and not ours.state else None,
                    "paper": paper_number(paper),
                    "status": ours.status if ours else "cited: paper only",
                    "scale": scale,
                    "experiment": experiment,
                    "origin": ours.origin if ours else origin,
                }
            )
            texts[(molecule, index, is_summary)] = (
                format_ours(ours, decimals[(is_summary, index)], column.get("metric", "")),
                format_plain(paper),
            )
        display.append((row, measured, texts))

    def lines(keys: list[tuple[str, int, bool]], with_flags: bool) -> list[list[list[str]]]:
        methods = []
        for row, measured, texts in display:
            flags = [CHECK if f else "" for f in row.get("flags", [])] if with_flags else []
            method = _method_lines(
                row["label"],
                flags,
                scale,
                measured,
                [texts[key][0] for key in keys],
                [texts[key][1] for key in keys],
            )
            if method:
                methods.append(method)
        return methods

    parts = []
    if kind == "runs":  # one tabular, or one per ``part`` of the columns (split like the paper)
        groups: dict[str | None, list[int]] = {}
        for index, column in enumerate(columns):
            groups.setdefault(column.get("part"), []).append(index)
        for title, indices in groups.items():
            part = _part(
                [row_header],
                flag_names,
                [columns[index]["name"] for index in indices],
                [columns[index].get("unit", "") for index in indices],
            )
            part.title = title
            part.blocks.append((None, lines([("", index, False) for index in indices], True)))
            parts.append(part)
    else:  # molecules as columns, one block per metric; per-method columns in a second tabular
        part = _part(
            [row_header],
            flag_names,
            [m.replace("_", " ") for m in molecules],
            [""] * len(molecules),
        )
        for index, column in enumerate(columns):
            keys = [(molecule, index, False) for molecule in molecules]
            part.blocks.append((_heading(column), lines(keys, True)))
        parts.append(part)
        if summary:
            per_method = _part(
                [row_header],
                [],
                [column["name"] for column in summary],
                [column.get("unit", "") for column in summary],
            )
            keys = [("", index, True) for index in range(len(summary))]
            per_method.blocks.append((None, lines(keys, False)))
            parts.append(per_method)

    notes = []
    if "paper_note" in table:
        notes.append(f"Paper: {table['paper_note']}.")
    if "simulate" in _sources(table):
        simulation = registry.scale["simulation"]["md17"]
        notes.append(
            f"Ours ({scale}): {simulation['initial_configurations']} simulation(s) per run, each "
            f"at most {simulation['length_ps']:g} ps (the cap of stability), means over them "
            f"(config/scales/{scale}.yaml simulation.md17; dens.simulate)."
        )
    seeds = registry.options["seeds"]
    notes.append(
        f"'ours ({scale})' = measured at scale {scale} from the runs' metrics files "
        f"(results/{scale}/runs/<experiment>/seed<S>/), "
        + (
            f"mean ± sample standard deviation over seeds {seeds}"
            if len(seeds) > 1
            else f"seed {seeds[0]}"
        )
        + f"; 'paper' = {PAPER}. Our numbers at the paper's precision; the CSV has full precision."
    )
    if single:
        notes.append(f"{SINGLE_SEED} single seed (seeds: {seeds}): no standard deviation.")
    if cited_rows:
        notes.append(
            "'paper (cited)': rows the paper cites from other work, paper numbers only"
            + (
                ", not trained here (set retrain_cited_baselines to train them)"
                if retrainable
                else ""
            )
            + "."
        )
    notes += outcomes.notes(scale)
    if averaged:
        notes.append(
            f"Per-method columns at scale {scale}: the mean over the molecules trained here "
            f"({', '.join(averaged)}), not over all {len(molecules)}."
        )
    notes.append(f"{MISSING} = no number.")
    return Table(["row", *flag_names, *RESULT_COLUMNS[1:]], records, table["caption"], parts, notes)


def _settings_table(registry: Registry, table: dict[str, Any]) -> Table:
    """Configured values at this scale beside the paper's, per hyper-parameter and column; where
    the configured values come from (dens.pipeline.registry.Registry.value_sources) in the CSV
    and, per hyper-parameter, in a footnote (the column name written as <column>)."""
    scale = registry.scale_name
    resolved = [registry.resolve(column["experiment"]) for column in table["columns"]]
    run_sources = [registry.value_sources(column["experiment"]) for column in table["columns"]]
    records: list[dict[str, Any]] = []
    names = [column["name"] for column in table["columns"]]
    part = _part([table.get("row_header", "hyper-parameter")], [], names, [""] * len(names), "c")
    methods, sources_notes = [], []
    for row in table["rows"]:
        ours_texts, paper_texts, sources = [], [], []
        for index, (column, run) in enumerate(zip(table["columns"], resolved, strict=True)):
            ours = _lookup(run, row["key"])
            paper = row["paper"][index] if index < len(row["paper"]) else None
            source = run_sources[index].get(row["key"], "")
            records.append(
                {
                    "row": row["label"],
                    "key": row["key"],
                    "column": column["name"],
                    "experiment": column["experiment"],
                    "ours": ours if _is_number(ours) or ours is None else format_plain(ours),
                    "paper": paper_number(paper),
                    "source": source,
                    "scale": scale,
                }
            )
            ours_texts.append(format_plain(ours))
            paper_texts.append(format_plain(paper))
            general = source.replace(column["name"], "<column>")
            if source and general not in sources:
                sources.append(general)
        methods.append(_method_lines(row["label"], [], scale, True, ours_texts, paper_texts))
        if sources:
            sources_notes.append(f"{row['label']}: {'; '.join(sources)}")
    part.blocks.append((None, methods))
    notes = [
        f"'ours ({scale})' = the value configured at scale {scale} (config/experiments.yaml "
        f"resolved with config/scales/{scale}.yaml); 'paper' = {PAPER}. {MISSING} = none."
    ]
    if sources_notes:
        notes.append("Sources of the paper-scale values (<column> = the column's name):")
        notes += [f"{note}." for note in sources_notes]
    return Table(SETTINGS_COLUMNS, records, table["caption"], [part], notes)


# -- writing -----------------------------------------------------------------------------------
def _csv_value(value: Any) -> Any:
    return "" if value is None else value


def to_csv(table: Table, path: Path) -> None:
    with atomic_files.atomic_write(path, "writing table", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=table.fields)
        writer.writeheader()
        for record in table.records:
            writer.writerow({key: _csv_value(record.get(key)) for key in table.fields})


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


MD_ALIGN = {"l": ":--", "c": ":-:", "r": "--:"}


def _md_line(cells: list[str]) -> str:
    return "|" + "|".join(f" {_md_escape(cell)} " if cell else " " for cell in cells) + "|"


def to_markdown(table: Table) -> str:
    """GitHub Markdown: each part a pipe table, block titles as bold lines, footnotes after."""
    lines = [f"**{_md_escape(table.caption)}**", ""]
    for part in table.parts:
        header = [
            f"{name} ({unit})" if unit else name
            for name, unit in zip(part.header, part.units, strict=True)
        ]
        if part.title is not None:
            lines += [f"*{_md_escape(part.title)}*", ""]
        lines.append(_md_line(header))
        lines.append("|" + "|".join(MD_ALIGN[align] for align in part.aligns) + "|")
        for title, methods in part.blocks:
            if title is not None:
                lines.append(_md_line([f"***{title}***"] + [""] * (len(header) - 1)))
            lines += [_md_line(cells) for method in methods for cells in method]
        lines.append("")
    lines += [_md_escape(note) + "  " for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


def to_html(table: Table) -> str:
    """An HTML fragment (for the report): the caption, each part a <table> with its units under
    the column names, block titles as full-width rows, the footnotes after."""
    esc = html.escape
    out = [f"<p class='caption'>{esc(table.caption)}</p>"]
    for part in table.parts:
        if part.title is not None:
            out.append(f"<p class='part'><em>{esc(part.title)}</em></p>")
        out.append("<table>")
        header = "".join(f"<th>{esc(name)}</th>" for name in part.header)
        out.append(f"<thead><tr>{header}</tr>")
        if any(part.units):
            units = "".join(f"<th class='unit'>{esc(unit)}</th>" for unit in part.units)
            out.append(f"<tr>{units}</tr>")
        out.append("</thead><tbody>")
        for title, methods in part.blocks:
            if title is not None:
                width = len(part.header)
                out.append(f"<tr><td class='block' colspan='{width}'>{esc(title)}</td></tr>")
            for method in methods:
                for number, cells in enumerate(method):
                    style = " class='paper'" if number else ""
                    row = "".join(
                        f"<td class='{align}'>{esc(cell)}</td>"
                        for cell, align in zip(cells, part.aligns, strict=True)
                    )
                    out.append(f"<tr{style}>{row}</tr>")
        out.append("</tbody></table>")
    out += [f"<p class='note'>{esc(note)}</p>" for note in table.notes]
    return "\n".join(out) + "\n"


LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "#": r"\#",
    "_": r"\_",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "Å": r"\AA{}",
    "—": "---",
    "±": r"$\pm$",
    SINGLE_SEED: r"$^\dagger$",
    WITHOUT_GPU: r"$^\ddagger$",
    CHECK: r"\checkmark",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX.get(char, char) for char in text)


def _latex_heading(text: str, width: int = 14) -> str:
    """A column heading; a long one over several lines (a nested tabular, plain LaTeX)."""
    parts = textwrap.wrap(text, width=width, break_long_words=False) or [""]
    if len(parts) == 1:
        return latex_escape(text)
    return r"\begin{tabular}[b]{@{}c@{}}" + r"\\".join(map(latex_escape, parts)) + r"\end{tabular}"


def _latex_row(cells: list[str], width: int = 150) -> list[str]:
    """One tabular row as source lines, broken after an ``&`` where it would exceed ``width``."""
    lines = [cells[0]]
    for cell in cells[1:]:
        if len(lines[-1]) + len(cell) + 3 > width:
            lines[-1] += " &"
            lines.append("  " + cell)
        else:
            lines[-1] += " & " + cell
    lines[-1] += r" \\"
    return lines


def to_latex(table: Table) -> str:
    """A booktabs table (\\toprule, \\midrule, \\bottomrule; needs booktabs and amssymb)."""
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\scriptsize",
        r"\caption{" + latex_escape(table.caption) + "}",
    ]
    for number, part in enumerate(table.parts):
        width = len(part.header)
        if number:
            lines.append(r"\par\medskip")
        if part.title is not None:
            lines.append(r"\textit{" + latex_escape(part.title) + r"}\par\smallskip")
        lines += [r"\begin{tabular}{" + part.aligns + "}", r"\toprule"]
        lines += _latex_row([_latex_heading(cell) for cell in part.header])
        if any(part.units):
            lines += _latex_row([f"({latex_escape(unit)})" if unit else "" for unit in part.units])
        for title, methods in part.blocks:
            lines.append(r"\midrule")
            if title is not None:
                lines.append(
                    rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(title)}}}}} \\"
                )
            for position, method in enumerate(methods):
                if position and len(method) + len(methods[position - 1]) > 2:
                    lines.append(r"\addlinespace[2pt]")
                for cells in method:
                    lines += _latex_row([latex_escape(cell) for cell in cells])
        lines += [r"\bottomrule", r"\end{tabular}"]
    for note in table.notes:
        lines += textwrap.wrap(
            r"\par\smallskip " + latex_escape(note),
            width=100,
            break_long_words=False,
            break_on_hyphens=False,
        )
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(registry: Registry, name: str, out_dir: Path) -> list[Path]:
    """Write ``<name>.csv``, ``<name>.md`` and ``<name>.tex``; every measured number read from
    metrics files."""
    try:
        table = build_table(registry, name)
    except KeyError as error:
        raise ConfigError(f"config/tables.yaml: tables.{name}: missing key {error}") from error
    return write_renderings(table, name, out_dir)


def write_renderings(table: Table, name: str, out_dir: Path) -> list[Path]:
    """Write ``table`` as ``<name>.csv``, ``<name>.md`` and ``<name>.tex`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, tex_path = (out_dir / f"{name}.{ext}" for ext in ("csv", "md", "tex"))
    to_csv(table, csv_path)
    atomic_files.write_text(md_path, to_markdown(table), "writing table")
    atomic_files.write_text(tex_path, to_latex(table), "writing table")
    return [csv_path, md_path, tex_path]
