"""The published EquiformerV2 + DeNS checkpoints beside the paper's numbers: target ``published``.

config/published.yaml (schema: workflow/schemas/published.schema.yaml) lists the checkpoints the
paper's authors published (the official DeNS README's Checkpoint table), each named after its
archive in config/archives.yaml: the registered experiment it is imported as, the S2EF validation
splits it is scored on, whether it relaxes the IS2RE validation splits (dataset role
``relax_val``) and writes an S2EF test submission, the linear energy reference it needs, and the
paper's numbers with their source. :func:`load_published` reads and checks it against the
catalog and the registry; workflow/rules/published.smk turns each checkpoint into jobs on
``results/{scale}/published/<name>/`` (dens.pipeline.paths.published_dir: the run-directory layout
of a trained run, without seeds).

The table ``published`` (:func:`build_published_table`, written by ``dens table published`` as
CSV, Markdown and LaTeX into results/{scale}/tables/, and in the HTML report where the target is
part of ``all``: :func:`in_all`): per checkpoint and split, our force and energy MAE (from the
run's metrics.json), the paper's number, the difference and whether it exceeds the tolerance of
config/published.yaml (a fraction of the paper's number); per IS2RE validation split the
relaxed-energy MAE and EwT (relax/metrics.json), which the paper does not report (it reports
IS2RE on the test splits); and for each the checkpoint's sha256 (best.pt's ``imported_from``)
and where the data come from (the dataset's provenance.json). Every number comes from a file a
job wrote; the paper's only from config/published.yaml.

CSV columns: checkpoint, experiment, task (``S2EF val``, ``IS2RE val``), split (a split, or
``average``: the mean over the splits, metrics.json's top level), column, unit, ours, paper,
difference (ours - paper), relative_difference (difference / paper), tolerance, flag (``true``
where |difference| > tolerance x paper), status, scale, checkpoint_sha256, data_provenance,
provenance_file, origin (the metrics file), paper_source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dens.config_files import read_yaml, validate
from dens.errors import ConfigError
from dens.pipeline import paths
from dens.pipeline.registry import Registry
from dens.pipeline.tables.cells import format_number
from dens.pipeline.tables.layout import MISSING, Part, Table
from dens.pipeline.tables.read import MetricsError, read_metrics
from dens.pipeline.tables.render import write_renderings

CONFIG = "config/published.yaml"
TABLE = "published"
AVERAGE = "average"
"""A row of the mean over the splits (each weighted equally: metrics.json's top level)."""
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


@dataclass(frozen=True)
class Checkpoint:
    """One entry of config/published.yaml."""

    name: str
    experiment: str
    dataset: str
    evaluate: tuple[str, ...]
    relax: bool
    submission: bool
    energy_reference: str | None
    paper: dict[str, dict[str, str]]  # split or AVERAGE -> metric -> the paper's number
    paper_source: str


@dataclass(frozen=True)
class Published:
    tolerance: float
    checkpoints: dict[str, Checkpoint]


def load_published(registry: Registry) -> Published:
    """config/published.yaml, validated against its schema and checked against the archive
    catalog (a published_checkpoint archive per name; an npz energy reference), the registered
    experiments and their datasets' splits; a violation raises ConfigError naming the key."""
    from dens.data.download import load_catalog

    root = registry.root
    document = read_yaml(root / CONFIG)
    validate(document, "published", CONFIG, root)
    catalog = load_catalog(root=root)
    checkpoints = {}
    for name, entry in document["checkpoints"].items():
        where = f"{CONFIG}: checkpoints.{name}"
        archive = catalog.get(name)
        if archive is None or not archive.published_checkpoint:
            raise ConfigError(
                f"{where}: no archive {name!r} with published_checkpoint: true in "
                "config/archives.yaml"
            )
        try:
            dataset = registry.experiment(entry["experiment"])["dataset"]
        except ConfigError as error:
            raise ConfigError(f"{where}.experiment: {error}") from None
        splits = registry.split_names(dataset)
        for split in entry["evaluate"]:
            if split not in splits:
                raise ConfigError(
                    f"{where}.evaluate: {split!r} is no split of {dataset} ({', '.join(splits)})"
                )
        if entry["relax"] and not (
            registry.splits(dataset, "relax_val") and registry.relax_settings(entry["experiment"])
        ):
            raise ConfigError(
                f"{where}.relax: {dataset} has no relax_val splits or {entry['experiment']} no "
                "relax settings"
            )
        if entry["submission"] and not registry.splits(dataset, "test"):
            raise ConfigError(f"{where}.submission: {dataset} has no test splits")
        reference = entry["energy_reference"]
        if reference is not None and (
            reference not in catalog or catalog[reference].format != "npz"
        ):
            raise ConfigError(
                f"{where}.energy_reference: {reference!r} is no npz archive of config/archives.yaml"
            )
        paper = {key: value for key, value in entry["paper"].items() if key != "source"}
        for key in paper:
            if key != AVERAGE and key not in entry["evaluate"]:
                raise ConfigError(
                    f"{where}.paper.{key}: neither {AVERAGE!r} nor a split of evaluate"
                )
        checkpoints[name] = Checkpoint(
            name=name,
            experiment=entry["experiment"],
            dataset=dataset,
            evaluate=tuple(entry["evaluate"]),
            relax=entry["relax"],
            submission=entry["submission"],
            energy_reference=reference,
            paper=paper,
            paper_source=entry["paper"]["source"],
        )
    return Published(float(document["tolerance"]["relative"]), checkpoints)


def in_all(registry: Registry) -> bool:
    """Whether the default target ``all`` (the report) includes ``published``: at a scale whose
    OC data are downloaded (the paper scale) or where a ``mirror`` serves the checkpoints; at
    the generated scales without one there is nothing to download them from."""
    downloads = any(
        registry.scale["data"][family]["source"] == "download" for family in ("oc20", "oc22")
    )
    return downloads or registry.options.get("mirror") is not None


def split_files(registry: Registry, checkpoint: Checkpoint, role: str) -> list[PurePosixPath]:
    """The prepared split files of a checkpoint's ``role``: "evaluate" (its evaluate splits),
    "relax_val" or "test" (its dataset's)."""
    names = checkpoint.evaluate if role == "evaluate" else registry.splits(checkpoint.dataset, role)
    return [paths.split_file(registry.scale_name, checkpoint.dataset, name) for name in names]


def table_inputs(registry: Registry, published: Published) -> list[PurePosixPath]:
    """The files the table reads: per checkpoint best.pt, its metrics files and its dataset's
    provenance.json."""
    scale, files = registry.scale_name, []
    for checkpoint in published.checkpoints.values():
        files.append(paths.published_file(scale, checkpoint.name, "checkpoint"))
        files.append(paths.published_file(scale, checkpoint.name, "evaluate"))
        if checkpoint.relax:
            files.append(paths.published_file(scale, checkpoint.name, "relax"))
        files.append(paths.provenance_file(scale, checkpoint.dataset))
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


def _imported_sha256(path: Path) -> str:
    from dens.checkpoint import load_checkpoint

    imported = load_checkpoint(path).get("imported_from") or {}
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


def build_published_table(registry: Registry, published: Published) -> Table:
    """Records and display of the table ``published`` (module notes)."""
    scale, root = registry.scale_name, registry.root
    tolerance = published.tolerance
    records: list[dict[str, Any]] = []
    s2ef = Part(
        ["checkpoint", "split", "", *(c[1] for c in S2EF_COLUMNS)],
        ["", "", "", *(c[2] for c in S2EF_COLUMNS)],
        "lll" + "r" * len(S2EF_COLUMNS),
        title="S2EF validation",
    )
    is2re = Part(
        ["checkpoint", "split", "", *(c[1] for c in IS2RE_COLUMNS)],
        ["", "", "", *(c[2] for c in IS2RE_COLUMNS)],
        "lll" + "r" * len(IS2RE_COLUMNS),
        title="IS2RE validation relaxations",
    )
    notes: list[str] = []
    flagged_any = False
    for checkpoint in published.checkpoints.values():
        best = root / paths.published_file(scale, checkpoint.name, "checkpoint")
        sha = _imported_sha256(best)
        provenance_path = paths.provenance_file(scale, checkpoint.dataset)
        provenance = read_metrics(root / provenance_path)
        common = {
            "checkpoint": checkpoint.name,
            "experiment": checkpoint.experiment,
            "scale": scale,
            "checkpoint_sha256": sha,
            "provenance_file": str(provenance_path),
            "paper_source": checkpoint.paper_source,
        }
        metrics_path = paths.published_file(scale, checkpoint.name, "evaluate")
        metrics = read_metrics(root / metrics_path)
        methods = []
        for split in [*checkpoint.evaluate, AVERAGE]:
            values = _values(metrics, split, root / metrics_path)
            data_splits = list(checkpoint.evaluate) if split == AVERAGE else [split]
            ours_line, paper_line, diff_line = (
                [split, f"ours ({scale})"],
                ["", "paper"],
                ["", "difference"],
            )
            for metric, column, unit, default in S2EF_COLUMNS:
                ours = _metric(values, metric, root / metrics_path)
                paper_text = checkpoint.paper.get(split, {}).get(metric)
                decimals = _decimals(paper_text, default)
                record = {
                    **common,
                    "task": "S2EF val",
                    "split": split,
                    "column": column,
                    "unit": unit,
                    "ours": ours,
                    "tolerance": tolerance,
                    "data_provenance": provenance_summary(provenance, data_splits),
                    "origin": str(metrics_path),
                }
                ours_line.append(format_number(ours, decimals))
                if paper_text is None:
                    record["status"] = "no paper number (the paper reports " + (
                        "the average over the splits)" if split != AVERAGE else "each split)"
                    )
                    paper_line.append(MISSING)
                    diff_line.append(MISSING)
                else:
                    paper = float(paper_text)
                    difference = ours - paper
                    relative = difference / paper
                    flagged = abs(difference) > tolerance * paper
                    flagged_any |= flagged
                    record |= {
                        "paper": paper,
                        "difference": difference,
                        "relative_difference": relative,
                        "flag": "true" if flagged else "false",
                        "status": "exceeds tolerance" if flagged else "within tolerance",
                    }
                    paper_line.append(paper_text)
                    diff_line.append(_difference_text(difference, relative, flagged, decimals))
                records.append(record)
            lines = [ours_line]
            if any(cell != MISSING for cell in paper_line[2:]):
                lines += [paper_line, diff_line]
            label = "" if methods else checkpoint.name
            methods.append([["" if i else label, *line] for i, line in enumerate(lines)])
        s2ef.blocks.append((None, methods))
        notes.append(
            f"{checkpoint.name}: imported as {checkpoint.experiment}, sha256 {sha}; "
            f"paper: {checkpoint.paper_source}; data: "
            f"{provenance_summary(provenance, list(checkpoint.evaluate))} ({provenance_path})."
        )
        if not checkpoint.relax:
            continue
        relax_path = paths.published_file(scale, checkpoint.name, "relax")
        relax = read_metrics(root / relax_path)
        if relax.get("metrics_source") is None:
            raise MetricsError(f"{relax_path}: no relaxed-energy labels were scored")
        relax_splits = registry.splits(checkpoint.dataset, "relax_val")
        methods = []
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
        is2re.blocks.append((None, methods))
    notes.insert(
        0,
        f"'ours ({scale})' = the published weights evaluated here at scale {scale} "
        f"(results/{scale}/published/<checkpoint>/); 'paper' = the authors' numbers; difference "
        f"= ours - paper (percent of paper), 'exceeds tolerance' where |difference| > "
        f"{100 * tolerance:g}% of the paper's number ({CONFIG}). 'average' = the mean over the "
        "splits, each weighted equally.",
    )
    if flagged_any:
        notes.append(f"Some numbers differ from the paper's by more than {100 * tolerance:g}%.")
    if is2re.blocks:
        notes.append(
            f"IS2RE validation: relaxed-energy MAE and EwT (|error| < 0.02 eV) of the relax_val "
            f"splits with local labels; {NO_IS2RE_PAPER}."
        )
    notes.append(f"{MISSING} = no number.")
    parts = [s2ef] + ([is2re] if is2re.blocks else [])
    caption = (
        "The published EquiformerV2 + DeNS checkpoints evaluated on the validation splits, "
        "beside the paper's numbers"
    )
    return Table(FIELDS, records, caption, parts, notes)


def write_published_table(registry: Registry, out_dir: Path) -> list[Path]:
    """Write published.csv, .md and .tex into ``out_dir``."""
    return write_renderings(
        build_published_table(registry, load_published(registry)), TABLE, out_dir
    )
