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

The package by concern: :mod:`.read` reads the metrics files and the server's results (and lists a
table job's inputs), :mod:`.cells` averages a cell over the seeds and writes its text,
:mod:`.build` builds a table of runs (:mod:`.settings` a settings table) into the
:mod:`.layout` of records and display parts, :mod:`.render` writes them as CSV, Markdown, LaTeX and
HTML. :func:`write_table` is the ``dens table`` command's: build, then render.
"""

from __future__ import annotations

from pathlib import Path

from dens.errors import ConfigError
from dens.pipeline.registry import Registry
from dens.pipeline.tables.build import build_table
from dens.pipeline.tables.render import write_renderings


def write_table(registry: Registry, name: str, out_dir: Path) -> list[Path]:
    """Write ``<name>.csv``, ``<name>.md`` and ``<name>.tex``; every measured number read from
    metrics files."""
    try:
        table = build_table(registry, name)
    except KeyError as error:
        raise ConfigError(f"config/tables.yaml: tables.{name}: missing key {error}") from error
    return write_renderings(table, name, out_dir)
