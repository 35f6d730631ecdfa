"""The table ``published``: the published EquiformerV2 + DeNS checkpoints beside the paper.

Built by :func:`build_published_table` (written by ``dens table published`` as CSV, Markdown and
LaTeX into results/{scale}/tables/, and in the HTML report where the target is part of ``all``:
dens.pipeline.published.in_all): per checkpoint of config/published.yaml
(dens.pipeline.published) and split, our force and energy MAE (from the run's metrics.json), the
paper's number, the difference and whether it exceeds the tolerance of config/published.yaml (a
fraction of the paper's number); per IS2RE validation split the relaxed-energy MAE and EwT
(relax/metrics.json), which the paper does not report (it reports IS2RE on the test splits); and
for each the checkpoint's sha256 (``imported_from``, which ``dens evaluate`` copies from the
imported best.pt into metrics.json) and where the data come from (the dataset's
provenance.json). Every number comes from a file a job wrote; the paper's only from
config/published.yaml.

CSV columns: checkpoint, experiment, task (``S2EF val``, ``IS2RE val``), split (a split, or
``average``: the mean over the splits, metrics.json's top level), column, unit, ours, paper,
difference (ours - paper), relative_difference (difference / paper), tolerance, flag (``true``
where |difference| > tolerance x paper), status, scale, checkpoint_sha256, data_provenance,
provenance_file, origin (the metrics file), paper_source.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from dens.pipeline import paths
from dens.pipeline.published import AVERAGE, CONFIG, TABLE, Checkpoint, Published, load_published
from dens.pipeline.registry import Registry
from dens.pipeline.tables.cells import format_number
from dens.pipeline.tables.layout import MISSING, Part, Table
from dens.pipeline.tables.read import MetricsError, read_metrics
from dens.pipeline.tables.render import write_renderings

S2EF_COLUMNS = (
    ("forces_mae_meV_per_A", "force MAE", "meV/Å", 2),
    ("energy_mae_meV", "energy MAE", "meV", 1),
)
"""(metric, column name, unit, decimals of ours where the paper prints none)."""
IS2RE_COLUMNS = (("energy_mae_meV", "energy MAE", "meV", 1), ("ewt", "EwT", "", 3))
NO_IS2RE_PAPER = "no paper number (the paper reports IS2RE test)"
FIELDS = [
    "checkpoint",
    "experiment",
    "task",
    "split",
    "column",
    "unit",
    "ours",
    "paper",
    "difference",
    "relative_difference",
    "tolerance",
    "flag",
    "status",
    "scale",
    "checkpoint_sha256",
    "data_provenance",
    "provenance_file",
    "origin",
    "paper_source",
]
CAPTION = (
    "The published EquiformerV2 + DeNS checkpoints evaluated on the validation splits, "
    "beside the paper's numbers"
)


def table_inputs(registry: Registry, published: Published) -> list[PurePosixPath]:
    """The files the table reads: per checkpoint its metrics files and its dataset's
    provenance.json."""
    scale, files = registry.scale_name, []
    for checkpoint in published.checkpoints.values():
        files.append(paths.published_run(scale, checkpoint.name).published("evaluate"))
        if checkpoint.relax:
            files.append(paths.published_run(scale, checkpoint.name).published("relax"))
        files.append(paths.dataset(scale, checkpoint.dataset).provenance)
    return list(dict.fromkeys(files))


def provenance_summary(provenance: Mapping[str, Any], splits: list[str]) -> str:
    """Where ``splits`` of a prepared dataset come from, from its provenance.json: the archives
    (and their published checksums) of downloaded data, or the generator and seed of generated
    data, with the rows per split."""
    if "archives" in provenance:  # dens.data.oc_convert
        rows = ", ".join(f"{s} {provenance['frames'].get(s, '?')} rows" for s in splits)
        archives = []
        for name, archive in provenance["archives"].items():
            if set(archive.get("splits", [])) & set(splits):
                checksum = archive.get("checksum")
                digest = (
                    f"{checksum['algorithm']} {checksum['digest']}" if checksum else "no checksum"
                )
                archives.append(f"{name} ({digest})")
        return f"{provenance['dataset']}: {rows}; from {', '.join(archives)}"
    counts = provenance.get("splits", {})
    rows = ", ".join(f"{s} {counts.get(s, {}).get('rows', '?')} rows" for s in splits)
    return (
        f"{provenance.get('dataset', provenance.get('name'))} generated with "
        f"{provenance.get('method')} (seed {provenance.get('seed')}): {rows}"
    )


def _imported_sha256(metrics: Mapping[str, Any], path: Path) -> str:
    """The sha256 of the file a checkpoint was imported from, as its metrics record it."""
    imported = metrics.get("imported_from") or {}
    if "sha256" not in imported:
        raise MetricsError(f"{path}: no imported_from.sha256 (not an imported checkpoint)")
    return str(imported["sha256"])


def _decimals(paper: str | None, default: int) -> int:
    if paper is None:
        return default
    return len(paper.split(".")[1]) if "." in paper else 0


def _difference_text(difference: float, relative: float, flagged: bool, decimals: int) -> str:
    text = f"{difference:+.{decimals}f} ({100 * relative:+.1f}%"
    return text + (", exceeds tolerance)" if flagged else ")")


def _values(metrics: Mapping[str, Any], split: str, path: Path) -> Mapping[str, Any]:
    if split == AVERAGE:
        return metrics
    values = metrics.get("splits", {}).get(split)
    if values is None:
        raise MetricsError(
            f"{path}: no split {split!r} (splits: {', '.join(metrics.get('splits', {}))})"
        )
    return values


def _metric(values: Mapping[str, Any], metric: str, path: Path) -> float:
    if metric not in values:
        raise MetricsError(f"{path}: no metric {metric!r} (has: {', '.join(values)})")
    return float(values[metric])


def _validation_part(columns: tuple[tuple[str, str, str, int], ...], title: str) -> Part:
    return Part(
        ["checkpoint", "split", "", *(c[1] for c in columns)],
        ["", "", "", *(c[2] for c in columns)],
        "lll" + "r" * len(columns),
        title=title,
    )


def build_published_table(registry: Registry, published: Published) -> Table:
    """Records and display of the table ``published`` (module notes)."""
    s2ef = _validation_part(S2EF_COLUMNS, "S2EF validation")
    is2re = _validation_part(IS2RE_COLUMNS, "IS2RE validation relaxations")
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    flagged_any = False
    for checkpoint in published.checkpoints.values():
        metrics, common, provenance = _checkpoint_files(registry, checkpoint)
        methods, flagged = _s2ef_methods(
            registry, published, checkpoint, metrics, common, provenance, records
        )
        flagged_any |= flagged
        s2ef.blocks.append((None, methods))
        notes.append(
            f"{checkpoint.name}: imported as {checkpoint.experiment}, sha256 "
            f"{common['checkpoint_sha256']}; paper: {checkpoint.paper_source}; data: "
            f"{provenance_summary(provenance, list(checkpoint.evaluate))} "
            f"({common['provenance_file']})."
        )
        if checkpoint.relax:
            methods = _is2re_methods(registry, checkpoint, common, provenance, records)
            is2re.blocks.append((None, methods))
    notes = [
        _ours_note(registry.scale_name, published.tolerance),
        *notes,
        *_closing_notes(published.tolerance, flagged_any, bool(is2re.blocks)),
    ]
    parts = [s2ef] + ([is2re] if is2re.blocks else [])
    return Table(FIELDS, records, CAPTION, parts, notes)


def _checkpoint_files(
    registry: Registry, checkpoint: Checkpoint
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A checkpoint's S2EF validation metrics, the record fields of all its lines and its
    dataset's provenance."""
    scale, root = registry.scale_name, registry.root
    metrics_path = root / paths.published_run(scale, checkpoint.name).published("evaluate")
    metrics = read_metrics(metrics_path)
    provenance_path = paths.dataset(scale, checkpoint.dataset).provenance
    provenance = read_metrics(root / provenance_path)
    common = {
        "checkpoint": checkpoint.name,
        "experiment": checkpoint.experiment,
        "scale": scale,
        "checkpoint_sha256": _imported_sha256(metrics, metrics_path),
        "provenance_file": str(provenance_path),
        "paper_source": checkpoint.paper_source,
    }
    return metrics, common, provenance


