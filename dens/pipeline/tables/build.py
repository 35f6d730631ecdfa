"""Building a table of config/tables.yaml: its CSV records and its display, every measured number
read from the runs' metrics files (dens.pipeline.tables.read), the paper's beside them.

Tables of runs (kinds ``runs`` and ``molecules``) are built here, row by row and cell by cell
(dens.pipeline.tables.cells); settings tables (kind ``settings``) in
dens.pipeline.tables.settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dens.pipeline.registry import Registry
from dens.pipeline.tables.cells import (
    Ours,
    Outcomes,
    column_decimals,
    format_ours,
    format_plain,
    measure,
    paper_number,
)
from dens.pipeline.tables.layout import (
    CHECK,
    MISSING,
    PAPER,
    SINGLE_SEED,
    Part,
    Table,
    heading,
    method_lines,
    new_part,
)
from dens.pipeline.tables.read import not_run_reason, table_sources
from dens.pipeline.tables.settings import settings_table

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
Key = tuple[str, int, bool]
"""A cell of a row: (molecule, or "" outside MD17 tables; column index; a per-method column)."""


def build_table(registry: Registry, name: str) -> Table:
    """Records and display of one table; every measured number read from metrics files."""
    table = registry.table(name)
    if table["kind"] == "settings":
        return settings_table(registry, table)
    return _results_table(registry, table)


@dataclass(frozen=True)
class Cell:
    """One cell of a row: its molecule (MD17 tables), its column and the paper's number."""

    molecule: str
    index: int
    column: dict[str, Any]
    summary: bool  # a per-method column of an MD17 table (training time, parameters)
    paper: Any

    @property
    def key(self) -> Key:
        return (self.molecule, self.index, self.summary)


@dataclass
class Spec:
    """A table of runs as configured, at the registry's scale."""

    registry: Registry
    table: dict[str, Any]
    decimals: dict[tuple[bool, int], int] = field(default_factory=dict)
    # (is a summary column, column index) -> decimals of our numbers

    def __post_init__(self) -> None:
        rows = self.table["rows"]
        self.decimals = {
            (False, i): column_decimals(
                column, [self.paper(row, m, i) for row in rows for m in self.molecules]
            )
            for i, column in enumerate(self.columns)
        } | {
            (True, i): column_decimals(column, [self.summary_paper(row, i) for row in rows])
            for i, column in enumerate(self.summary)
        }

    @property
    def scale(self) -> str:
        return self.registry.scale_name

    @property
    def kind(self) -> str:
        return self.table["kind"]

    @property
    def flag_names(self) -> list[str]:
        return list(self.table.get("flag_columns", []))

    @property
    def columns(self) -> list[dict[str, Any]]:
        return self.table["columns"]

    @property
    def summary(self) -> list[dict[str, Any]]:
        return self.table.get("summary_columns", [])

    @property
    def molecules(self) -> list[str]:
        return self.table.get("molecules", []) if self.kind == "molecules" else [""]

    @property
    def row_header(self) -> str:
        return self.table.get("row_header", "method")

    def paper(self, row: dict[str, Any], molecule: str, index: int) -> Any:
        values = (row["paper"].get(molecule) or []) if self.kind == "molecules" else row["paper"]
        return values[index] if index < len(values) else None

    def summary_paper(self, row: dict[str, Any], index: int) -> Any:
        values = row.get("paper_summary", [])
        return values[index] if index < len(values) else None

    def cells(self, row: dict[str, Any]) -> list[Cell]:
        """A row's cells: per molecule, one per column; then one per per-method column."""
        return [
            Cell(molecule, index, column, False, self.paper(row, molecule, index))
            for molecule in self.molecules
            for index, column in enumerate(self.columns)
        ] + [
            Cell("", index, column, True, self.summary_paper(row, index))
            for index, column in enumerate(self.summary)
        ]


@dataclass
class Tally:
    """What a table's rows found, for its footnotes."""

    outcomes: Outcomes = field(default_factory=Outcomes)
    cited_rows: int = 0
    retrainable: int = 0  # cited rows with an experiment (retrain_cited_baselines trains them)
    single: int = 0  # cells with one seed
    averaged: dict[str, None] = field(default_factory=dict)
    # molecules of per-method cells that average only some (the scale trains only those)


