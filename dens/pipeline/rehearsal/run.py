"""`make rehearsal`: the paper path end to end on small archives (README "Rehearse the paper
scale").

:func:`rehearse` generates the stand-in archives (dens.pipeline.rehearsal.generate) into
results/rehearsal/mirror, serves that folder on 127.0.0.1, uses a working Slurm cluster or starts
a one-node one (dens.pipeline.rehearsal.slurm_cluster, as root), runs
``snakemake --profile profiles/slurm --config scale=rehearsal mirror=URL catalog=PATH`` on the
targets (default ``all_tables``) with the profile's partition replaced by the cluster's, then
stops what it started. :func:`timings` sums the jobs' Snakemake benchmark files per job family
(rule): jobs, wall time and peak memory (max_rss).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from dens.pipeline import paths
from dens.pipeline.registry import load_registry
from dens.pipeline.rehearsal.generate import Volume, generate, train_frames
from dens.pipeline.rehearsal.server import serve_directory

SCALE = "rehearsal"
PROFILE = Path("profiles/slurm")
DEFAULT_TARGETS = ("all_tables",)


def generated_catalog(root: Path, volume_options: dict[str, int], fresh: bool = False) -> Path:
    """Generate the archives and their catalog into results/rehearsal/mirror (under ``root``)
    unless a catalog is there already (``fresh``: always); return the catalog's path."""
    out = root / paths.mirror_dir(SCALE)
    catalog = out / "archives.yaml"
    if catalog.is_file() and not fresh:
        return catalog
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    registry = load_registry({"scale": "paper"}, root=root)
    volume = Volume(train_frames(registry), **volume_options)
    return generate(out, registry, volume, root=root)


def profile_resources(root: Path) -> dict[str, str]:
    """The Slurm profile's default-resources as name -> value."""
    settings = yaml.safe_load((root / PROFILE / "config.yaml").read_text())
    return {str(key): str(value) for key, value in settings["default-resources"].items()}


def node_cpus() -> int:
    """CPUs of this machine (the one-node cluster's node)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def partition_memory_mb(partition: str) -> int | None:
    """The memory of the largest node of ``partition`` (MB, sinfo's %m); None when unknown."""
    result = subprocess.run(
        ["sinfo", "--noheader", f"--partition={partition}", "--format=%m"],
        capture_output=True,
        text=True,
        check=False,
    )
    sizes = [int(line.strip().rstrip("+")) for line in result.stdout.split() if line.strip()]
    return max(sizes) if result.returncode == 0 and sizes else None


def snakemake_command(
    partition: str,
    account: str | None,
    mirror: str,
    catalog: Path,
    targets: Sequence[str],
    jobs: int | None = None,
    job_mem_mb: int | None = None,
) -> list[str]:
    """The Slurm profile's snakemake on ``targets`` at the rehearsal scale, partition (and
    account: None drops it, for a cluster without accounting) replaced, each job's threads
    (the paper's: 16 for a conversion) capped at the node's CPUs, which Slurm would otherwise
    never schedule, and each job's memory at the partition's largest node (config
    max_job_mem_mb: the paper's training jobs ask for 64 GB) or ``job_mem_mb`` if smaller;
    ``jobs``: Slurm jobs at a time (None: the profile's)."""
    resources = profile_resources(Path.cwd()) | {"slurm_partition": partition}
    memory = partition_memory_mb(partition)
    if job_mem_mb is not None:
        memory = job_mem_mb if memory is None else min(memory, job_mem_mb)
    if account is None:
        resources.pop("slurm_account", None)
    else:
        resources["slurm_account"] = account
    snakemake = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    return [
        snakemake,
        "--profile",
        str(PROFILE),
        "--config",
        f"scale={SCALE}",
        f"mirror={mirror}",
        f"catalog={catalog}",
        *([] if memory is None else [f"max_job_mem_mb={memory}"]),
        "--default-resources",
        *(f"{name}={value}" for name, value in resources.items()),
        # a cluster without an accounting database: squeue reports finished jobs (MinJobAge)
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--max-threads",
        str(node_cpus()),
        *([] if jobs is None else ["--jobs", str(jobs)]),
        *targets,
    ]


def rehearse(
    targets: Sequence[str],
    volume_options: dict[str, int],
    account: str | None = None,
    fresh: bool = False,
    jobs: int | None = None,
    job_mem_mb: int | None = None,
) -> int:
    """Generate, serve, start or use Slurm, run snakemake on ``targets``; its exit status."""
    from dens.pipeline.rehearsal.slurm_cluster import slurm_cluster

    root = Path.cwd()
    # a SIGTERM ends snakemake (subprocess.run kills it) and stops what was started, as Ctrl-C
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    catalog = generated_catalog(root, volume_options, fresh)
    env = {
        **os.environ,
        # the jobs (sbatch exports the environment) import this checkout's dens
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    with serve_directory(catalog.parent) as served, slurm_cluster() as cluster:
        mirror = served.url().rstrip("/")
        relative = catalog.relative_to(root)
        command = snakemake_command(
            cluster.partition, account, mirror, relative, targets, jobs, job_mem_mb
        )
        print("rehearsal:", " ".join(command), flush=True)
        status = subprocess.run(command, env=env, check=False).returncode
    for line in timings(root):
        print(line)
    return status


@dataclass
class Family:
    """The benchmark files of one job family (rule)."""

    jobs: int = 0
    wall_s: float = 0.0
    longest_s: float = 0.0
    max_rss_mb: float = 0.0


def read_benchmarks(root: Path, scale: str = SCALE) -> dict[str, Family]:
    """rule -> Family, from the Snakemake benchmark files (results/<scale>/benchmarks/<rule>/
    and the download folder's, whose files name download or extract jobs)."""
    rules, downloads = (root / folder for folder in paths.benchmarks_dirs(scale))
    files = [(tsv.relative_to(rules).parts[0], tsv) for tsv in sorted(rules.glob("*/**/*.tsv"))]
    files += [
        ("extract_archive" if tsv.name.endswith(".extract.tsv") else "download_archive", tsv)
        for tsv in sorted(downloads.glob("*.tsv"))
    ]
    families: dict[str, Family] = {}
    for rule, tsv in files:
        with open(tsv, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        family = families.setdefault(rule, Family())
        for row in rows:
            seconds = float(row["s"])
            family.jobs += 1
            family.wall_s += seconds
            family.longest_s = max(family.longest_s, seconds)
            rss = row.get("max_rss", "NA")
            if rss not in ("NA", "", None):
                family.max_rss_mb = max(family.max_rss_mb, float(rss))
    return families


def timings(root: Path, scale: str = SCALE) -> list[str]:
    """A table (text lines) of the jobs' wall time and peak memory per job family."""
    families = read_benchmarks(root, scale)
    if not families:
        return [f"no benchmark files under {paths.benchmarks_dirs(scale)[0]} yet"]
    lines = [f"{'job family':<22} {'jobs':>5} {'total s':>9} {'longest s':>10} {'peak MB':>9}"]
    for rule, family in sorted(families.items()):
        lines.append(
            f"{rule:<22} {family.jobs:>5} {family.wall_s:>9.1f} {family.longest_s:>10.1f} "
            f"{family.max_rss_mb:>9.0f}"
        )
    return lines