def _s2ef_methods(
    registry: Registry,
    published: Published,
    checkpoint: Checkpoint,
    metrics: dict[str, Any],
    common: dict[str, Any],
    provenance: dict[str, Any],
    records: list[dict[str, Any]],
) -> tuple[list[list[list[str]]], bool]:
    """A checkpoint's S2EF validation lines (ours, and the paper's and the difference where the
    paper has a number), one method per split and the average; its records appended; whether a
    number exceeds the tolerance."""
    scale, root = registry.scale_name, registry.root
    metrics_path = paths.published_run(scale, checkpoint.name).published("evaluate")
    methods: list[list[list[str]]] = []
    flagged_any = False
    for split in [*checkpoint.evaluate, AVERAGE]:
        values = _values(metrics, split, root / metrics_path)
        data_splits = list(checkpoint.evaluate) if split == AVERAGE else [split]
        base = {
            **common,
            "task": "S2EF val",
            "split": split,
            "tolerance": published.tolerance,
            "data_provenance": provenance_summary(provenance, data_splits),
            "origin": str(metrics_path),
        }
        lines = [[split, f"ours ({scale})"], ["", "paper"], ["", "difference"]]
        for metric, column, unit, default in S2EF_COLUMNS:
            ours = _metric(values, metric, root / metrics_path)
            paper_text = checkpoint.paper.get(split, {}).get(metric)
            fields, texts, flagged = _s2ef_cell(ours, paper_text, split, default, published)
            flagged_any |= flagged
            records.append({**base, "column": column, "unit": unit, "ours": ours, **fields})
            for line, text in zip(lines, texts, strict=True):
                line.append(text)
        shown = lines if any(cell != MISSING for cell in lines[1][2:]) else lines[:1]
        label = "" if methods else checkpoint.name
        methods.append([["" if i else label, *line] for i, line in enumerate(shown)])
    return methods, flagged_any


