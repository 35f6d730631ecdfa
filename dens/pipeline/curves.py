"""Learning curves: validation force and energy MAE against optimiser step, one figure per
results table.

For every run of a table that is trained at this scale (not cited, its model family implemented
and, for MD17, its molecule in the scale's ``md17_molecules``:
:func:`dens.pipeline.tables.read.not_run_reason`), each configured seed's training log
(``runs/<experiment>/seed<S>/log.csv``, written by :mod:`dens.train`: a row per epoch and, with
``optim.val_every_steps``, a row per validation inside an epoch; dens.training.log.LOG_COLUMNS)
gives ``val_forces_mae_meV_per_A`` and ``val_energy_mae_meV`` of the validation split the run
monitors (EMA weights where EMA is on), every row at its ``step``. The figure has one column per
metric and one row per dataset (the molecule of an MD17 table); a line per experiment (table
row), solid without DeNS and dashed with it, the mean over seeds with their standard deviation
as a band when there are several. The mini and smoke scales train one or two epochs and
validate several times in each (their val_every_steps), so their curves have a shape too.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from dens.errors import ConfigError
from dens.pipeline import paths
from dens.pipeline.registry import Registry
from dens.pipeline.tables.read import not_run_reason

METRICS = {
    "val_forces_mae_meV_per_A": "validation force MAE (meV/Å)",
    "val_energy_mae_meV": "validation energy MAE (meV)",
}
AXES = ("step", "epoch")
"""The columns of log.csv a curve is drawn against (step) or labelled with (epoch)."""


def curve_tables(registry: Registry) -> list[str]:
    """Tables with trained rows (every kind but ``settings``), in configuration order."""
    return [name for name, table in registry.tables.items() if table["kind"] != "settings"]


def curve_runs(registry: Registry, name: str) -> list[tuple[str, str, int]]:
    """(row label, experiment, seed) of every run a table's curves read."""
    table = registry.table(name)
    if table["kind"] == "settings":
        raise ConfigError(f"{name}: a settings table has no training runs, hence no curves")
    runs = []
    for row in table["rows"]:
        for experiment in registry.table_row_experiments(row, table):
            if not_run_reason(registry, experiment) is not None:
                continue
            runs += [(row["label"], experiment, seed) for seed in registry.options["seeds"]]
    return runs


def curve_inputs(registry: Registry, name: str) -> list[PurePosixPath]:
    """The training logs a table's curves read."""
    scale = registry.scale_name
    return [paths.run(scale, e, seed).log for _, e, seed in curve_runs(registry, name)]


def read_curves(registry: Registry, name: str, root: Path = Path(".")) -> Any:
    """A long pandas DataFrame: row (the table's label), dataset, experiment (its name within the
    dataset), DeNS, seed, step, epoch, metric, value (one line per log row, epoch end or inside
    an epoch, and metric). A missing log or column raises ConfigError naming the file."""
    import pandas as pd

    frames = []
    for label, experiment, seed in curve_runs(registry, name):
        path = root / paths.run(registry.scale_name, experiment, seed).log
        if not path.is_file():
            raise ConfigError(f"{path}: training log of {experiment} seed {seed} not found")
        log = pd.read_csv(path)
        missing = sorted({*METRICS, *AXES} - set(log.columns))
        if missing:
            raise ConfigError(f"{path}: no column(s) {', '.join(missing)}")
        frame = log.melt(id_vars=list(AXES), value_vars=list(METRICS), var_name="metric")
        frame["metric"] = frame["metric"].map(METRICS)
        frame["row"] = label
        frame["dataset"], frame["experiment"] = experiment.split("/", 1)
        frame["DeNS"] = "with DeNS" if registry.experiment(experiment)["dens"] else "without DeNS"
        frame["seed"] = seed
        frames.append(frame)
    if not frames:
        raise ConfigError(f"{name}: no row of this table is trained at scale {registry.scale_name}")
    return pd.concat(frames, ignore_index=True)


def draw_curves(registry: Registry, name: str, out: Path, root: Path = Path(".")) -> list[Path]:
    """Draw a table's learning curves to ``out`` (.png) and the same name with .pdf."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns
    from matplotlib.ticker import MaxNLocator

    data = read_curves(registry, name, root)
    several_seeds = data["seed"].nunique() > 1
    grid = sns.relplot(
        data=data,
        kind="line",
        x="step",
        y="value",
        hue="experiment",
        style="DeNS",
        style_order=["without DeNS", "with DeNS"],
        row="dataset",
        col="metric",
        markers=True,
        errorbar="sd" if several_seeds else None,
        facet_kws={"sharey": False, "sharex": True},
        height=2.6,
        aspect=1.5,
    )
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    grid.set_axis_labels("optimiser step", "")
    last_step = int(data["step"].max())
    for axis in grid.axes.flat:
        axis.set_xlim(0, last_step * 1.02 + 1)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axis.ticklabel_format(axis="y", useOffset=False)
    seeds = ", ".join(str(s) for s in sorted(data["seed"].unique()))
    band = "mean ± sd over seeds" if several_seeds else "one seed"
    grid.figure.suptitle(
        f"{name}: validation MAE against optimiser step, scale {registry.scale_name} "
        f"(seeds {seeds}; {band})",
        y=1.02,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [out, out.with_suffix(".pdf")]
    for path in written:
        grid.figure.savefig(path, bbox_inches="tight", dpi=120)
    return written
