"""A table's cells: our number (one metric of one or more runs, averaged over the configured seeds),
the paper's, their texts at the paper's precision, and what the cells found besides numbers for
the footnotes."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any

from dens import layout
from dens.pipeline import paths
from dens.pipeline.challenges import LOCAL_LABELS, SERVER
from dens.pipeline.registry import Registry
from dens.pipeline.tables.layout import MISSING, SINGLE_SEED, WITHOUT_GPU
from dens.pipeline.tables.read import (
    SERVER_TASKS,
    MetricsError,
    Reading,
    not_run_reason,
    read_seed,
)

NOT_RUN = "not run"
AWAITING = "awaiting server"


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _mean(values: list[Any]) -> Any:
    """The mean, exact for one value (an int stays an int); None if any value is not a number."""
    if not values or not all(is_number(v) for v in values):
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


def _origins(
    scale: str, pattern: str, seed: str, source: str, flat: list[Reading]
) -> tuple[list[str], list[str]]:
    """The files a cell's readings come from (``origin``) and, for the S2EF test and IS2RE
    columns, which of local labels and the server they are (``<source>:<where>``)."""
    origins, sources = [], []
    if not all(reading.from_server for reading in flat):
        local = paths.run(scale, pattern, seed).metrics(source)
        origins.append(f"{local} ({LOCAL_LABELS})" if source in SERVER_TASKS else str(local))
        sources += [f"{source}:{LOCAL_LABELS}"] if source in SERVER_TASKS else []
    if any(reading.from_server for reading in flat):
        server = paths.run(scale, pattern, seed).server_results(source)
        origins.append(f"{server} ({SERVER})")
        sources.append(f"{source}:{SERVER}")
    return origins, sources


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
        server = paths.run(scale, pattern, seed).server_results(source)
        return Ours(None, None, 0, f"{server} (not there yet)", state=AWAITING, sources=(source,))
    units = {reading.unit for reading in flat}
    if len(units) > 1:
        raise MetricsError(
            f"{paths.run(scale, pattern, seed).path}: {column['metric']}: some runs were trained "
            "with a GPU and some without; the column cannot average them"
        )
    origins, sources = _origins(scale, pattern, seed, source, flat)
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
            notes += self._server_notes(scale, source, what)
        if self.not_run:
            notes.append(f"{NOT_RUN}: no metrics at this scale: {'; '.join(self.not_run)}.")
        return notes

    def _server_notes(self, scale: str, source: str, what: str) -> list[str]:
        """Where the numbers of a source the evaluation server scores come from."""
        notes = []
        if f"{source}:{LOCAL_LABELS}" in self.server_sources:
            notes.append(
                f"{what} columns from {LOCAL_LABELS}: the generated {what} splits of scale "
                f"{scale} carry labels, scored like the evaluation server scores the "
                f"submission file's predictions ({layout.METRICS_FILES[source]})."
            )
        if f"{source}:{SERVER}" in self.server_sources:
            notes.append(
                f"{what} columns from the {SERVER}'s results "
                f"({layout.SERVER_RESULTS_FILES[source]})."
            )
        if source in self.awaiting:
            submission = paths.run(scale, "<experiment>", "<S>").submission(source)
            server = paths.run(scale, "<experiment>", "<S>").server_results(source)
            notes.append(
                f"{AWAITING}: the {what} test labels are not public; upload {submission} to "
                f"the {SERVER} and write its results to {server} (format: "
                "dens.pipeline.submission), then rerun the table."
            )
        return notes


def paper_number(value: Any) -> Any:
    """A paper number as a number: ``83M`` -> 83000000.0, ``1.5k`` -> 1500.0, ``'30.70'`` (quoted
    to keep the paper's trailing zero) -> 30.7; text stays text."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kM]?)\s*", value)
        if match:
            return float(match[1]) * {"": 1.0, "k": 1e3, "M": 1e6}[match[2]]
    return value


# -- texts -------------------------------------------------------------------------------------
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
    if not is_number(value):
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