def _s2ef_cell(
    ours: float, paper_text: str | None, split: str, default: int, published: Published
) -> tuple[dict[str, Any], list[str], bool]:
    """One S2EF number beside the paper's: its record fields, its texts (ours, paper,
    difference) and whether it exceeds the tolerance."""
    decimals = _decimals(paper_text, default)
    ours_text = format_number(ours, decimals)
    if paper_text is None:
        status = "no paper number (the paper reports " + (
            "the average over the splits)" if split != AVERAGE else "each split)"
        )
        return {"status": status}, [ours_text, MISSING, MISSING], False
    paper = float(paper_text)
    difference = ours - paper
    relative = difference / paper
    flagged = abs(difference) > published.tolerance * paper
    fields = {
        "paper": paper,
        "difference": difference,
        "relative_difference": relative,
        "flag": "true" if flagged else "false",
        "status": "exceeds tolerance" if flagged else "within tolerance",
    }
    difference_text = _difference_text(difference, relative, flagged, decimals)
    return fields, [ours_text, paper_text, difference_text], flagged


def _is2re_methods(
    registry: Registry,
    checkpoint: Checkpoint,
    common: dict[str, Any],
    provenance: dict[str, Any],
    records: list[dict[str, Any]],
) -> list[list[list[str]]]:
    """A checkpoint's IS2RE validation line per split and the average; its records appended."""
    scale, root = registry.scale_name, registry.root
    relax_path = paths.published_run(scale, checkpoint.name).published("relax")
    relax = read_metrics(root / relax_path)
    if relax.get("metrics_source") is None:
        raise MetricsError(f"{relax_path}: no relaxed-energy labels were scored")
    relax_splits = registry.splits(checkpoint.dataset, "relax_val")
    methods: list[list[list[str]]] = []
    for split in [*relax["splits"], AVERAGE]:
        values = _values(relax, split, root / relax_path)
        files = [s for s in relax_splits if s.endswith(f"_{split}")] or relax_splits
        line = [split, f"ours ({scale})"]
        for metric, column, unit, decimals in IS2RE_COLUMNS:
            ours = _metric(values, metric, root / relax_path)
            records.append(
                {
                    **common,
                    "task": "IS2RE val",
                    "split": split,
                    "column": column,
                    "unit": unit,
                    "ours": ours,
                    "status": NO_IS2RE_PAPER,
                    "data_provenance": provenance_summary(provenance, files),
                    "origin": str(relax_path),
                }
            )
            line.append(format_number(ours, decimals))
        methods.append([[checkpoint.name if not methods else "", *line]])
    return methods


def _ours_note(scale: str, tolerance: float) -> str:
    return (
        f"'ours ({scale})' = the published weights evaluated here at scale {scale} "
        f"(results/{scale}/published/<checkpoint>/); 'paper' = the authors' numbers; difference "
        f"= ours - paper (percent of paper), 'exceeds tolerance' where |difference| > "
        f"{100 * tolerance:g}% of the paper's number ({CONFIG}). 'average' = the mean over the "
        "splits, each weighted equally."
    )


def _closing_notes(tolerance: float, flagged_any: bool, with_is2re: bool) -> list[str]:
    notes = []
    if flagged_any:
        notes.append(f"Some numbers differ from the paper's by more than {100 * tolerance:g}%.")
    if with_is2re:
        notes.append(
            f"IS2RE validation: relaxed-energy MAE and EwT (|error| < 0.02 eV) of the relax_val "
            f"splits with local labels; {NO_IS2RE_PAPER}."
        )
    notes.append(f"{MISSING} = no number.")
    return notes


def write_published_table(registry: Registry, out_dir: Path) -> list[Path]:
    """Write published.csv, .md and .tex into ``out_dir``."""
    return write_renderings(
        build_published_table(registry, load_published(registry)), TABLE, out_dir
    )
