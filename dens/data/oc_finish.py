"""The finishing step of a paper-scale OC20/OC22 conversion (dens.data.oc_convert, "Design"):
the conversion jobs' group records -> the dataset's split folders, manifests and provenance.

`finish_dataset` reads every group record (``.work/<archive>/group-<g>.json``), checks that the
groups of each archive are all there and cover its source files, that every split of the
dataset comes from some archive and that each split's rows add up to the catalog's published
count (config/archives.yaml ``frames``), all before touching a file; then it moves each shard
(os.replace: a rename within the dataset directory, no copy) to
``<split>/shard-NNNNNN.aselmdb``, numbered in data order (archives in catalog order, source
files in archive order), writes each split's manifest (dens.data.split_folder, the row total
checked against the published count once more), provenance.json last, and removes ``.work``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dens import atomic_files
from dens.config_files import find_root
from dens.data.download.catalog import CATALOG, Archive, load_catalog_with
from dens.data.oc_convert import dens_version, published_frames, split_names
from dens.data.split_folder import write_split_manifest
from dens.errors import ConfigError, DataError
from dens.layout import DatasetDirectory, shard_name


@dataclass
class SplitPlan:
    """The shards of one split in data order (their .work paths and rows), the archives they
    come from and the published row count (None: not published for some archive)."""

    name: str
    shards: list[tuple[Path, int]] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)
    expected: int | None = 0


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text())
        fields = ("archive", "group", "groups", "sources", "shards")
        if not isinstance(record, dict) or any(key not in record for key in fields):
            raise ValueError(f"not a group record of {', '.join(fields)}")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(
            f"{path}: unreadable conversion record ({error}); rerun its group job"
        ) from error
    return record


def _archive_records(
    dataset: str, records: Sequence[Path], catalog: Mapping[str, Archive]
) -> dict[str, list[dict[str, Any]]]:
    """Group records by archive (catalog order), each archive's groups checked complete."""
    by_archive: dict[str, list[dict[str, Any]]] = {}
    for path in records:
        record = _read_record(path)
        if record["archive"] not in catalog:
            raise ConfigError(f"{path}: archive {record['archive']} is not in {CATALOG}")
        by_archive.setdefault(record["archive"], []).append(record | {"path": str(path)})
    order = list(catalog)
    ordered = {name: by_archive[name] for name in sorted(by_archive, key=order.index)}
    for name, items in ordered.items():
        groups = {item["groups"] for item in items}
        sources = {item["sources"] for item in items}
        numbers = sorted(item["group"] for item in items)
        indices = sorted(shard["index"] for item in items for shard in item["shards"])
        if len(groups) != 1 or numbers != list(range(next(iter(groups)))):
            raise DataError(
                f"dataset {dataset}: archive {name}: conversion groups {numbers} of "
                f"{sorted(groups)}; every group of one conversion must be given"
            )
        if len(sources) != 1 or indices != list(range(next(iter(sources)))):
            raise DataError(
                f"dataset {dataset}: archive {name}: the group records cover source files "
                f"{len(indices)} of {sorted(sources)}; rerun its conversion jobs"
            )
        items.sort(key=lambda item: item["group"])
    return ordered


def plan_splits(
    settings: Mapping[str, Any],
    out_dir: Path,
    by_archive: Mapping[str, list[dict[str, Any]]],
    catalog: Mapping[str, Archive],
    frames: Mapping[str, Mapping[str, int]],
) -> dict[str, SplitPlan]:
    """Each split's shards in data order, archives and published row count (module notes)."""
    dataset = settings["name"]
    plans = {name: SplitPlan(name) for name in split_names(settings["splits"])}
    directory = DatasetDirectory(Path(out_dir))
    for name, items in by_archive.items():
        splits = catalog[name].dataset.get(dataset, ())
        for split in splits:
            plan = plans[split]
            plan.archives.append(name)
            _count_expected(plan, split, splits, frames.get(name, {}))
        work = Path(directory.archive_work(name))
        for item in items:
            for shard in item["shards"]:
                path = work / shard_name(shard["index"])
                if not path.is_file():
                    raise DataError(
                        f"{path}: converted shard missing (recorded in {item['path']}); delete "
                        "that record and rerun its group job"
                    )
                plans[shard["split"]].shards.append((path, shard["rows"]))
    missing = [name for name, plan in plans.items() if not plan.archives]
    if missing:
        raise ConfigError(
            f"dataset {dataset}: no converted archive provides split(s) {', '.join(missing)} "
            f"(archives: {', '.join(by_archive) or 'none'}; see {CATALOG})"
        )
    return plans


