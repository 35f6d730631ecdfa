"""Paper-scale OC20/OC22 preparers: the downloaded archives -> one aselmdb file per split.

Entry point (dens.data.prepare registers it for the oc20 and oc22 families at source
"download"): :func:`prepare_oc_downloaded`. ``inputs`` are the extracted archive directories
``results/downloads/extracted/<archive name>`` (workflow/rules/common.smk ``dataset_inputs``);
each is matched to its config/archives.yaml entry by directory name, and to the splits it
provides by the entry's ``dataset[<dataset name>]``.

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

Design: one shard per source file (one ``*.extxyz.xz`` or one ``*.lmdb``), converted by one of
``processes`` worker processes into ``<out_dir>/.work/<split>/shard-NNNN.aselmdb``: written
under a ``.partial`` name and renamed when complete, then recorded in ``shard-NNNN.json`` (the
source file, its size and mtime, the row count). A rerun after a kill skips every recorded shard
whose source is unchanged. When all shards of a split are done they are merged, in order, into
``.work/<split>.aselmdb`` by one streaming pass that copies the compressed row records as they
are (no decoding; ids renumbered 1..N), and the merged row count is checked against the
published count (config/archives.yaml ``frames``). The split files move to
``<out_dir>/<split>.aselmdb`` only when every split of the dataset is merged and checked, then
provenance.json is written last and ``.work`` removed. Cost: the merge reads and writes each
split once more, and until it finishes a split needs twice its size on disk (shards + merged).
The shards and their merge are dens.data.oc_shards; this module plans them and writes the splits.
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
from dens.config_files import find_root, read_yaml
from dens.data.download.catalog import CATALOG, Archive, load_catalog_with
from dens.data.download.extract import is_extracted
from dens.data.oc_shards import ShardTask, _source_id, merge_shards, run_shards
from dens.errors import ConfigError, DataError
from dens.layout import DatasetDirectory

WORK = ".work"

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


@dataclass
class SplitPlan:
    name: str
    tasks: list[ShardTask] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)
    expected: int | None = 0  # None: no published count for some contributing archive


# ------------------------------------------------------------------------------- planning ----


def _split_names(splits: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for value in splits.values():
        for name in [value] if isinstance(value, str) else value:
            if name not in names:
                names.append(name)
    return names


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


def plan_dataset(
    settings: Mapping[str, Any],
    out_dir: Path,
    inputs: Sequence[Path],
    catalog: Mapping[str, Archive],
    frames: Mapping[str, Mapping[str, int]],
) -> dict[str, SplitPlan]:
    """Shard tasks and expected row counts of every split the dataset needs."""
    dataset = settings["name"]
    plans = {name: SplitPlan(name) for name in _split_names(settings["splits"])}
    order = {name: index for index, name in enumerate(catalog)}  # rows in catalog order
    for directory in sorted(map(Path, inputs), key=lambda p: (order.get(p.name, -1), p.name)):
        archive, splits = _input_archive(dataset, directory, catalog)
        published = frames.get(archive.name, {})
        for split in splits:
            if split not in plans:
                raise ConfigError(
                    f"{CATALOG}: archive {archive.name} provides split {split!r}, which "
                    f"config/datasets.yaml does not define for {dataset}"
                )
            plan = plans[split]
            plan.archives.append(archive.name)
            _count_expected(plan, split, splits, published)
            work_dir = Path(out_dir) / WORK / split
            _add_tasks(plan, dataset, archive, splits, directory, work_dir)
    missing = [name for name, plan in plans.items() if not plan.tasks]
    if missing:
        raise ConfigError(
            f"dataset {dataset}: no input archive provides split(s) {', '.join(missing)} "
            f"(inputs: {', '.join(str(p) for p in inputs) or 'none'}; see {CATALOG})"
        )
    return plans


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


def _add_tasks(
    plan: SplitPlan,
    dataset: str,
    archive: Archive,
    splits: Sequence[str],
    directory: Path,
    work_dir: Path,
) -> None:
    """A shard task per source file of ``archive`` for the plan's split: each LMDB file of a
    legacy archive's sub-split directories, or each ``*.extxyz.xz`` file of an extxyz one."""
    split = plan.name
    if archive.name in LEGACY_SOURCES:
        subs = LEGACY_SOURCES[archive.name][split]
        for sub, suffix in subs:
            for lmdb_file in sorted(_find_dir(directory, suffix).glob("*.lmdb")):
                extra = (("subsplit", sub),) if len(subs) > 1 else ()
                plan.tasks.append(
                    ShardTask(
                        split, len(plan.tasks), "lmdb", lmdb_file, archive.name,
                        work_dir, extra=extra,
                    )
                )  # fmt: skip
        return
    if len(splits) != 1:
        raise ConfigError(
            f"{CATALOG}: extxyz archive {archive.name} must provide one split of "
            f"{dataset}, not {list(splits)}"
        )
    files = sorted(directory.rglob("*.extxyz.xz"))
    if not files:
        raise DataError(f"{directory}: no *.extxyz.xz files (archive {archive.name})")
    for xz in files:
        plan.tasks.append(
            ShardTask(
                split, len(plan.tasks), "extxyz", xz, archive.name, work_dir,
                md_split=archive.md_split,
            )
        )  # fmt: skip


