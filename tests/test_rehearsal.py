"""The rehearsal of the paper scale (dens.pipeline.rehearsal, config/scales/rehearsal.yaml): the
generated archives are read back by the converters after a download from a 127.0.0.1 mirror
verified against their stand-in catalog; the rehearsal DAG is the paper's, every job resolved,
with the caps applied; config `catalog` goes only with a scale of catalog: stand_in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dens.data.download.catalog import load_catalog_with
from dens.data.download.extract import extract
from dens.data.download.transfer import download_archive
from dens.data.md17 import convert_md17_npz
from dens.data.oc_convert import prepare_oc_downloaded
from dens.data.split_folder import split_rows
from dens.errors import ConfigError
from dens.layout import DatasetDirectory
from dens.pipeline.registry import load_registry
from dens.pipeline.rehearsal.generate import Volume, generate, needed_archives, url_path
from dens.pipeline.rehearsal.run import read_benchmarks
from dens.pipeline.rehearsal.server import serve_directory
from dens.simulate.settings import SimulationSettings

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rehearsal's archives, small: 4-frame training splits, 2 frames per evaluation split,
    one system per IS2RE sub-split; returns the stand-in catalog."""
    out = tmp_path_factory.mktemp("mirror")
    registry = load_registry({"scale": "paper"})
    datasets = {name: 4 for name in registry.datasets}
    volume = Volume(datasets, eval_frames=2, relax_systems=1, md17_test_frames=3)
    return generate(out, registry, volume, root=REPO)


def dry_run(*args: str) -> str:
    """The output of ``snakemake -n --forceall ARGS`` in this checkout (it must succeed)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        [SNAKEMAKE, "-n", "--forceall", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _rows(split: Path) -> int:
    """The rows of a split folder, read shard by shard and checked against its manifest."""
    return sum(1 for _ in split_rows(split))


def test_the_stand_in_catalog_lists_every_archive_of_the_tables(mirror: Path) -> None:
    published = yaml.safe_load((REPO / "config/archives.yaml").read_text())
    stand_in = yaml.safe_load(mirror.read_text())["archives"]
    assert set(stand_in) == set(needed_archives(published))
    for name, entry in stand_in.items():
        assert entry["url"] == published["archives"][name]["url"]
        assert (mirror.parent / url_path(entry["url"])).is_file(), name
    catalog = load_catalog_with(mirror, root=REPO)  # the checks of a stand-in pass
    assert (
        catalog["oc20_s2ef_train_2M"].digest == stand_in["oc20_s2ef_train_2M"]["checksum"]["digest"]
    )
    assert catalog["eq2_dens_epochs_12_2M"].published_checkpoint  # published entries kept
    assert "eq2_dens_epochs_12_2M" not in stand_in


@pytest.mark.parametrize("dataset", ["oc20-all-md", "oc22"])
def test_generated_oc_archives_download_verify_extract_and_convert(
    mirror: Path, tmp_path: Path, dataset: str
) -> None:
    """Every archive of the dataset from the 127.0.0.1 mirror, verified against the stand-in
    catalog, extracted and converted; each split has the frames the catalog states."""
    catalog = load_catalog_with(mirror, root=REPO)
    registry = load_registry({"scale": "rehearsal", "catalog": str(mirror)})
    settings = registry.data_settings(dataset)
    assert settings["catalog"] == str(mirror)
    inputs = []
    with serve_directory(mirror.parent) as served:
        for name, archive in catalog.items():
            if dataset not in archive.dataset or archive.optional:
                continue
            file = download_archive(archive, tmp_path / archive.filename, served.url())
            inputs.append(extract(file, tmp_path / "extracted" / name, archive.format))
    out = tmp_path / "data"
    prepare_oc_downloaded(settings, out, inputs, processes=1, progress=False)
    stand_in = yaml.safe_load(mirror.read_text())["archives"]
    for split in registry.split_names(dataset):
        expected = sum(
            entry.get("frames", {}).get(split, 0)
            for entry in stand_in.values()
            if split in entry.get("dataset", {}).get(dataset, [])
        )
        assert expected > 0, split
        assert _rows(DatasetDirectory(out).split(split)) == expected, split
    for split in registry.splits(dataset, "relax"):  # one row per system: sids are unique
        sids = [row.sid for _, row in split_rows(DatasetDirectory(out).split(split))]
        assert len(set(sids)) == len(sids) > 0, split
    for split in registry.split_names(dataset):  # test labels are the servers', as released
        rows = [row for _, row in split_rows(DatasetDirectory(out).split(split))]
        if split.startswith("is2re"):
            labelled = {"y_relaxed" in row.key_value_pairs for row in rows}
        else:
            labelled = {"energy" in row and "forces" in row for row in rows}
        assert labelled == {"test" not in split}, split


def test_generated_md17_npz_is_read_by_the_md17_converter(mirror: Path, tmp_path: Path) -> None:
    entry = yaml.safe_load(mirror.read_text())["archives"]["md17_aspirin"]
    npz = mirror.parent / url_path(entry["url"])
    with np.load(npz, allow_pickle=False) as arrays:
        assert arrays["R"].shape == (1003, 21, 3) and arrays["E"].shape == (1003, 1)
    splits = convert_md17_npz(npz, tmp_path)
    assert {name: _rows(path) for name, path in splits.items()} == {
        "train": 950,
        "val": 50,
        "test": 3,
    }
    assert entry["frames"] == {"all": 1003}


def test_rehearsal_dry_run_is_the_paper_dag_with_the_caps(mirror: Path) -> None:
    """`snakemake -n all_tables` at scale rehearsal resolves every job of the paper DAG, and
    each experiment is the paper's but for the caps (and its own downloads folder)."""

    def jobs(*config: str) -> list[str]:
        profile = ["--profile", "profiles/slurm", "all_tables", "-q", "rules"]
        stdout = dry_run(*profile, "--config", *config)
        return stdout.split("Job stats:")[1].split("Reasons:")[0].split()

    def counts(stats: list[str]) -> dict[str, int]:
        rows = stats[stats.index("-------") + 1 :]  # after the header "job count" and its rule
        return {job: int(count) for job, count in zip(rows[::2], rows[1::2], strict=True)}

    rehearsal = counts(jobs("scale=rehearsal", f"catalog={mirror}", "mirror=http://127.0.0.1:9"))
    paper = counts(jobs("scale=paper"))
    # conversion jobs follow the data volume: one per archive of the small stand-ins
    converted = rehearsal.pop("convert_group"), paper.pop("convert_group")
    assert converted == (15, 65) and rehearsal.pop("total") - 15 == paper.pop("total") - 65
    assert rehearsal == paper
    paper = load_registry({"scale": "paper"})
    capped = load_registry({"scale": "rehearsal", "catalog": str(mirror)})
    for name in paper.experiments:
        ours, theirs = capped.resolve(name), paper.resolve(name)
        assert ours["optim"].pop("max_steps") == 2, name
        reference = ours["optim"].get("energy_reference_file")
        if reference is not None:
            assert reference == "results/rehearsal/downloads/oc22_linfit_coeffs.npz"
            ours["optim"]["energy_reference_file"] = theirs["optim"]["energy_reference_file"]
        gpus = theirs["resources"]["gpus"]  # one_gpu_share: one GPU's share of the batches
        for key in ("batch_size", "eval_batch_size"):
            assert ours["optim"].pop(key) * gpus == theirs["optim"].pop(key), name
        assert ours["model"] == theirs["model"] and ours["optim"] == theirs["optim"], name
        assert ours["dens"] == theirs["dens"], name
        relax = capped.relax_settings(name)
        if relax is not None:
            assert relax["max_steps"] == 3 and relax["max_systems"] is None, name
    simulation = SimulationSettings.from_scale(capped.scale, "rehearsal")
    assert simulation.length_ps == 300 and simulation.steps == 20


