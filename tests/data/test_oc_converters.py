"""Paper-scale OC20/OC22 converters on archives laid out like the released ones, served over HTTP
on 127.0.0.1: download -> verify -> extract -> convert -> read back (dens.data.oc_convert,
dens.data.oc_shards, dens.data.s2ef_extxyz, dens.data.legacy_lmdb)."""

from __future__ import annotations

import io
import lzma
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from oc_fixtures import (
    Exploit,
    catalog_entry,
    legacy_records,
    s2ef_archive_dir,
    serve,
    slab_frames,
    tar_dir,
    write_catalog,
    write_legacy_lmdb,
    write_s2ef_files,
)

from dens.data import oc_shards
from dens.data.aselmdb import AseLmdbDataset
from dens.data.download.catalog import load_catalog
from dens.data.download.transfer import fetch
from dens.data.legacy_lmdb import read_legacy_rows, safe_loads
from dens.data.oc_convert import convert_group, prepare_oc_downloaded
from dens.data.s2ef_extxyz import read_s2ef_frames
from dens.data.split_folder import read_split_manifest, split_rows
from dens.errors import DataError, DiskError

DATASET = "oc20-all-md"
SETTINGS = {
    "name": DATASET,
    "family": "oc20",
    "splits": {"train": "train", "val": ["val_id"], "test": ["s2ef_test"], "relax": ["is2re_test"]},
    "source": "download",
}
SUBSPLITS = ("test_id", "test_ood_ads", "test_ood_cat", "test_ood_both")


