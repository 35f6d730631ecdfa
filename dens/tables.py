"""The paper's tables as CSV and LaTeX, laid out like the paper, our numbers beside the paper's.

Every measured cell comes from a metrics file a run wrote (``metrics.json``, ``relax/metrics.json``
or ``simulate/metrics.json`` in the run's directory, dens.paths); paper numbers come only from
``config/tables.yaml`` and sit in columns labelled ``paper``. Rows the paper cites from other work
carry paper numbers only and say so. Settings tables (7, 8, 9) compare the configured
hyper-parameters of this scale with the paper's.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from dens import paths
from dens.config import Registry, row_experiments
from dens.errors import ConfigError, DensError

MISSING = "—"


class MetricsError(DensError, ValueError):
    """A metrics file a table needs is missing or lacks a metric; the message names it."""


def read_metric(registry: Registry, experiment: str, column: dict[str, Any]) -> Any:
    """One metric of one experiment: the mean over the configured training seeds, each read
    from the metrics file its column's source names."""
    values = []
    for seed in registry.options["seeds"]:
        path = registry.root / paths.metrics_file(
            registry.scale_name, experiment, seed, column.get("source", "evaluate")
        )
        try:
            metrics = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise MetricsError(
                f"{path}: metrics file missing (run the experiment first)"
            ) from error
        except json.JSONDecodeError as error:
            raise MetricsError(f"{path}: not valid JSON: {error}") from error
        if column["metric"] not in metrics:
            raise MetricsError(
                f"{path}: no metric {column['metric']!r} (has: {', '.join(metrics)})"
            )
        values.append(metrics[column["metric"]])
    return values[0] if len(values) == 1 else _mean(values)


def format_value(value: Any, metric: str = "") -> str:
    """Render a cell: parameter counts in millions, MAEs with one or two decimals."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if metric == "num_parameters" and isinstance(value, int | float):
        return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def _mean(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != len(values) or not numbers:
        return None
    return sum(numbers) / len(numbers)


def _lookup(resolved: dict[str, Any], key: str) -> Any:
    value: Any = resolved
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _check(flag: bool) -> str:
    return "yes" if flag else ""


def build_rows(registry: Registry, name: str) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, body rows and footnotes of one table, as strings."""
    table = registry.table(name)
    kind = table["kind"]
    notes: list[str] = []
    if kind == "settings":
        return _settings_rows(registry, table) + (notes,)
    header = ["row"] + list(table.get("flag_columns", []))
    if kind == "runs":
        for column in table["columns"]:
            unit = f" ({column['unit']})" if column["unit"] else ""
            header += [f"{column['name']}{unit} ours", f"{column['name']}{unit} paper"]
    else:
        for molecule in table["molecules"]:
            for column in table["columns"]:
                header += [
                    f"{molecule} {column['name']} ours",
                    f"{molecule} {column['name']} paper",
                ]
        for column in table.get("summary_columns", []):
            unit = f" ({column['unit']})" if column["unit"] else ""
            header += [f"{column['name']}{unit} ours", f"{column['name']}{unit} paper"]
    header.append("origin")
    body: list[list[str]] = []
    for row in table["rows"]:
        measured = registry.table_row_experiments(row, table)
        cells = [row["label"]] + [_check(flag) for flag in row.get("flags", [])]
        if kind == "runs":
            for index, column in enumerate(table["columns"]):
                ours = read_metric(registry, measured[0], column) if measured else None
                paper = row["paper"][index] if index < len(row["paper"]) else None
                cells += [format_value(ours, column["metric"]), format_value(paper)]
        else:
            for molecule in table["molecules"]:
                experiment = row["experiment"].format(molecule=molecule) if measured else None
                paper = row["paper"].get(molecule) or []
                for index, column in enumerate(table["columns"]):
                    ours = read_metric(registry, experiment, column) if experiment else None
                    theirs = paper[index] if index < len(paper) else None
                    cells += [format_value(ours, column["metric"]), format_value(theirs)]
            for index, column in enumerate(table.get("summary_columns", [])):
                ours = (
                    _mean([read_metric(registry, e, column) for e in measured])
                    if measured
                    else None
                )
                paper_summary = row.get("paper_summary", [])
                theirs = paper_summary[index] if index < len(paper_summary) else None
                cells += [format_value(ours, column["metric"]), format_value(theirs)]
        if measured:
            origin = f"measured ({registry.scale_name}): {row_experiments(row, table)[0]}"
            if kind == "molecules":
                origin = f"measured ({registry.scale_name}): {row['experiment']}"
        elif row.get("experiment"):
            origin = "cited: paper numbers only (set retrain_cited_baselines to train it)"
        else:
            origin = "cited: paper numbers only"
        body.append(cells + [origin])
    if "paper_note" in table:
        notes.append(f"Paper: {table['paper_note']}.")
    notes.append(
        f"'ours' = measured at scale {registry.scale_name} from the runs' metrics files; "
        "'paper' = Liao et al., TMLR 2024."
    )
    return header, body, notes


def _settings_rows(registry: Registry, table: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Configured value beside the paper's per hyper-parameter and column, and a last column
    with where the configured paper-scale values come from (the experiments' ``value_sources``,
    the column name written as <column>)."""
    header = ["hyper-parameter"]
    for column in table["columns"]:
        header += [f"{column['name']} ours ({registry.scale_name})", f"{column['name']} paper"]
    header.append("source of the paper-scale value")
    resolved = [registry.resolve(column["experiment"]) for column in table["columns"]]
    body = []
    for row in table["rows"]:
        cells = [row["label"]]
        sources: list[str] = []
        for index, (column, run) in enumerate(zip(table["columns"], resolved, strict=True)):
            theirs = row["paper"][index] if index < len(row["paper"]) else None
            cells += [format_value(_lookup(run, row["key"])), format_value(theirs)]
            value_sources = registry.experiment(column["experiment"]).get("value_sources", {})
            if row["key"] in value_sources:
                source = value_sources[row["key"]].replace(column["name"], "<column>")
                if source not in sources:
                    sources.append(source)
        body.append(cells + ["; ".join(sources) or MISSING])
    return header, body


def _latex_escape(text: str) -> str:
    replacements = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "#": r"\#",
        "_": r"\_",
        "$": r"\$",
        "{": r"\{",
        "}": r"\}",
        "Å": r"\AA{}",
        "—": "--",
    }
    return "".join(replacements.get(char, char) for char in text)


def to_latex(caption: str, header: list[str], body: list[list[str]], notes: list[str]) -> str:
    """A booktabs table; check marks for flag columns."""
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\scriptsize",
        r"\caption{" + _latex_escape(caption) + "}",
        r"\begin{tabular}{" + "l" * len(header) + "}",
        r"\toprule",
        " & ".join(_latex_escape(cell) for cell in header) + r" \\",
        r"\midrule",
    ]
    for cells in body:
        rendered = [r"\checkmark" if cell == "yes" else _latex_escape(cell) for cell in cells]
        lines.append(" & ".join(rendered) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [r"\par\smallskip " + _latex_escape(note) for note in notes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(registry: Registry, name: str, out_dir: Path) -> list[Path]:
    """Write ``<name>.csv`` and ``<name>.tex``; every measured number read from metrics files."""
    try:
        header, body, notes = build_rows(registry, name)
    except KeyError as error:
        raise ConfigError(f"config/tables.yaml: tables.{name}: missing key {error}") from error
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, tex_path = out_dir / f"{name}.csv", out_dir / f"{name}.tex"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(body)
    tex_path.write_text(to_latex(registry.table(name)["caption"], header, body, notes))
    return [csv_path, tex_path]