def _published_frames(path: Path) -> dict[str, dict[str, int]]:
    document = read_yaml(path)
    return {name: dict(entry.get("frames") or {}) for name, entry in document["archives"].items()}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dens")
    except Exception:  # noqa: BLE001 (not installed: running from a checkout)
        return "unknown"


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
    """Write every split of an OC20/OC22 dataset from its extracted archives, then
    provenance.json (module notes). ``catalog_root``: the repository whose config/archives.yaml
    names the archives (default: this one); ``catalog``: a stand-in catalog over it
    (dens.data.download.catalog.load_catalog_with; the rehearsal's generated archives)."""
    start = time.perf_counter()
    root = find_root() if catalog_root is None else Path(catalog_root)
    frames = _published_frames(root / CATALOG)
    if catalog is not None:
        frames |= _published_frames(Path(catalog))
    archives = load_catalog_with(catalog, root=root)
    out_dir = Path(out_dir)
    DatasetDirectory(out_dir).provenance.unlink(missing_ok=True)
    plans = plan_dataset(settings, out_dir, inputs, archives, frames)
    work = out_dir / WORK
    merged, counts = _merged_earlier(plans, out_dir)
    todo = [task for plan in plans.values() if plan.name not in merged for task in plan.tasks]
    run_shards(todo, processes, progress)
    for plan in plans.values():
        if plan.name not in merged:
            merged[plan.name], counts[plan.name] = _merge_split(settings["name"], plan, work)
    for name, path in merged.items():
        if path != out_dir / f"{name}.aselmdb":
            os.replace(path, out_dir / f"{name}.aselmdb")
    provenance = _provenance(settings, archives, plans, counts, processes)
    provenance["wall_time_s"] = time.perf_counter() - start
    atomic_files.write_text(
        DatasetDirectory(out_dir).provenance,
        json.dumps(provenance, indent=2) + "\n",
        "writing provenance",
    )
    shutil.rmtree(work, ignore_errors=True)


def _merged_earlier(
    plans: Mapping[str, SplitPlan], out_dir: Path
) -> tuple[dict[str, Path], dict[str, int]]:
    """The splits merged in an earlier run from the same sources -> ({split: merged file},
    {split: rows}): still in .work, or already moved (killed before provenance)."""
    work = out_dir / WORK
    merged: dict[str, Path] = {}
    counts: dict[str, int] = {}
    for plan in plans.values():
        done = work / f"{plan.name}.json"
        for target in (work / f"{plan.name}.aselmdb", out_dir / f"{plan.name}.aselmdb"):
            if done.is_file() and target.is_file():
                record = json.loads(done.read_text())
                if record.get("sources") == [_source_id(t.source) for t in plan.tasks]:
                    merged[plan.name], counts[plan.name] = target, record["rows"]
                    break
    return merged, counts


def _merge_split(dataset: str, plan: SplitPlan, work: Path) -> tuple[Path, int]:
    """Merge a split's shards into ``.work/<split>.aselmdb``, check its row count against the
    published one and record it; return (the merged file, its rows)."""
    target = work / f"{plan.name}.aselmdb"
    partial = work / f"{plan.name}.partial.aselmdb"
    metadata = {
        "dataset": dataset,
        "split": plan.name,
        "archives": plan.archives,
    }
    rows = merge_shards([t.shard for t in plan.tasks], partial, metadata)
    if plan.expected is not None and rows != plan.expected:
        raise DataError(
            f"{dataset} split {plan.name}: converted {rows} frames but "
            f"{CATALOG} publishes {plan.expected} for archive(s) {', '.join(plan.archives)}; "
            "the extracted archives are incomplete or not the published ones"
        )
    os.replace(partial, target)
    record = {"rows": rows, "sources": [_source_id(t.source) for t in plan.tasks]}
    atomic_files.write_text(
        work / f"{plan.name}.json", json.dumps(record) + "\n", "recording a converted split"
    )
    shutil.rmtree(work / plan.name, ignore_errors=True)
    return target, rows


def _provenance(
    settings: Mapping[str, Any],
    catalog: Mapping[str, Archive],
    plans: Mapping[str, SplitPlan],
    counts: Mapping[str, int],
    processes: int,
) -> dict[str, Any]:
    """provenance.json of a converted dataset but its wall time (module notes)."""
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
            }
            for name in dict.fromkeys(a for plan in plans.values() for a in plan.archives)
        },
        "frames": counts,
        "published_frames": {name: plan.expected for name, plan in plans.items()},
        "energy": (
            "S2EF extxyz: referenced (total - per-frame reference of the txt file), key-value "
            "total_energy and reference_energy; LMDB: as stored (y_init / y)"
        ),
        "converter": "dens.data.oc_convert",
        "dens_version": _version(),
        "processes": processes,
    }
