"""The rehearsal's archives: every archive the paper scale downloads for its tables
(config/archives.yaml), generated small in the exact layout of the official release, and a
stand-in catalog of them (same names, URLs, formats, datasets and splits; the md5 of each
generated file; ``frames`` = what was generated), which config ``catalog`` names (README:
"Rehearse the paper scale").

Layouts (config/archives.yaml ``payload``):

- OC20 S2EF tars: ``<stem>/<stem>/<i>.extxyz.xz`` + ``<i>.txt.xz`` (``<stem>`` the file name of the
  URL without ``.tar``), :data:`S2EF_FILES` files per archive.
- LMDBs of pickled Data (OC20 S2EF test, OC20 IS2RE, OC22 S2EF-Total and IS2RE-Total), tar.gz:
  :data:`LMDB_LAYOUTS`, one ``data.lmdb`` per release sub-split.
- MD17: ``md17_<molecule>.npz`` of 950 + 50 + ``md17_test_frames`` frames (the paper's split takes
  the first 950 / 50 and tests on the rest), the molecule embedded from its SMILES.
- OC22's linear energy reference (``oc22_linfit_coeffs``): an npz ``coeff`` [100].

Sizes (:class:`Volume`): a training split holds the largest global batch of the experiments
trained on it at the rehearsal scale (a run needs one full batch), every other split a few
frames, each IS2RE sub-split a few systems.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml

from dens.config_files import find_root, read_yaml
from dens.data.download.catalog import CATALOG
from dens.data.md17_generate import _embed as embed_molecule
from dens.errors import ConfigError
from dens.pipeline.registry import Registry
from dens.pipeline.rehearsal.builders import (
    legacy_records,
    md5,
    slab_frames,
    tar_dir,
    write_legacy_lmdb,
    write_md17_npz,
    write_s2ef_files,
)
from dens.setting_fields import check_fields, setting

S2EF_FILES = 2  # *.extxyz.xz files per S2EF archive (the converter makes a shard of each)
MD17_PAPER_SPLIT = 950 + 50  # train + val of dens.data.md17.convert_md17_npz
LINREF_ELEMENTS = 100  # fairchem's oc22_linfit_coeffs.npz: coeff [100], indexed by Z

#: LMDB archives: the folder holding the release's sub-split folders, and per dataset split
#: its sub-splits (each a folder with one data.lmdb) and the kind of record it stores.
LMDB_LAYOUTS: dict[str, tuple[str, dict[str, tuple[tuple[str, ...], str]]]] = {
    "oc20_s2ef_test": (
        "s2ef_test_lmdbs/test_data/s2ef/all",
        {"s2ef_test": (("test_id", "test_ood_ads", "test_ood_cat", "test_ood_both"), "s2ef_test")},
    ),
    "oc20_is2re_lmdbs": (
        "is2res_train_val_test_lmdbs/data/is2re/all",
        {
            "is2re_test": (
                ("test_id", "test_ood_ads", "test_ood_cat", "test_ood_both"),
                "is2re_test",
            ),
            **{
                f"is2re_{sub}": ((sub,), "is2re")
                for sub in ("val_id", "val_ood_ads", "val_ood_cat", "val_ood_both")
            },
        },
    ),
    "oc22_s2ef_total_lmdbs": (
        "s2ef_total_train_val_test_lmdbs/data/oc22/s2ef-total",
        {
            "train": (("train",), "s2ef"),
            "val_id": (("val_id",), "s2ef"),
            "val_ood": (("val_ood",), "s2ef"),
            "s2ef_test_id": (("test_id",), "s2ef_test"),
            "s2ef_test_ood": (("test_ood",), "s2ef_test"),
        },
    ),
    "oc22_is2re_total_lmdbs": (
        "is2res_total_train_val_test_lmdbs/data/oc22/is2re-total",
        {
            f"is2re_{sub}": ((sub,), "is2re_test" if sub.startswith("test") else "is2re")
            for sub in ("test_id", "test_ood", "val_id", "val_ood")
        },
    ),
}


@dataclass(frozen=True)
class Volume:
    """How much the generated archives hold: ``eval_frames`` per evaluation split (validation,
    S2EF test), ``relax_systems`` per IS2RE sub-split, ``md17_test_frames`` MD17 test frames;
    training splits hold ``train_frames[dataset]`` frames (at least one global batch). OC
    structures are fcc(111) slabs of ``slab_cells`` x ``slab_cells`` surface cells, 3 layers, and
    a CO adsorbate (1: 5 atoms, 2: 14 atoms)."""

    train_frames: Mapping[str, int] = setting(minimum=1)
    eval_frames: int = setting(4, minimum=1)
    relax_systems: int = setting(2, minimum=1)
    md17_test_frames: int = setting(10, minimum=1)
    slab_cells: int = setting(2, minimum=1)
    seed: int = setting(0, minimum=0)

    def __post_init__(self) -> None:
        check_fields(self, "rehearsal volume")


def train_frames(registry: Registry) -> dict[str, int]:
    """Frames of each dataset's training split: the largest ``optim.batch_size`` (the global
    batch) of the experiments trained on it at the registry's scale."""
    frames: dict[str, int] = {}
    for name in registry.experiments:
        experiment = registry.resolve(name)
        dataset, batch = experiment["dataset"], int(experiment["optim"]["batch_size"])
        frames[dataset] = max(frames.get(dataset, 0), batch)
    return frames