def _rows(path: Path) -> list:
    """The ase.db rows of a split folder (its shards in order, checked) or of one aselmdb file."""
    return [row for _, row in split_rows(path)]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Source frames and the archives (bytes) of a miniature OC20 All+MD release."""
    src = tmp_path_factory.mktemp("release")
    archives: dict[str, tuple[bytes, str]] = {}
    frames: dict[str, list] = {}
    for name, _split, files, seed in (
        ("s2ef_train_all", "train", 2, 1),
        ("s2ef_md", "train", 1, 2),
        ("s2ef_val_id", "val_id", 1, 3),
    ):
        top, written = s2ef_archive_dir(src, name, files=files, frames_per_file=4, seed=seed)
        archives[name] = (tar_dir(top), "tar")
        frames[name] = written
    legacy = src / "s2ef_test_lmdbs"
    s2ef_test = {}
    for index, sub in enumerate(SUBSPLITS):
        records = legacy_records(slab_frames(2 + index % 2, seed=10 + index), "s2ef_test")
        for part in range(2):  # two LMDB files per sub-split, as the release has several
            chunk = records[part::2]
            write_legacy_lmdb(legacy / f"test_data/s2ef/all/{sub}/data.{part:04d}.lmdb", chunk)
            s2ef_test[sub, part] = chunk
    archives["s2ef_test_lmdbs"] = (tar_dir(legacy, "w:gz"), "tar.gz")
    is2re = src / "is2res_train_val_test_lmdbs"
    is2re_records = {}
    for index, sub in enumerate(SUBSPLITS):
        records = legacy_records(slab_frames(2, seed=20 + index), "is2re", seed=index)
        write_legacy_lmdb(is2re / f"data/is2re/all/{sub}/data.lmdb", records)
        is2re_records[sub] = records
    # the train LMDB of the same archive is not part of the dataset: it must be left alone
    write_legacy_lmdb(is2re / "data/is2re/all/train/data.lmdb", [Exploit("exit 1")])
    archives["is2res_train_val_test_lmdbs"] = (tar_dir(is2re, "w:gz"), "tar.gz")
    return {
        "archives": archives,
        "frames": frames,
        "s2ef_test": s2ef_test,
        "is2re": is2re_records,
    }


CATALOG_NAMES = {
    "oc20_s2ef_train_all": ("s2ef_train_all", {DATASET: ["train"]}, {"train": 8}, False),
    "oc20_s2ef_md": ("s2ef_md", {DATASET: ["train"]}, {"train": 4}, True),
    "oc20_s2ef_val_id": ("s2ef_val_id", {DATASET: ["val_id"]}, {"val_id": 4}, False),
    "oc20_s2ef_test": (
        "s2ef_test_lmdbs",
        {DATASET: ["s2ef_test"]},
        {"test_id": 2, "test_ood_ads": 3, "test_ood_cat": 2, "test_ood_both": 3},
        False,
    ),
    "oc20_is2re_lmdbs": (
        "is2res_train_val_test_lmdbs",
        {DATASET: ["is2re_test"]},
        dict.fromkeys(SUBSPLITS, 2),
        False,
    ),
}


def _download(release: dict, tmp_path: Path, frames_override: dict | None = None) -> tuple:
    """Serve the release, write a catalog for it, download + verify + extract every archive."""
    root = tmp_path / "repo"
    inputs = []
    with serve() as served:
        entries = {}
        for name, (file, dataset, frames, md) in CATALOG_NAMES.items():
            data, fmt = release["archives"][file]
            served.files[f"{file}.{fmt}"] = data
            extra = {"frames": (frames_override or {}).get(name, frames), "frames_source": "t"}
            if md:
                extra["md_split"] = True
            entries[name] = catalog_entry(served.url(f"{file}.{fmt}"), fmt, data, dataset, **extra)
        write_catalog(root, entries)
        catalog = load_catalog(root=root)
        for archive in catalog.values():
            inputs.append(
                fetch(archive, tmp_path / "downloads", tmp_path / "extracted", progress=False)
            )
    return root, inputs


def _check_s2ef(path: Path, written: list, md: list[bool]) -> None:
    rows = _rows(path)
    assert len(rows) == len(written)
    for row, (source, (sid, fid, ref)), is_md in zip(rows, written, md, strict=True):
        atoms = row.toatoms()
        np.testing.assert_allclose(atoms.positions, source.positions, atol=1e-7)
        np.testing.assert_allclose(atoms.cell, source.cell, atol=1e-7)
        assert atoms.pbc.all()
        np.testing.assert_array_equal(atoms.get_tags(), source.get_tags())
        assert list(atoms.constraints[0].index) == list(source.constraints[0].index)
        total = source.get_potential_energy()
        assert row.energy == pytest.approx(total - ref, abs=1e-7)
        assert row.total_energy == pytest.approx(total, abs=1e-7)
        assert row.reference_energy == pytest.approx(ref, abs=1e-12)
        np.testing.assert_allclose(row.forces, source.get_forces(apply_constraint=False), atol=1e-7)
        assert (row.sid, row.fid, row.data["sid"]) == (sid, fid, sid)
        assert row.md_split is is_md


def test_release_downloads_verifies_extracts_and_converts(release: dict, tmp_path: Path) -> None:
    root, inputs = _download(release, tmp_path)
    out = tmp_path / "out"
    prepare_oc_downloaded(SETTINGS, out, inputs, processes=2, catalog_root=root, progress=False)

    splits = ("is2re_test", "s2ef_test", "train", "val_id")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["provenance.json", *splits, *(f"{s}.manifest.json" for s in splits)]
    )
    # one shard per source file, in data order: 2 + 1 extxyz files, 4 x 2 and 4 x 1 LMDBs
    shards = {s: len(read_split_manifest(out / s)["shards"]) for s in splits}
    assert shards == {"train": 3, "val_id": 1, "s2ef_test": 8, "is2re_test": 4}
    assert all(p.name.startswith("shard-") for s in splits for p in (out / s).iterdir())
    frames = release["frames"]
    train = frames["s2ef_train_all"] + frames["s2ef_md"]
    _check_s2ef(out / "train", train, [False] * 8 + [True] * 4)
    _check_s2ef(out / "val_id", frames["s2ef_val_id"], [False] * 4)

    rows = _rows(out / "s2ef_test")
    expected = [
        (sub, r) for sub in SUBSPLITS for part in (0, 1) for r in release["s2ef_test"][sub, part]
    ]
    assert len(rows) == len(expected) == 10
    for row, (sub, record) in zip(rows, expected, strict=True):
        assert row.subsplit == sub and row.sid == record["sid"] and row.data["sid"] == record["sid"]
        assert row.fid == int(record["fid"][0])
        np.testing.assert_allclose(row.positions, record["pos"].numpy(), atol=1e-6)
        assert row.get("energy") is None and row.get("forces") is None

    rows = _rows(out / "is2re_test")
    expected = [(sub, r) for sub in SUBSPLITS for r in release["is2re"][sub]]
    assert len(rows) == 8
    for row, (sub, record) in zip(rows, expected, strict=True):
        atoms = row.toatoms()
        np.testing.assert_allclose(atoms.positions, record["pos"].numpy(), atol=1e-6)
        np.testing.assert_allclose(atoms.cell, record["cell"].numpy()[0], atol=1e-6)
        np.testing.assert_array_equal(atoms.get_tags(), record["tags"].numpy())
        fixed = np.flatnonzero(record["fixed"].numpy())
        assert list(atoms.constraints[0].index) == list(fixed)
        assert row.energy == pytest.approx(record["y_init"])
        assert row.y_relaxed == pytest.approx(record["y_relaxed"])
        np.testing.assert_allclose(
            row.data["pos_relaxed"], record["pos_relaxed"].numpy(), atol=1e-6
        )
        assert row.subsplit == sub and row.data["sid"] == record["sid"]

    import json

    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["frames"] == {"train": 12, "val_id": 4, "s2ef_test": 10, "is2re_test": 8}
    assert provenance["published_frames"] == provenance["frames"]
    assert provenance["archives"]["oc20_s2ef_md"]["md_split"] is True
    assert not (out / ".work").exists()

    # the files are what the training code and fairchem read
    data = AseLmdbDataset(out / "train")
    assert len(data) == 12 and bool(data[11].md_split) and not bool(data[0].md_split)
    from fairchem.core.datasets import AseDBDataset

    for split, n in (("train", 12), ("val_id", 4), ("s2ef_test", 10), ("is2re_test", 8)):
        dataset = AseDBDataset({"src": str(out / split)})
        assert len(dataset) == n
        atoms = dataset.get_atoms(0)
        assert len(atoms) > 0 and atoms.pbc.all()
    first = AseDBDataset({"src": str(out / "train")})
    assert [first.get_atoms(i).info["sid"] for i in range(12)] == [w[1][0] for w in train]


def _bad_release(release: dict, tmp_path: Path, damage) -> tuple:
    """The release with the val_id archive's extxyz/txt replaced by ``damage(directory)``."""
    src = tmp_path / "bad"
    top, _ = s2ef_archive_dir(src, "s2ef_val_id", files=1, frames_per_file=4, seed=3)
    damage(top / "s2ef_val_id")
    bad = dict(release, archives=dict(release["archives"]))
    bad["archives"]["s2ef_val_id"] = (tar_dir(top), "tar")
    return bad