@dataclass
class Shown:
    """A row's display: per cell (:data:`Key`) our text and the paper's."""

    row: dict[str, Any]
    measured: bool
    texts: dict[Key, tuple[str, str]]


def _results_table(registry: Registry, table: dict[str, Any]) -> Table:
    spec, tally = Spec(registry, table), Tally()
    records: list[dict[str, Any]] = []
    shown = [_build_row(spec, row, records, tally) for row in table["rows"]]
    parts = _runs_parts(spec, shown) if spec.kind == "runs" else _molecule_parts(spec, shown)
    fields = ["row", *spec.flag_names, *RESULT_COLUMNS[1:]]
    return Table(fields, records, table["caption"], parts, _results_notes(spec, tally))


def _build_row(
    spec: Spec, row: dict[str, Any], records: list[dict[str, Any]], tally: Tally
) -> Shown:
    """Measure a row's cells, append their records, count what they found; the row's texts."""
    measured = bool(spec.registry.table_row_experiments(row, spec.table))
    flags = dict(zip(spec.flag_names, row.get("flags", []), strict=False))
    origin = ""
    if not measured:
        tally.cited_rows += 1
        tally.retrainable += "experiment" in row
        origin = "cited: paper numbers only" + (
            " (set retrain_cited_baselines to train it)" if "experiment" in row else ""
        )
    texts: dict[Key, tuple[str, str]] = {}
    for cell in spec.cells(row):
        experiment, ours = _measure_cell(spec, row, cell, tally) if measured else ("", None)
        records.append(_record(spec, row, flags, cell, ours, experiment, origin))
        decimals = spec.decimals[(cell.summary, cell.index)]
        text = format_ours(ours, decimals, cell.column.get("metric", ""))
        texts[cell.key] = (text, format_plain(cell.paper))
    return Shown(row, measured, texts)


def _measure_cell(spec: Spec, row: dict[str, Any], cell: Cell, tally: Tally) -> tuple[str, Ours]:
    """The experiment (or template) a measured row's cell names, and its number."""
    registry = spec.registry
    experiment = row["experiment"]
    if spec.kind == "molecules" and not cell.summary:
        experiment = experiment.format(molecule=cell.molecule)
    experiments = [experiment]
    if cell.summary:
        experiments = _summary_experiments(registry, row, spec.table)
        if len(experiments) < len(registry.table_row_experiments(row, spec.table)):
            tally.averaged.update({_molecule(registry, e): None for e in experiments})
    ours = measure(registry, experiments, cell.column, experiment)
    tally.single += ours.n_seeds == 1 and ours.mean is not None
    tally.outcomes.add(ours, cell.column)
    return experiment, ours


def _record(
    spec: Spec,
    row: dict[str, Any],
    flags: dict[str, bool],
    cell: Cell,
    ours: Ours | None,
    experiment: str,
    origin: str,
) -> dict[str, Any]:
    """A cell's CSV record (module notes of dens.pipeline.tables); ``ours`` None: a cited row."""
    return {
        "row": row["label"],
        **{flag: "true" if value else "false" for flag, value in flags.items()},
        "molecule": cell.molecule,
        "column": cell.column["name"],
        "unit": (ours and ours.unit) or cell.column.get("unit", ""),
        "ours": ours.mean if ours else None,
        "ours_std": ours.std if ours else None,
        "n_seeds": ours.n_seeds if ours and not ours.state else None,
        "paper": paper_number(cell.paper),
        "status": ours.status if ours else "cited: paper only",
        "scale": spec.scale,
        "experiment": experiment,
        "origin": ours.origin if ours else origin,
    }


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


# -- display -----------------------------------------------------------------------------------
def _methods(
    spec: Spec, shown: list[Shown], keys: list[Key], with_flags: bool
) -> list[list[list[str]]]:
    """Every row's display lines for the cells ``keys`` (rows without a number left out)."""
    methods = []
    for row in shown:
        flags = [CHECK if f else "" for f in row.row.get("flags", [])] if with_flags else []
        method = method_lines(
            row.row["label"],
            flags,
            spec.scale,
            row.measured,
            [row.texts[key][0] for key in keys],
            [row.texts[key][1] for key in keys],
        )
        if method:
            methods.append(method)
    return methods