def test_a_stand_in_catalog_goes_only_with_a_stand_in_scale(mirror: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only a scale with catalog: stand_in"):
        load_registry({"scale": "paper", "catalog": str(mirror)})
    with pytest.raises(ConfigError, match=r"config: catalog: None: .*rehearsal\.yaml"):
        load_registry({"scale": "rehearsal"})
    document = yaml.safe_load(mirror.read_text())
    moved = tmp_path / "moved.yaml"
    entry = document["archives"]["oc20_s2ef_val_id"]
    entry["url"] = "https://example.org/s2ef_val_id.tar"
    moved.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=r"archives\.oc20_s2ef_val_id\.url: .*differs"):
        load_registry({"scale": "rehearsal", "catalog": str(moved)})
    document = yaml.safe_load(mirror.read_text())
    document["archives"]["md17_aspirin"]["checksum"] = None
    unverified = tmp_path / "unverified.yaml"
    unverified.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=r"archives\.md17_aspirin\.checksum: None"):
        load_catalog_with(unverified, root=REPO)


def test_timings_sum_the_benchmark_files_per_job_family(tmp_path: Path) -> None:
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rule, name, seconds, rss in (("train", "a", 3.0, 900.5), ("train", "x/y/b", 5.0, 700.0)):
        path = tmp_path / "results/rehearsal/benchmarks" / rule / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:0{seconds:.0f}\t{rss}\t1\t1\t1\t0\t0\t0\t1\n")
    downloads = tmp_path / "results/rehearsal/downloads/benchmarks"
    downloads.mkdir(parents=True)
    (downloads / "x.tar.extract.tsv").write_text(header + "1.5\t0:00:01\tNA\t1\t1\t1\t0\t0\t0\t1\n")
    families = read_benchmarks(tmp_path)
    assert families["train"].jobs == 2 and families["train"].wall_s == 8.0
    assert families["train"].longest_s == 5.0 and families["train"].max_rss_mb == 900.5
    assert families["extract_archive"].jobs == 1 and families["extract_archive"].max_rss_mb == 0


def test_rehearsal_jobs_ask_for_the_paper_s_memory_and_time_capped_at_the_node(
    mirror: Path,
) -> None:
    """job_sizes: paper without GPUs: a conversion job asks for the paper's 12 h and 8 GB, the
    job finishing a dataset 4 h and 16 GB, memory capped at config max_job_mem_mb (make
    rehearsal: the node's memory), and no GPU."""
    config = ["scale=rehearsal", f"catalog={mirror}", "max_job_mem_mb=5000"]
    stdout = dry_run("results/rehearsal/data/oc22/provenance.json", "--config", *config)
    for rule, runtime in (("convert_group", 720), ("prepare_oc22", 240)):
        job = stdout[stdout.index(f"rule {rule}:") :]
        resources = job[job.index("resources:") :].splitlines()[0]
        assert f"runtime={runtime}," in resources and "mem_mb=5000," in resources, resources
    assert "gres=gpu" not in stdout