def _count_expected(
    plan: SplitPlan, split: str, splits: Sequence[str], published: Mapping[str, int]
) -> None:
    """Add an archive's published frame count of ``split`` to the plan's expected rows (its
    whole count where it provides one split made of the release's sub-splits); None when not
    published."""
    if split in published and plan.expected is not None:
        plan.expected += published[split]
    elif len(splits) == 1 and published and plan.expected is not None:
        plan.expected += sum(published.values())  # sub-splits of the release
    else:
        plan.expected = None


def _check_counts(dataset: str, plans: Mapping[str, SplitPlan]) -> None:
    for plan in plans.values():
        rows = sum(count for _, count in plan.shards)
        if plan.expected is not None and rows != plan.expected:
            raise DataError(
                f"{dataset} split {plan.name}: converted {rows} frames but "
                f"{CATALOG} publishes {plan.expected} for archive(s) {', '.join(plan.archives)}; "
                "the extracted archives are incomplete or not the published ones"
            )


def finish_dataset(
    settings: Mapping[str, Any],
    out_dir: Path,
    records: Sequence[Path],
    *,
    catalog_root: Path | None = None,
) -> None:
    """Split folders, manifests and provenance.json of a dataset from its conversion jobs'
    group records (module notes); ``.work`` is removed at the end."""
    start = time.perf_counter()
    root = find_root() if catalog_root is None else Path(catalog_root)
    catalog = load_catalog_with(settings.get("catalog"), root=root)
    out_dir = Path(out_dir)
    directory = DatasetDirectory(out_dir)
    directory.provenance.unlink(missing_ok=True)
    by_archive = _archive_records(settings["name"], records, catalog)
    frames = published_frames(root, settings.get("catalog"))
    plans = plan_splits(settings, out_dir, by_archive, catalog, frames)
    _check_counts(settings["name"], plans)
    counts = {}
    for plan in plans.values():
        folder = Path(directory.split(plan.name))
        folder.mkdir(parents=True, exist_ok=True)
        for number, (path, _) in enumerate(plan.shards):
            os.replace(path, directory.shard(plan.name, number))
        where = f"{CATALOG} frames of {', '.join(plan.archives)}"
        counts[plan.name] = write_split_manifest(folder, plan.expected, where)["rows"]
    provenance = _provenance(settings, catalog, plans, counts, by_archive)
    provenance["wall_time_s"] = time.perf_counter() - start
    atomic_files.write_text(
        directory.provenance, json.dumps(provenance, indent=2) + "\n", "writing provenance"
    )
    shutil.rmtree(directory.work, ignore_errors=True)


def _provenance(
    settings: Mapping[str, Any],
    catalog: Mapping[str, Archive],
    plans: Mapping[str, SplitPlan],
    counts: Mapping[str, int],
    by_archive: Mapping[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """provenance.json of a converted dataset but the finishing job's wall time."""
    return {
        "dataset": settings["name"],
        "family": settings["family"],
        "source": "download",
        "archives": {
            name: {
                "url": catalog[name].url,
                "checksum": (
                    {"algorithm": catalog[name].algorithm, "digest": catalog[name].digest}
                    if catalog[name].digest
                    else None
                ),
                "splits": list(catalog[name].dataset[settings["name"]]),
                "md_split": catalog[name].md_split,
                "conversion_groups": items[0]["groups"],
                "source_files": items[0]["sources"],
            }
            for name, items in by_archive.items()
        },
        "frames": dict(counts),
        "published_frames": {name: plan.expected for name, plan in plans.items()},
        "shards": {name: len(plan.shards) for name, plan in plans.items()},
        "energy": (
            "S2EF extxyz: referenced (total - per-frame reference of the txt file), key-value "
            "total_energy and reference_energy; LMDB: as stored (y_init / y)"
        ),
        "converter": "dens.data.oc_convert",
        "dens_version": dens_version(),
    }
