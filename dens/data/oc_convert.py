"""Paper-scale OC20/OC22 preparers: the downloaded archives -> one folder of shards per split.

Entry points: :func:`convert_group` (one conversion job: group g of G of one archive's source
files; `dens data convert-group`, Snakemake rule ``convert_group``) and
:func:`prepare_oc_downloaded` (dens.data.prepare registers it for the oc20 and oc22 families at
source "download"; the finishing job, dens.data.oc_finish). Inputs are the extracted archive
directories ``results/downloads/extracted/<archive name>``, each matched to its
config/archives.yaml entry by directory name, and to the splits it provides by the entry's
``dataset[<dataset name>]``.

Sources:

- OC20 S2EF archives (``*.extxyz.xz`` + ``*.txt.xz``): dens.data.s2ef_extxyz. Energies are
  referenced (total - the per-frame reference of the txt file); frames of an archive whose entry
  has ``md_split: true`` carry ``md_split`` True.
- LMDBs of pickled torch_geometric ``Data`` (OC20 S2EF test, OC20 IS2RE, OC22): read by
  dens.data.legacy_lmdb's restricted unpickler, which never runs code from the file; every row
  passes dens.data.validation (a refusal names the file, the row and its sid). Splits that
  gather several release sub-splits (``s2ef_test``, ``is2re_test``) store the sub-split's name in
  the row key ``subsplit``; the IS2RE validation splits (role ``relax_val``: OC20
  ``is2re_val_id`` ... ``is2re_val_ood_both``, OC22 ``is2re_val_id`` / ``is2re_val_ood``) are one
  release sub-split each, named by their file (dens.pipeline.submission.challenge_split).

Design: one shard per source file (one ``*.extxyz.xz`` or one ``*.lmdb``). An archive's source
files (`archive_tasks`: per split of the dataset in the catalog's order, per release sub-split,
sorted by path) are cut into G contiguous groups (`group_tasks`); G comes from the catalog's
published frame count and a number of frames per job (`group_count`, `frames_per_job`), so the
groups are known before the archive is even downloaded. One job per group converts its files
into ``<out_dir>/.work/<archive>/shard-NNNNNN.aselmdb`` (written under a ``.partial`` name and
renamed when complete, then recorded in ``shard-NNNNNN.json``: the source file, its size and
mtime, the row count; a rerun after a kill skips every recorded shard whose source is unchanged)
and writes ``group-<g>.json`` listing them. The finishing job (dens.data.oc_finish) checks the
row counts against the published ones, MOVES the shards (os.replace, no copy) into the split
folders ``<out_dir>/<split>/shard-NNNNNN.aselmdb`` numbered in data order, writes each split's
manifest, provenance.json last, and removes ``.work``. No merge: disk use stays one copy of
the data beside the extracted archives.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dens import atomic_files
from dens.config_files import find_root, read_yaml
from dens.data.disk_space import require_conversion_space
from dens.data.download.catalog import CATALOG, Archive, load_catalog_with
from dens.data.download.extract import is_extracted
from dens.data.oc_shards import ShardTask, _source_id, run_shards, shard_done
from dens.errors import ConfigError, DataError
from dens.layout import DatasetDirectory

CONVERT_FRAMES_PER_S = 164
"""Frames per second one conversion process is assumed to reach, to size the conversion jobs:
benchmarks/README.md, section "OC20 S2EF conversion", measured 435 frames/s on one process of an
otherwise idle 2-core machine and 164 frames/s with the test suite running beside it; the lower
figure stands for a busy cluster node and its shared file system."""


def frames_per_job(max_job_hours: float | None, job_minutes: int) -> int:
    """Frames one conversion job is given: what CONVERT_FRAMES_PER_S converts in half the job's
    time limit (``job_minutes``, capped at ``max_job_hours``), the other half a margin."""
    minutes = job_minutes if max_job_hours is None else min(job_minutes, 60 * max_job_hours)
    return max(1, math.floor(CONVERT_FRAMES_PER_S * 60 * minutes / 2))


def group_count(frames: int | None, per_job: int) -> int:
    """G, the conversion jobs of an archive of ``frames`` published frames (1 when unknown)."""
    if per_job < 1:
        raise ConfigError(f"frames per conversion job: {per_job}, must be at least 1")
    return 1 if not frames else max(1, math.ceil(frames / per_job))


def published_frames(
    root: Path | None = None, stand_in: str | Path | None = None
) -> dict[str, dict[str, int]]:
    """config/archives.yaml ``frames`` of every archive (empty where not published), those of a
    ``stand_in`` catalog (config ``catalog``: the rehearsal's generated archives) in place of the
    published ones of the same names."""
    paths = [(find_root() if root is None else Path(root)) / CATALOG]
    paths += [] if stand_in is None else [Path(stand_in)]
    frames: dict[str, dict[str, int]] = {}
    for path in paths:
        archives = read_yaml(path)["archives"]
        frames |= {name: dict(entry.get("frames") or {}) for name, entry in archives.items()}
    return frames


#: Archives of pickled-Data LMDBs: split -> [(release sub-split, directory path suffix)]; the
#: directory whose path ends in the suffix holds that sub-split's *.lmdb files.
LEGACY_SOURCES: dict[str, dict[str, list[tuple[str, tuple[str, ...]]]]] = {
    "oc20_s2ef_test": {
        "s2ef_test": [
            (sub, ("s2ef", "all", sub))
            for sub in ("test_id", "test_ood_ads", "test_ood_cat", "test_ood_both")
        ]
    },
    "oc20_is2re_lmdbs": {
        "is2re_test": [
            (sub, ("is2re", "all", sub))
            for sub in ("test_id", "test_ood_ads", "test_ood_cat", "test_ood_both")
        ],
        # validation (role relax_val): one split per release sub-split, labels public
        **{
            f"is2re_{sub}": [(sub, ("is2re", "all", sub))]
            for sub in ("val_id", "val_ood_ads", "val_ood_cat", "val_ood_both")
        },
    },
    "oc22_s2ef_total_lmdbs": {
        split: [(sub, ("s2ef-total", sub))]
        for split, sub in (
            ("train", "train"),
            ("val_id", "val_id"),
            ("val_ood", "val_ood"),
            ("s2ef_test_id", "test_id"),
            ("s2ef_test_ood", "test_ood"),
        )
    },
    "oc22_is2re_total_lmdbs": {
        "is2re_test_id": [("test_id", ("is2re-total", "test_id"))],
        "is2re_test_ood": [("test_ood", ("is2re-total", "test_ood"))],
        "is2re_val_id": [("val_id", ("is2re-total", "val_id"))],
        "is2re_val_ood": [("val_ood", ("is2re-total", "val_ood"))],
    },
}


def _find_dir(root: Path, suffix: tuple[str, ...]) -> Path:
    found = sorted(
        path
        for path in root.rglob(suffix[-1])
        if path.is_dir() and path.parts[-len(suffix) :] == suffix and any(path.glob("*.lmdb"))
    )
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(map(str, found))})"
        raise DataError(
            f"{root}: expected one directory .../{'/'.join(suffix)}/ holding *.lmdb files, "
            f"found {what}; is this the extracted archive?"
        )
    return found[0]


def _input_archive(
    dataset: str, directory: Path, catalog: Mapping[str, Archive]
) -> tuple[Archive, tuple[str, ...]]:
    """The catalog archive an input directory was extracted from (the directory's name) and the
    splits of ``dataset`` it provides, after checking the extraction is complete."""
    archive = catalog.get(directory.name)
    if archive is None:
        raise ConfigError(
            f"dataset {dataset}: input {directory} is no archive of {CATALOG} "
            "(the directory name must be the archive name)"
        )
    splits = archive.dataset.get(dataset)
    if splits is None:
        raise ConfigError(f"{CATALOG}: archive {archive.name} provides no split of {dataset}")
    if not is_extracted(directory):
        raise DataError(f"{directory}: not a completely extracted archive (no marker)")
    return archive, splits


def split_names(splits: Mapping[str, Any]) -> list[str]:
    """The split names of config/datasets.yaml ``splits`` (role -> name or names), once each."""
    names: list[str] = []
    for value in splits.values():
        for name in [value] if isinstance(value, str) else value:
            if name not in names:
                names.append(name)
    return names


def archive_tasks(
    settings: Mapping[str, Any], archive: Archive, directory: Path, work_dir: Path
) -> list[ShardTask]:
    """A shard task per source file of ``archive`` for the dataset's splits, in data order: each
    LMDB file of a legacy archive's sub-split directories (per split as the catalog lists them,
    per sub-split, sorted), or each ``*.extxyz.xz`` file of an extxyz one (sorted)."""
    dataset = settings["name"]
    splits = archive.dataset[dataset]
    unknown = [split for split in splits if split not in split_names(settings["splits"])]
    if unknown:
        raise ConfigError(
            f"{CATALOG}: archive {archive.name} provides split(s) {', '.join(unknown)}, which "
            f"config/datasets.yaml does not define for {dataset}"
        )
    tasks: list[ShardTask] = []
    if archive.name in LEGACY_SOURCES:
        for split in splits:
            subs = LEGACY_SOURCES[archive.name][split]
            for sub, suffix in subs:
                extra = (("subsplit", sub),) if len(subs) > 1 else ()
                for lmdb_file in sorted(_find_dir(directory, suffix).glob("*.lmdb")):
                    tasks.append(
                        ShardTask(
                            split, len(tasks), "lmdb", lmdb_file, archive.name, work_dir,
                            extra=extra,
                        )
                    )  # fmt: skip
        return tasks
    if len(splits) != 1:
        raise ConfigError(
            f"{CATALOG}: extxyz archive {archive.name} must provide one split of "
            f"{dataset}, not {list(splits)}"
        )
    files = sorted(directory.rglob("*.extxyz.xz"))
    if not files:
        raise DataError(f"{directory}: no *.extxyz.xz files (archive {archive.name})")
    return [
        ShardTask(splits[0], index, "extxyz", xz, archive.name, work_dir, md_split=archive.md_split)
        for index, xz in enumerate(files)
    ]


def group_tasks(tasks: Sequence[ShardTask], group: int, groups: int) -> list[ShardTask]:
    """Contiguous chunk ``group`` (0 .. groups - 1) of ``groups`` of ``tasks``; the chunks differ
    in length by at most one (empty where there are fewer tasks than groups)."""
    if not 0 <= group < groups:
        raise ConfigError(f"conversion group {group}: must be in 0..{groups - 1} (of {groups})")
    count = len(tasks)
    return list(tasks[group * count // groups : (group + 1) * count // groups])


def _require_group_space(
    archive: str,
    frames: Mapping[str, Mapping[str, int]],
    tasks: Sequence[ShardTask],
    mine: Sequence[ShardTask],
    group: str,
) -> None:
    """Disk first (dens.data.disk_space): the group's share of the archive's published frames
    (its files' share of the archive's files) must fit beside the shards it already wrote."""
    if not mine:
        return
    published = sum(frames.get(archive, {}).values())
    share = math.ceil(published * len(mine) / len(tasks)) if published else None
    written = sum(task.shard.stat().st_size for task in mine if shard_done(task) is not None)
    what = f"converting {group} of {archive}"
    require_conversion_space(mine[0].work_dir, share, what, written=written)


def convert_group(
    settings: Mapping[str, Any],
    directory: Path,
    group: int,
    groups: int,
    out_dir: Path,
    processes: int = 1,
    *,
    catalog_root: Path | None = None,
    progress: bool = True,
) -> Path:
    """Convert group ``group`` of ``groups`` of the source files of the extracted archive
    ``directory`` into shards under ``<out_dir>/.work/<archive>/`` (finished shards of an
    earlier run are kept), then write and return its record ``group-<g>.json``: the archive, the
    group, the number of source files and per shard its split, index, source and rows."""
    root = find_root() if catalog_root is None else Path(catalog_root)
    catalog = load_catalog_with(settings.get("catalog"), root=root)
    archive, _ = _input_archive(settings["name"], Path(directory), catalog)
    work_dir = Path(DatasetDirectory(Path(out_dir)).archive_work(archive.name))
    tasks = archive_tasks(settings, archive, Path(directory), work_dir)
    mine = group_tasks(tasks, group, groups)
    frames = published_frames(root, settings.get("catalog"))
    _require_group_space(archive.name, frames, tasks, mine, f"group {group} of {groups}")
    counts = run_shards(mine, processes, progress)
    record = {
        "archive": archive.name,
        "group": group,
        "groups": groups,
        "sources": len(tasks),
        "shards": [
            {
                "split": task.split,
                "index": task.index,
                "rows": counts[task.split, task.index],
                **_source_id(task.source),
            }
            for task in mine
        ],
    }
    target = Path(DatasetDirectory(Path(out_dir)).group_record(archive.name, group))
    atomic_files.write_text(target, json.dumps(record, indent=1) + "\n", "recording a group")
    return target


def prepare_oc_downloaded(
    settings: Mapping[str, Any],
    out_dir: Path,
    inputs: Sequence[Path],
    processes: int,
    *,
    catalog_root: Path | None = None,
    progress: bool = True,
    catalog: str | Path | None = None,
) -> None:
    """Write every split of an OC20/OC22 dataset, then provenance.json (module notes).
    ``inputs``: the group records of the conversion jobs (``group-<g>.json``, the pipeline's
    finishing job), or extracted archive directories, each then converted here as one group
    with ``processes`` worker processes (a library user's one-step preparation).
    ``catalog_root``: the repository whose config/archives.yaml names the archives (default:
    this one)."""
    from dens.data.oc_finish import finish_dataset

    records = []
    for path in map(Path, inputs):
        if path.is_dir():
            records.append(
                convert_group(
                    settings, path, 0, 1, out_dir, processes,
                    catalog_root=catalog_root, progress=progress,
                )
            )  # fmt: skip
        else:
            records.append(path)
    finish_dataset(settings, Path(out_dir), records, catalog_root=catalog_root)


def dens_version() -> str:
    try:
        from importlib.metadata import version

        return version("dens")
    except Exception:  # noqa: BLE001 (not installed: running from a checkout)
        return "unknown"