def needed_archives(catalog_document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The entries of the published catalog that the tables need: every archive of a dataset
    (not optional) and the files experiments reference (``reference_for``); no checkpoints."""
    return {
        name: entry
        for name, entry in catalog_document["archives"].items()
        if not entry.get("optional", False)
        and not entry.get("published_checkpoint", False)
        and (entry.get("dataset") or entry.get("reference_for"))
    }


def url_path(url: str) -> PurePosixPath:
    """The path of ``url`` (where a mirror serves it: dens.data.download.catalog.mirrored_url)."""
    return PurePosixPath(urllib.parse.urlsplit(url).path.lstrip("/"))


def generate(
    out: Path, registry: Registry, volume: Volume | None = None, root: Path | None = None
) -> Path:
    """Write every needed archive under ``out`` at its URL's path and the stand-in catalog
    ``out/archives.yaml``; return the catalog's path."""
    root = find_root() if root is None else Path(root)
    volume = Volume(train_frames(registry)) if volume is None else volume
    published = read_yaml(root / CATALOG)
    entries: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dens-rehearsal-") as scratch:
        for index, (name, entry) in enumerate(needed_archives(published).items()):
            work = Path(scratch) / name
            work.mkdir()
            data, frames = _archive_bytes(name, entry, volume, work, volume.seed * 1000 + index)
            target = out / url_path(entry["url"])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            entries[name] = stand_in_entry(entry, data, frames)
            shutil.rmtree(work)
    catalog = out / "archives.yaml"
    header = (
        "# Stand-in catalog written by dens.pipeline.rehearsal.generate: the archives of\n"
        f"# {CATALOG} generated small in their official layouts (config `catalog`).\n"
    )
    catalog.write_text(header + yaml.safe_dump({"archives": entries}, sort_keys=False))
    return catalog


def stand_in_entry(entry: Mapping[str, Any], data: bytes, frames: Mapping[str, int]) -> dict:
    """The published ``entry`` with the generated file's md5, its frames and no sizes."""
    kept = {key: value for key, value in entry.items() if key not in ("frames", "frames_source")}
    stand_in = kept | {
        "checksum": {"algorithm": "md5", "digest": md5(data)},
        "checksum_source": "generated by dens.pipeline.rehearsal.generate (not the owners' file)",
        "size": None,
        "notes": "rehearsal stand-in: the official layout, generated frames",
    }
    if frames:
        stand_in |= {"frames": dict(frames), "frames_source": "generated (rehearsal)"}
    return stand_in


def _archive_bytes(
    name: str, entry: Mapping[str, Any], volume: Volume, work: Path, seed: int
) -> tuple[bytes, dict[str, int]]:
    """The generated file of one archive and its frames per dataset split."""
    if name in LMDB_LAYOUTS:
        return _lmdb_archive(name, entry, volume, work, seed)
    if entry["format"] == "tar":
        return _s2ef_archive(entry, volume, work, seed)
    if entry.get("reference_for"):
        return _linear_reference(work, seed), {}
    if entry["format"] == "npz" and "arrays" in entry:
        return _md17_archive(entry, volume, work, seed)
    raise ConfigError(
        f"{CATALOG}: archive {name} ({entry['format']}): the rehearsal has no generator for it"
    )


def _slab(volume: Volume) -> tuple[int, int, int]:
    return (volume.slab_cells, volume.slab_cells, 3)


def _split_frames(split: str, datasets: Mapping[str, Any], volume: Volume) -> int:
    """Frames of ``split`` in an archive providing it to ``datasets`` (train: one batch of the
    largest dataset's experiments, shared by the archives providing it; else eval_frames)."""
    if split != "train":
        return volume.eval_frames
    sharing = 2 if any(name == "oc20-all-md" for name in datasets) else 1  # train_all + md
    batch = max(volume.train_frames.get(name, 1) for name in datasets)
    return math.ceil(batch / sharing)


def _s2ef_archive(
    entry: Mapping[str, Any], volume: Volume, work: Path, seed: int
) -> tuple[bytes, dict[str, int]]:
    """A tar of ``<stem>/<stem>/<i>.extxyz.xz`` + ``<i>.txt.xz``."""
    (split,) = {split for splits in entry["dataset"].values() for split in splits}
    total = _split_frames(split, entry["dataset"], volume)
    stem = url_path(entry["url"]).name.removesuffix(".tar")
    rng = np.random.default_rng(seed)
    per_file = [total // S2EF_FILES + (i < total % S2EF_FILES) for i in range(S2EF_FILES)]
    for index, count in enumerate(n for n in per_file if n):
        frames = slab_frames(count, seed=seed * 100 + index, size=_slab(volume))
        ids = [
            (int(rng.integers(0, 2_000_000)), int(rng.integers(0, 300)), float(rng.normal(-50, 5)))
            for _ in frames
        ]
        write_s2ef_files(work / stem / stem, str(index), frames, ids)
    return tar_dir(work / stem), {split: total}


def _lmdb_archive(
    name: str, entry: Mapping[str, Any], volume: Volume, work: Path, seed: int
) -> tuple[bytes, dict[str, int]]:
    """A tar.gz of the release's sub-split folders, one data.lmdb of pickled Data each."""
    prefix, splits = LMDB_LAYOUTS[name]
    frames: dict[str, int] = {}
    next_sid = 1000  # unique across the archive's sub-splits, as in the owners' releases
    for index, (split, (subs, kind)) in enumerate(splits.items()):
        per_sub = (
            volume.relax_systems
            if kind.startswith("is2re")
            else _split_frames(split, entry["dataset"], volume)
        )
        for sub_index, sub in enumerate(subs):
            structures = slab_frames(
                per_sub, seed=seed * 100 + index * 10 + sub_index, size=_slab(volume)
            )
            records = legacy_records(structures, kind, seed=seed + index, first_sid=next_sid)
            next_sid += len(records)
            write_legacy_lmdb(work / prefix / sub / "data.lmdb", records)
        frames[split] = per_sub * len(subs)
    top = PurePosixPath(prefix).parts[0]
    return tar_dir(work / top, "w:gz"), frames


def _md17_archive(
    entry: Mapping[str, Any], volume: Volume, work: Path, seed: int
) -> tuple[bytes, dict[str, int]]:
    """An MD17 npz of the molecule of the archive's dataset (``md17-<molecule>``)."""
    (dataset,) = entry["dataset"]
    molecule = dataset.removeprefix("md17-")
    frames = MD17_PAPER_SPLIT + volume.md17_test_frames
    path = write_md17_npz(work / "md17.npz", embed_molecule(molecule), frames, seed=seed)
    return path.read_bytes(), {"all": frames}


def _linear_reference(work: Path, seed: int) -> bytes:
    """An npz ``coeff`` [100] of per-element reference energies (eV), as fairchem's."""
    rng = np.random.default_rng(seed)
    path = work / "linref.npz"
    with open(path, "wb") as handle:
        np.savez(handle, coeff=rng.normal(-3.0, 1.0, size=LINREF_ELEMENTS))
    return path.read_bytes()
