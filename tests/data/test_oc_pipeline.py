"""The paper-scale OC22 preparation through `snakemake`, end to end, on tiny archives laid out like
the released ones and served on 127.0.0.1 (config `mirror`): download -> extract -> one
convert_group job per group of an archive's source files -> the finishing prepare job moving the
shards into split folders. A group job that fails is rerun without redoing its finished files."""

from __future__ import annotations

import glob
import json
import re
import subprocess
from pathlib import Path

import yaml
from oc_fixtures import legacy_records, md5, serve, slab_frames, tar_dir, write_legacy_lmdb
from pipeline_copy import copy_repository, snakemake

from dens.data.aselmdb import AseLmdbDataset
from dens.data.split_folder import read_split_manifest, split_rows

S2EF = "oc22_s2ef_total_lmdbs"
IS2RE = "oc22_is2re_total_lmdbs"
S2EF_DIRS = {  # split -> release sub-directory, in the catalog's split order
    "train": "train",
    "val_id": "val_id",
    "val_ood": "val_ood",
    "s2ef_test_id": "test_id",
    "s2ef_test_ood": "test_ood",
}
IS2RE_DIRS = {f"is2re_{sub}": sub for sub in ("test_id", "test_ood", "val_id", "val_ood")}
FRAMES_PER_JOB = 4  # 15 published S2EF frames -> 4 groups of the archive's 10 LMDB files
BAD = "data/oc22/s2ef-total/test_id/data.0000.lmdb"  # source file 6: group 2 of 4


def _s2ef_release(root: Path) -> tuple[Path, dict[str, int], dict[str, list]]:
    """Two LMDB files per split (1 or 2 records each); the records of the BAD file."""
    top = root / "s2ef_total_train_val_test_lmdbs"
    counts, files = {}, {}
    for index, (split, sub) in enumerate(S2EF_DIRS.items()):
        counts[split] = 0
        for part in range(2):
            n = 1 + (index + part) % 2
            records = legacy_records(slab_frames(n, seed=10 * index + part), "s2ef")
            name = f"data/oc22/s2ef-total/{sub}/data.{part:04d}.lmdb"
            files[name] = records
            write_legacy_lmdb(top / name, records)
            counts[split] += n
    (top / BAD).write_bytes(b"not an LMDB file" * 1000)  # the job of group 2 fails here
    return top, counts, files


def _is2re_release(root: Path) -> Path:
    top = root / "is2res_total_train_val_test_lmdbs"
    for index, sub in enumerate(IS2RE_DIRS.values()):
        records = legacy_records(slab_frames(2, seed=50 + index), "is2re", seed=index)
        write_legacy_lmdb(top / f"data/oc22/is2re-total/{sub}/data.0000.lmdb", records)
    return top


def _point_catalog(repo: Path, data: dict[str, bytes], counts: dict[str, int]) -> None:
    """The copy's config/archives.yaml with the OC22 entries checking the test archives."""
    path = repo / "config" / "archives.yaml"
    document = yaml.safe_load(path.read_text())
    for name, payload in data.items():
        entry = document["archives"][name]
        entry["checksum"] = {"algorithm": "md5", "digest": md5(payload)}
        entry["size"] = None
    document["archives"][S2EF]["frames"] = counts
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def _url_path(repo: Path, name: str) -> str:
    document = yaml.safe_load((repo / "config" / "archives.yaml").read_text())
    return re.sub(r"^https?://[^/]+/", "", document["archives"][name]["url"])


def _jobs(result: subprocess.CompletedProcess[str]) -> int:
    """The convert_group jobs Snakemake ran or planned."""
    output = result.stdout + result.stderr
    return len(re.findall(r"^(?:local)?rule convert_group:", output, flags=re.M))