def _runs_parts(spec: Spec, shown: list[Shown]) -> list[Part]:
    """One tabular, or one per ``part`` of the columns (split like the paper)."""
    groups: dict[str | None, list[int]] = {}
    for index, column in enumerate(spec.columns):
        groups.setdefault(column.get("part"), []).append(index)
    parts = []
    for title, indices in groups.items():
        part = new_part(
            [spec.row_header],
            spec.flag_names,
            [spec.columns[index]["name"] for index in indices],
            [spec.columns[index].get("unit", "") for index in indices],
        )
        part.title = title
        keys = [("", index, False) for index in indices]
        part.blocks.append((None, _methods(spec, shown, keys, True)))
        parts.append(part)
    return parts


def _molecule_parts(spec: Spec, shown: list[Shown]) -> list[Part]:
    """Molecules as columns, one block per metric; per-method columns in a second tabular."""
    molecules = spec.molecules
    part = new_part(
        [spec.row_header],
        spec.flag_names,
        [molecule.replace("_", " ") for molecule in molecules],
        [""] * len(molecules),
    )
    for index, column in enumerate(spec.columns):
        keys = [(molecule, index, False) for molecule in molecules]
        part.blocks.append((heading(column), _methods(spec, shown, keys, True)))
    if not spec.summary:
        return [part]
    per_method = new_part(
        [spec.row_header],
        [],
        [column["name"] for column in spec.summary],
        [column.get("unit", "") for column in spec.summary],
    )
    keys = [("", index, True) for index in range(len(spec.summary))]
    per_method.blocks.append((None, _methods(spec, shown, keys, False)))
    return [part, per_method]


# -- footnotes ---------------------------------------------------------------------------------
def _results_notes(spec: Spec, tally: Tally) -> list[str]:
    registry, scale, table = spec.registry, spec.scale, spec.table
    notes = []
    if "paper_note" in table:
        notes.append(f"Paper: {table['paper_note']}.")
    if "simulate" in table_sources(table):
        notes.append(_simulation_note(registry))
    notes.append(_ours_note(registry))
    if tally.single:
        seeds = registry.options["seeds"]
        notes.append(f"{SINGLE_SEED} single seed (seeds: {seeds}): no standard deviation.")
    if tally.cited_rows:
        notes.append(
            "'paper (cited)': rows the paper cites from other work, paper numbers only"
            + (
                ", not trained here (set retrain_cited_baselines to train them)"
                if tally.retrainable
                else ""
            )
            + "."
        )
    notes += tally.outcomes.notes(scale)
    if tally.averaged:
        notes.append(
            f"Per-method columns at scale {scale}: the mean over the molecules trained here "
            f"({', '.join(tally.averaged)}), not over all {len(spec.molecules)}."
        )
    notes.append(f"{MISSING} = no number.")
    return notes


def _simulation_note(registry: Registry) -> str:
    scale = registry.scale_name
    simulation = registry.scale["simulation"]["md17"]
    length = f"{simulation['length_ps']:g} ps"
    if simulation.get("max_steps") is not None:  # the rehearsal's cap on the steps
        length += f" cut at {simulation['max_steps']} steps"
    return (
        f"Ours ({scale}): {simulation['initial_configurations']} simulation(s) per run, each "
        f"at most {length} (the cap of stability), means over them "
        f"(config/scales/{scale}.yaml simulation.md17; dens.simulate)."
    )


def _ours_note(registry: Registry) -> str:
    scale, seeds = registry.scale_name, registry.options["seeds"]
    return (
        f"'ours ({scale})' = measured at scale {scale} from the runs' metrics files "
        f"(results/{scale}/runs/<experiment>/seed<S>/), "
        + (
            f"mean ± sample standard deviation over seeds {seeds}"
            if len(seeds) > 1
            else f"seed {seeds[0]}"
        )
        + f"; 'paper' = {PAPER}. Our numbers at the paper's precision; the CSV has full precision."
    )
