"""Rendering a built table (dens.pipeline.tables.layout.Table): tidy CSV, GitHub Markdown, LaTeX
(booktabs) and an HTML fragment for the report; :func:`write_renderings` writes the first three."""

from __future__ import annotations

import csv
import html
import textwrap
from pathlib import Path
from typing import Any

from dens import atomic_files
from dens.pipeline.tables.layout import CHECK, SINGLE_SEED, WITHOUT_GPU, Table


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


def write_renderings(table: Table, name: str, out_dir: Path) -> list[Path]:
    """Write ``table`` as ``<name>.csv``, ``<name>.md`` and ``<name>.tex`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, tex_path = (out_dir / f"{name}.{ext}" for ext in ("csv", "md", "tex"))
    to_csv(table, csv_path)
    atomic_files.write_text(md_path, to_markdown(table), "writing table")
    atomic_files.write_text(tex_path, to_latex(table), "writing table")
    return [csv_path, md_path, tex_path]