def _shards(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of each converted shard under ``folder``, by name."""
    shards = folder.glob("shard-??????.aselmdb")  # not shard-NNNNNN.partial.aselmdb
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards}


def test_snakemake_converts_in_group_jobs_and_a_failed_group_resumes(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo")
    s2ef_top, counts, files = _s2ef_release(tmp_path / "src")
    data = {
        S2EF: tar_dir(s2ef_top, "w:gz"),
        IS2RE: tar_dir(_is2re_release(tmp_path / "src"), "w:gz"),
    }
    _point_catalog(repo, data, counts)
    dataset = repo / "results/paper/data/oc22"
    work = dataset / ".work" / S2EF
    with serve() as served:
        for name, payload in data.items():
            served.files[_url_path(repo, name)] = payload
        run = ["--cores", "2", "--keep-going", "--printshellcmds", "--config", "scale=paper"]
        run += [
            f"mirror=http://127.0.0.1:{served.port}",
            f"convert_frames_per_job={FRAMES_PER_JOB}",
        ]
        target = "results/paper/data/oc22/provenance.json"

        dry = snakemake(repo, "-n", target, *run)
        assert dry.returncode == 0, dry.stderr
        assert _jobs(dry) == 4 + 1  # the S2EF archive in 4 groups, IS2RE in 1 (no count published)
        assert "--group 3 --groups 4" in dry.stdout and "--group 0 --groups 1" in dry.stdout

        failed = snakemake(repo, target, *run)
        assert failed.returncode != 0
        assert not (dataset / "provenance.json").exists() and not (dataset / "train").exists()
        assert sorted(p.name for p in work.glob("group-*.json")) == [
            "group-0.json", "group-1.json", "group-3.json"
        ]  # fmt: skip
        finished = _shards(work)  # groups 0, 1, 3 and the first file of group 2
        assert len(finished) == 9 and "shard-000005.aselmdb" in finished
        assert "shard-000006.aselmdb" not in finished

        extracted = repo / "results/downloads/extracted" / S2EF
        bad = next(extracted.rglob(BAD.split("/", 1)[1]))
        bad.unlink()
        write_legacy_lmdb(bad, files[BAD])
        fixed = snakemake(repo, target, *run)
        assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
        assert _jobs(fixed) == 1  # group 2 alone

        again = snakemake(repo, "-n", target, *run)
        assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    assert not (dataset / ".work").exists()
    moved: dict[str, tuple[int, int]] = {}
    order = []
    for split in S2EF_DIRS:
        folder = dataset / split
        manifest = read_split_manifest(folder)
        assert manifest["rows"] == counts[split] == len(AseLmdbDataset(folder))
        listed = sorted(glob.glob(f"{folder}/*"))  # what fairchem's AseDBDataset opens
        assert [Path(p).name for p in listed] == ["shard-000000.aselmdb", "shard-000001.aselmdb"]
        moved |= {f"{split}/{k}": v for k, v in _shards(folder).items()}
        order += [f"{split}/{k}" for k in sorted(_shards(folder))]
    # the shards converted before the failure were moved, not converted again nor copied
    earlier = [f"shard-{i:06d}.aselmdb" for i in range(10)]
    assert all(moved[order[earlier.index(n)]] == finished[n] for n in finished)
    assert moved[order[6]] not in finished.values()
    for split in IS2RE_DIRS:
        assert len(list(split_rows(dataset / split))) == 2  # IS2RE: no forces
    from fairchem.core.datasets import AseDBDataset

    theirs = AseDBDataset({"src": str(dataset / "train")})  # beside Snakemake's timestamp file
    ours = AseLmdbDataset(dataset / "train")
    assert len(theirs) == len(ours) == counts["train"]
    assert [theirs.get_atoms(i).info["sid"] for i in range(len(theirs))] == [
        r["sid"] for name, rs in files.items() if "/train/" in name for r in rs
    ]
    provenance = json.loads((dataset / "provenance.json").read_text())
    assert provenance["archives"][S2EF]["conversion_groups"] == 4
    assert provenance["archives"][IS2RE]["conversion_groups"] == 1
    assert provenance["frames"]["train"] == counts["train"]
