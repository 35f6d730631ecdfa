"""Settings tables (kind ``settings``: Tables 7, 8, 9): the hyper-parameters configured at this
scale beside the paper's, and where each configured value comes from."""

from __future__ import annotations

from typing import Any

from dens.pipeline.registry import Registry
from dens.pipeline.tables.cells import format_plain, is_number, paper_number
from dens.pipeline.tables.layout import MISSING, PAPER, Table, method_lines, new_part

SETTINGS_COLUMNS = ["row", "key", "column", "experiment", "ours", "paper", "source", "scale"]


def _lookup(resolved: dict[str, Any], key: str) -> Any:
    value: Any = resolved
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def settings_table(registry: Registry, table: dict[str, Any]) -> Table:
    """Configured values at this scale beside the paper's, per hyper-parameter and column; where
    the configured values come from (dens.pipeline.registry.Registry.value_sources) in the CSV
    and, per hyper-parameter, in a footnote (the column name written as <column>)."""
    scale = registry.scale_name
    runs = [
        (registry.resolve(column["experiment"]), registry.value_sources(column["experiment"]))
        for column in table["columns"]
    ]
    records: list[dict[str, Any]] = []
    names = [column["name"] for column in table["columns"]]
    part = new_part([table.get("row_header", "hyper-parameter")], [], names, [""] * len(names), "c")
    methods, sources_notes = [], []
    for row in table["rows"]:
        ours_texts, paper_texts, sources = _settings_row(scale, table, runs, row, records)
        methods.append(method_lines(row["label"], [], scale, True, ours_texts, paper_texts))
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


def _settings_row(
    scale: str,
    table: dict[str, Any],
    runs: list[tuple[dict[str, Any], dict[str, str]]],
    row: dict[str, Any],
    records: list[dict[str, Any]],
) -> tuple[list[str], list[str], list[str]]:
    """A hyper-parameter's records (appended) and its texts: ours and the paper's per column, and
    where the configured values come from (each column's name written as <column>). ``runs``:
    per column, the resolved experiment and the sources of its values."""
    ours_texts, paper_texts, sources = [], [], []
    for index, (column, (run, run_sources)) in enumerate(zip(table["columns"], runs, strict=True)):
        ours = _lookup(run, row["key"])
        paper = row["paper"][index] if index < len(row["paper"]) else None
        source = run_sources.get(row["key"], "")
        records.append(
            {
                "row": row["label"],
                "key": row["key"],
                "column": column["name"],
                "experiment": column["experiment"],
                "ours": ours if is_number(ours) or ours is None else format_plain(ours),
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
    return ours_texts, paper_texts, sources