def _assert_nothing_written(out: Path) -> None:
    """No split folder, manifest or provenance: only the conversion's .work, if anything."""
    assert [p.name for p in out.iterdir()] in ([], [".work"]) if out.exists() else True


def test_txt_with_fewer_lines_stops_naming_file_and_line(release: dict, tmp_path: Path) -> None:
    def damage(directory: Path) -> None:
        frames = slab_frames(4, seed=5)
        write_s2ef_files(directory, "0", frames, [(1, 2, -3.0)] * 4, txt_lines=3)

    root, inputs = _download(_bad_release(release, tmp_path, damage), tmp_path)
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        prepare_oc_downloaded(SETTINGS, out, inputs, processes=1, catalog_root=root, progress=False)
    message = str(info.value)
    assert "0.txt.xz: line 4: missing" in message and "0.extxyz.xz line" in message
    assert "has only 3 lines" in message
    _assert_nothing_written(out)


def test_truncated_xz_stops_naming_file_and_line(release: dict, tmp_path: Path) -> None:
    def damage(directory: Path) -> None:
        xz = directory / "0.extxyz.xz"
        xz.write_bytes(xz.read_bytes()[: len(xz.read_bytes()) // 2])

    root, inputs = _download(_bad_release(release, tmp_path, damage), tmp_path)
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        prepare_oc_downloaded(SETTINGS, out, inputs, processes=2, catalog_root=root, progress=False)
    message = str(info.value)
    assert "0.extxyz.xz: damaged xz stream after line" in message
    _assert_nothing_written(out)


def test_frame_count_differing_from_the_published_one_is_an_error(
    release: dict, tmp_path: Path
) -> None:
    root, inputs = _download(release, tmp_path, {"oc20_s2ef_val_id": {"val_id": 5}})
    out = tmp_path / "out"
    with pytest.raises(DataError, match="split val_id: converted 4 frames but .* publishes 5"):
        prepare_oc_downloaded(SETTINGS, out, inputs, processes=1, catalog_root=root, progress=False)
    _assert_nothing_written(out)


def test_finished_shards_are_not_redone_after_a_failure(
    release: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, inputs = _download(release, tmp_path)
    out = tmp_path / "out"
    converted: list[Path] = []
    killed: list[Path] = []
    original = oc_shards._rows

    def failing(task):  # the val_id shard dies once, as if the job were killed there
        converted.append(task.source)
        if task.split == "val_id" and not killed:
            killed.append(task.source)
            raise RuntimeError("killed")
        return original(task)

    monkeypatch.setattr(oc_shards, "_rows", failing)
    with pytest.raises(RuntimeError, match="killed"):
        prepare_oc_downloaded(SETTINGS, out, inputs, processes=1, catalog_root=root, progress=False)
    _assert_nothing_written(out)
    done = sorted((out / ".work").glob("*/shard-*.json"))
    assert len(done) == len(converted) - 1 == 3  # train: 2 + 1 files, recorded
    finished = converted[:-1]
    converted.clear()
    prepare_oc_downloaded(SETTINGS, out, inputs, processes=1, catalog_root=root, progress=False)
    assert (out / "provenance.json").is_file()
    assert killed[0] in converted and not set(finished) & set(converted)
    assert len(_rows(out / "train")) == 12


def test_legacy_pickle_calling_os_system_is_refused_without_running_it(
    release: dict, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    lmdb_file = write_legacy_lmdb(tmp_path / "evil.lmdb", [Exploit(f"touch {marker}")])
    with pytest.raises(DataError, match=r"refusing to unpickle posix\.system in .*evil\.lmdb"):
        list(read_legacy_rows(lmdb_file))
    assert not marker.exists()
    for payload in (
        pickle.dumps(Exploit(f"touch {marker}")),
        b"cbuiltins\neval\n(Vprint(1)\ntR.",
        b"csubprocess\nPopen\n((Vtouch\nV" + str(marker).encode() + b"\nltR.",
    ):
        with pytest.raises(DataError, match="refusing to unpickle"):
            safe_loads(payload, "test")
    assert not marker.exists()

    class Persistent(pickle.Pickler):  # torch.save's way to refer to storages; not in OCP records
        def persistent_id(self, obj: object) -> str | None:
            return "storage-0" if obj == "tensor" else None

    buffer = io.BytesIO()
    Persistent(buffer).dump(["tensor"])
    with pytest.raises(DataError, match="refusing to unpickle a persistent id in test"):
        safe_loads(buffer.getvalue(), "test")
    with pytest.raises(DataError, match="test: damaged record"):
        safe_loads(pickle.dumps([1, 2])[:-3], "test")


def test_evil_record_in_a_release_stops_the_conversion(release: dict, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    src = tmp_path / "evil"
    records = legacy_records(slab_frames(2, seed=20), "is2re")
    for sub in SUBSPLITS:
        write_legacy_lmdb(
            src / f"is2res_train_val_test_lmdbs/data/is2re/all/{sub}/data.lmdb",
            [*records, Exploit(f"touch {marker}")] if sub == "test_ood_cat" else records,
        )
    bad = dict(release, archives=dict(release["archives"]))
    bad["archives"]["is2res_train_val_test_lmdbs"] = (
        tar_dir(src / "is2res_train_val_test_lmdbs", "w:gz"),
        "tar.gz",
    )
    root, inputs = _download(bad, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"refusing to unpickle posix\.system .*test_ood_cat"):
        prepare_oc_downloaded(SETTINGS, out, inputs, processes=2, catalog_root=root, progress=False)
    assert not marker.exists()
    _assert_nothing_written(out)


def test_oc22_style_records_keep_total_energy_and_forces(tmp_path: Path) -> None:
    frames = slab_frames(3, seed=7)
    path = write_legacy_lmdb(tmp_path / "oc22.lmdb", legacy_records(frames, "s2ef"))
    rows = list(read_legacy_rows(path))
    assert len(rows) == 3
    for (atoms, key_value_pairs, data), source in zip(rows, frames, strict=True):
        assert atoms.calc.results["energy"] == pytest.approx(source.get_potential_energy())
        np.testing.assert_allclose(
            atoms.calc.results["forces"], source.get_forces(apply_constraint=False), atol=1e-6
        )
        assert key_value_pairs["sid"] == data["sid"]


def test_extxyz_reader_streams_in_batches_across_frames(tmp_path: Path) -> None:
    frames = slab_frames(7, seed=3)
    ids = [(i, 10 + i, -float(i)) for i in range(7)]
    extxyz, _ = write_s2ef_files(tmp_path, "x", frames, ids)
    rows = list(read_s2ef_frames(extxyz, batch=3))
    assert [kv["fid"] for _, kv, _ in rows] == [10 + i for i in range(7)]
    # a frame cut short (clean end of the xz stream in the middle of a frame)
    text = lzma.decompress(extxyz.read_bytes()).decode().splitlines(keepends=True)
    extxyz.write_bytes(lzma.compress("".join(text[:-3]).encode()))
    with pytest.raises(DataError, match=r"x\.extxyz\.xz: line \d+: frame of \d+ atoms cut short"):
        list(read_s2ef_frames(extxyz))


OC22_SUBDIRS = {  # our split name -> directory of the release (data/oc22/s2ef-total/<dir>)
    "train": "train",
    "val_id": "val_id",
    "val_ood": "val_ood",
    "s2ef_test_id": "test_id",
    "s2ef_test_ood": "test_ood",
}


def test_oc22_release_downloads_verifies_extracts_and_converts(tmp_path: Path) -> None:
    """An OC22 S2EF-Total archive laid out like the release
    (s2ef_total_train_val_test_lmdbs/data/oc22/s2ef-total/<split>/*.lmdb): every split converts
    with total energies (y, no referencing), forces, fixed atoms and sids, and the frame counts
    are checked against the catalog."""
    src = tmp_path / "src" / "s2ef_total_train_val_test_lmdbs"
    records = {}
    for index, (split, subdir) in enumerate(OC22_SUBDIRS.items()):
        records[split] = legacy_records(slab_frames(2 + index % 2, seed=40 + index), "s2ef")
        write_legacy_lmdb(src / f"data/oc22/s2ef-total/{subdir}/data.0000.lmdb", records[split])
    data = tar_dir(src, "w:gz")
    settings = {
        "name": "oc22",
        "family": "oc22",
        "splits": {
            "train": "train",
            "val": ["val_id", "val_ood"],
            "test": ["s2ef_test_id", "s2ef_test_ood"],
        },
        "source": "download",
    }
    root = tmp_path / "repo"
    counts = {split: len(items) for split, items in records.items()}
    with serve() as served:
        served.files["s2ef_total_train_val_test_lmdbs.tar.gz"] = data
        url = served.url("s2ef_total_train_val_test_lmdbs.tar.gz")
        entry = catalog_entry(
            url, "tar.gz", data, {"oc22": list(OC22_SUBDIRS)}, frames=counts, frames_source="t"
        )
        write_catalog(root, {"oc22_s2ef_total_lmdbs": entry})
        archive = load_catalog(root=root)["oc22_s2ef_total_lmdbs"]
        extracted = fetch(archive, tmp_path / "downloads", tmp_path / "extracted", progress=False)
    out = tmp_path / "out"
    prepare_oc_downloaded(
        settings, out, [extracted], processes=2, catalog_root=root, progress=False
    )
    for split, expected in records.items():
        rows = _rows(out / split)
        assert len(rows) == len(expected)
        for row, record in zip(rows, expected, strict=True):
            assert row.energy == pytest.approx(record["y"], abs=1e-7)
            np.testing.assert_allclose(row.forces, record["force"].numpy(), atol=1e-6)
            np.testing.assert_allclose(row.positions, record["pos"].numpy(), atol=1e-6)
            fixed = np.flatnonzero(record["fixed"].numpy())
            assert list(row.toatoms().constraints[0].index) == list(fixed)
            assert row.sid == record["sid"]

    bad = dict(counts, val_ood=counts["val_ood"] + 1)
    write_catalog(root, {"oc22_s2ef_total_lmdbs": dict(entry, frames=bad)})
    converted, published = counts["val_ood"], bad["val_ood"]
    message = rf"split val_ood: converted {converted} frames but .* publishes {published}"
    with pytest.raises(DataError, match=message):
        prepare_oc_downloaded(
            settings, tmp_path / "out2", [extracted], processes=1, catalog_root=root, progress=False
        )


def _damaged_frame(change: str) -> list:
    frames = slab_frames(3, seed=4)
    atoms = frames[1]
    if change == "nan force":
        atoms.calc.results["forces"][2, 0] = np.nan
    elif change == "nan energy":
        atoms.calc.results["energy"] = np.nan
    elif change == "nan position":
        atoms.positions[4, 2] = np.nan
    elif change == "huge cell":
        atoms.set_cell(atoms.cell * 1e11)
    elif change == "Og":
        atoms.numbers[0] = 118
    elif change == "no atom":
        empty = atoms[:0]
        empty.calc = SinglePointCalculator(empty, energy=-1.0, forces=np.zeros((0, 3)))
        frames[1] = empty
    return frames


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("nan force", r"atom 2 \(Pt\) has force \[nan, "),
        ("nan energy", r"energy nan eV is not finite"),
        ("nan position", r"atom 4 \(Pt\) has position \[.*nan\] Å, not finite"),
        ("huge cell", r"cell vector 0 is 5\.\d+e\+11 Å long, beyond 1000 Å"),
        ("Og", r"atom 0 has atomic number 118 \(Og\), outside the supported 1\.\.89"),
        ("no atom", r"0 atom\(s\); a periodic cell needs at least 1"),
    ],
)
def test_extxyz_frames_outside_the_bounds_are_refused_naming_file_and_frame(
    tmp_path: Path, change: str, message: str
) -> None:
    """Before: NaN forces and energies, 0-atom frames, a 1e12 Å cell and Og were written without
    a word, and a NaN position was reported later as a row without labels."""
    frames = _damaged_frame(change)
    ids = [(100 + i, i, -1.0) for i in range(len(frames))]
    extxyz, _ = write_s2ef_files(tmp_path, "x", frames, ids)
    where = r"x\.extxyz\.xz: line \d+: frame 1 \(sid 101, fid 1\): "
    with pytest.raises(DataError, match=where + message) as info:
        list(read_s2ef_frames(extxyz, batch=2))
    assert "\n" not in str(info.value)


def test_legacy_rows_outside_the_bounds_are_refused_naming_file_row_and_sid(
    tmp_path: Path,
) -> None:
    """A legacy (OC22-style) record with a NaN force or an unknown element stops its shard."""
    records = legacy_records(slab_frames(3, seed=8), "s2ef")
    records[2]["force"][1, 1] = float("nan")
    records[1]["atomic_numbers"][0] = 150.0
    for bad, message in (
        (2, r"atom 1 \(\w+\) has force \[.*nan"),
        (1, r"atom 0 has atomic number 150"),
    ):
        good = legacy_records(slab_frames(3, seed=8), "s2ef")
        good[bad] = records[bad]
        path = write_legacy_lmdb(tmp_path / f"bad{bad}.lmdb", good)
        task = oc_shards.ShardTask("train", 0, "lmdb", path, "a", tmp_path / "work")
        with pytest.raises(
            DataError, match=rf"bad{bad}\.lmdb: row {bad} \(sid 100{bad}\): {message}"
        ):
            list(oc_shards._rows(task))


def test_a_conversion_group_that_does_not_fit_stops_before_writing(
    release: dict, tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    """Disk first: a group's share of the archive's published frames (here a claimed 40,000 for
    the two files of s2ef_train_all: 20,000 a group, 79 MiB of aselmdb) that does not fit in
    the dataset's folder stops the job in one line before a shard is written."""
    root, inputs = _download(
        release, tmp_path, frames_override={"oc20_s2ef_train_all": {"train": 40_000}}
    )
    out = tmpfs("96m") / DATASET
    train_all = next(path for path in inputs if path.name == "oc20_s2ef_train_all")
    with pytest.raises(DiskError) as error:
        convert_group(SETTINGS, train_all, 0, 2, out, catalog_root=root, progress=False)
    message = str(error.value)
    assert message.startswith(f"{out / '.work' / 'oc20_s2ef_train_all'}: converting group 0 of 2")
    assert "20,000 frames x 4143 bytes of aselmdb a frame" in message and "free there" in message
    assert not list(out.rglob("*.aselmdb"))
