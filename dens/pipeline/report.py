"""The HTML report of one scale: every table, Figures 3-5 and the learning curves in one file.

One self-contained page (images embedded as base64 PNG, no JavaScript): a header naming the
scale, its description, the configured seeds and the commit it was built from; then every table
of config/tables.yaml rebuilt from the runs' metrics files exactly as ``dens table`` writes it
(:func:`dens.pipeline.tables.build.build_table`, links to its CSV and LaTeX files beside it), and
the table of the published checkpoints where asked (``--published``: the pipeline asks where its
target ``all`` includes them, dens.pipeline.published.in_all); then the figures and the learning
curves (:mod:`dens.pipeline.curves`) with the captions of workflow/report/captions.yaml. A figure
file that is missing stops the report with its path (the pipeline builds them first).
"""

from __future__ import annotations

import base64
import datetime
import html
import os
import subprocess
from pathlib import Path
from typing import Any

from dens.config_files import read_yaml
from dens.errors import ConfigError
from dens.pipeline import paths
from dens.pipeline.curves import curve_tables
from dens.pipeline.figures import FIGURES
from dens.pipeline.registry import Registry
from dens.pipeline.tables.build import build_table
from dens.pipeline.tables.render import to_html

CAPTIONS = Path("workflow") / "report" / "captions.yaml"
STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { padding: 2px 8px; border-bottom: 1px solid #ddd; }
th.unit { font-weight: normal; color: #666; }
td.r { text-align: right; } td.c { text-align: center; }
tr.paper td { color: #666; } td.block { font-weight: bold; font-style: italic; }
p.caption { font-weight: bold; } p.note { font-size: 0.8em; color: #555; margin: 0.2em 0; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #333; }
"""


def _commit(root: Path) -> str:
    """The checkout's git commit (with "+changes" if the tree differs), or "unknown"."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _image(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"{path}: figure not found (the report rule builds it first)")
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(path: Path, caption: str, alt: str) -> str:
    return (
        f"<figure><img src='{_image(path)}' alt='{html.escape(alt)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def report_sections(
    registry: Registry, root: Path, published: bool = False
) -> list[tuple[str, str, str]]:
    """(anchor, heading, HTML body) of every table, figure and learning-curve figure, and of the
    table of the published checkpoints (dens.pipeline.published) when ``published``."""
    scale = registry.scale_name
    captions: dict[str, Any] = read_yaml(registry.root / CAPTIONS)
    fill = {
        "scale": scale,
        "description": registry.scale.get("description", ""),
        "seeds": ", ".join(str(seed) for seed in registry.options["seeds"]),
    }
    figures = []
    for name in FIGURES:
        path = root / paths.figure_file(scale, name)
        figures.append((name, name, _figure(path, captions[name].format(**fill), name)))
    for name in curve_tables(registry):
        path = root / paths.curves_file(scale, name, "png")
        caption = captions["curves"].format(table=name, **fill)
        figure = _figure(path, caption, f"learning curves of {name}")
        figures.append((f"curves-{name}", f"learning curves, {name}", figure))
    tables = []
    for name in registry.tables:
        files = {ext: paths.table_file(scale, name, ext) for ext in ("csv", "tex", "md")}
        links = " · ".join(
            f"<a href='{os.path.relpath(path, paths.results_dir(scale))}'>{ext}</a>"
            for ext, path in files.items()
        )
        body = to_html(build_table(registry, name)) + f"<p class='note'>files: {links}</p>"
        tables.append((name, name, body))
    if published:
        from dens.pipeline.published import TABLE, load_published
        from dens.pipeline.tables.published import build_published_table

        table = build_published_table(registry, load_published(registry))
        files = {ext: paths.table_file(scale, TABLE, ext) for ext in ("csv", "tex", "md")}
        links = " · ".join(
            f"<a href='{os.path.relpath(path, paths.results_dir(scale))}'>{ext}</a>"
            for ext, path in files.items()
        )
        tables.append((TABLE, TABLE, to_html(table) + f"<p class='note'>files: {links}</p>"))
    sections = tables + figures
    return sections


def write_report(
    registry: Registry, out: Path, root: Path = Path("."), published: bool = False
) -> Path:
    """Write the report of the registry's scale to ``out`` (an .html file); ``published``: with
    the table of the published checkpoints."""
    scale = registry.scale_name
    sections = report_sections(registry, root, published)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    seeds = ", ".join(str(seed) for seed in registry.options["seeds"])
    header = (
        f"<h1>DeNS reproduction (Liao et al., TMLR 2024): scale {html.escape(scale)}</h1>"
        f"<p>{html.escape(registry.scale.get('description', ''))} Training seeds: {seeds}. "
        f"Built {now} from the metrics files and training logs under results/{scale}/ "
        f"(commit {_commit(registry.root)}). In the tables, <em>ours ({scale})</em> lines are "
        "measured by this pipeline at this scale, <em>paper</em> lines are the paper's numbers "
        "at its full scale; at a small scale the two are not comparable in size.</p>"
    )
    contents = " · ".join(f"<a href='#{a}'>{html.escape(h)}</a>" for a, h, _ in sections)
    body = "\n".join(f"<h2 id='{a}'>{html.escape(h)}</h2>\n{b}" for a, h, b in sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>DeNS reproduction, scale {html.escape(scale)}</title>"
        f"<style>{STYLE}</style></head><body>\n{header}\n<p>{contents}</p>\n{body}\n"
        "</body></html>\n"
    )
    return out
