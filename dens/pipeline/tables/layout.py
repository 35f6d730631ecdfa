"""A built table: its CSV records and its display (parts, blocks, lines of cell texts, footnotes),
which dens.pipeline.tables.render writes as CSV, Markdown, LaTeX and HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MISSING = "—"
SINGLE_SEED = "†"
WITHOUT_GPU = "‡"
CHECK = "✓"
PAPER = "Liao et al., TMLR 2024"


@dataclass
class Part:
    """One tabular: a header, then blocks (an optional title line and lines of cells)."""

    header: list[str]
    units: list[str]  # second header line (units); all empty = none
    aligns: str  # one of l (text), c (check marks), r (numbers) per column
    title: str | None = None  # a part of a table split as the paper does
    blocks: list[tuple[str | None, list[list[list[str]]]]] = field(default_factory=list)
    # a block: (title, methods), a method: its lines (ours, paper), a line: its cells


def new_part(
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


def method_lines(
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


def heading(column: dict[str, Any]) -> str:
    """A column's name with its unit, as a block title."""
    return f"{column['name']} ({column['unit']})" if column.get("unit") else column["name"]
