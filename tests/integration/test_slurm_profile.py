"""The pipeline's Slurm profile submits real jobs through sbatch on a real Slurm cluster.

The `slurm` fixture (conftest.py) provides the cluster: an existing one, or a one-node
cluster on localhost that it installs and starts as root. The pipeline test runs
`snakemake --profile profiles/slurm` on a copy of the working tree at scale `smoke`,
changing only the partition and account (the user-editable `default-resources`) and the
status polling, and checks that every job went through sbatch and that the MD17 data it
asked for is a readable aselmdb.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ase.db
import pytest
import yaml

from .slurm_cluster import SlurmCluster

# One worker holds the session's Slurm cluster: every test that uses it runs there (xdist).
pytestmark = pytest.mark.xdist_group("slurm")

REPO = Path(__file__).resolve().parents[2]
PROFILE = Path("profiles/slurm/config.yaml")
RUN = "md17-ethanol/equiformer-l2-dens"
TARGET = Path(f"results/smoke/runs/{RUN}/seed0/metrics.json")
DATA = Path("results/smoke/data/md17-ethanol/train.aselmdb")
# Top-level entries of the working tree that are outputs or environments, never sources.
NOT_COPIED = {".git", ".venv", ".snakemake", "results"}
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: ([^)]+)\)")
# Account for clusters that require one (the one-node test cluster has no accounting).
ACCOUNT_ENV = "DENS_SLURM_TEST_ACCOUNT"
SNAKEMAKE_TIMEOUT_S = 240
UNFINISHED_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")


def copy_working_tree(destination: Path) -> None:
    """Copy the tracked and untracked, not ignored files of the repository to `destination`."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    for name in listing.stdout.decode().split("\0"):
        path = Path(name)
        if not name or path.parts[0] in NOT_COPIED or path.parts[0].endswith(".egg-info"):
            continue
        if "__pycache__" in path.parts or not (REPO / path).is_file():
            continue
        (destination / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / path, destination / path)


def profile_default_resources(profile: Path) -> dict[str, str]:
    """The profile's `default-resources` as name -> value text (list or mapping form)."""
    settings = yaml.safe_load(profile.read_text())
    resources = settings.get("default-resources")
    if isinstance(resources, dict):
        return {str(name): str(value) for name, value in resources.items()}
    if isinstance(resources, list):
        return dict(str(item).split("=", 1) for item in resources)
    raise AssertionError(f"{profile} has no default-resources list or mapping: {resources!r}")


def slurm_job_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (state, working directory) as squeue reports them (finished jobs included)."""
    result = subprocess.run(
        [
            "squeue",
            "--noheader",
            "--states=all",
            f"--jobs={','.join(job_ids)}",
            "--format=%i|%T|%Z",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    states = {}
    for line in result.stdout.splitlines():
        job_id, state, workdir = line.strip().split("|")
        states[job_id] = (state, workdir)
    return states


def wait_for_jobs(job_ids: list[str], timeout: float) -> dict[str, tuple[str, str]]:
    """Poll squeue until all of `job_ids` have finished (or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    states = slurm_job_states(job_ids)
    while time.monotonic() < deadline and any(
        states.get(job_id, ("PENDING", ""))[0] in UNFINISHED_STATES for job_id in job_ids
    ):
        time.sleep(0.5)
        states = slurm_job_states(job_ids)
    return states


@pytest.mark.integration
def test_cluster_runs_a_batch_job(slurm: SlurmCluster, tmp_path: Path) -> None:
    """sbatch on the test partition runs a job that sees its own SLURM_JOB_ID."""
    marker = tmp_path / "job_id.txt"
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--partition={slurm.partition}", f"--chdir={tmp_path}"]
        + ["--output=job.log", "--wrap", f'echo "$SLURM_JOB_ID" > {marker}'],
        capture_output=True,
        text=True,
    )
    assert submitted.returncode == 0, f"sbatch failed: {submitted.stderr}\n{slurm.log_tail()}"
    job_id = submitted.stdout.strip().split(";")[0]
    states = wait_for_jobs([job_id], timeout=60)
    assert states[job_id][0] == "COMPLETED", f"job {job_id}: {states}\n{slurm.log_tail()}"
    assert marker.read_text().strip() == job_id


@pytest.mark.integration
def test_slurm_profile_trains_and_evaluates_a_smoke_run(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    """`snakemake --profile profiles/slurm` prepares smoke MD17 ethanol data, trains Equiformer
    with DeNS and evaluates it, each step an sbatch job."""
    workdir = tmp_path / "repo"
    workdir.mkdir()
    copy_working_tree(workdir)
    profile = workdir / PROFILE
    assert profile.is_file(), f"{PROFILE} is missing from the working tree"
    settings = yaml.safe_load(profile.read_text())
    assert settings.get("executor") == "slurm", f"{PROFILE} does not use the slurm executor"
    resources = profile_default_resources(profile)
    assert {"slurm_partition", "slurm_account"} <= resources.keys(), (
        f"{PROFILE} default-resources must hold slurm_partition and slurm_account: {resources}"
    )
    resources["slurm_partition"] = slurm.partition
    if os.environ.get(ACCOUNT_ENV):
        resources["slurm_account"] = os.environ[ACCOUNT_ENV]
    else:
        del resources["slurm_account"]

    venv_bin = Path(sys.executable).parent
    snakemake = venv_bin / "snakemake"
    assert snakemake.is_file(), f"no snakemake next to {sys.executable}"
    command = [
        str(snakemake),
        "--profile",
        str(PROFILE.parent),
        "--config",
        "scale=smoke",
        "--default-resources",
        *(f"{name}={value}" for name, value in resources.items()),
        # No accounting database on the test cluster: poll squeue (MinJobAge=600) early.
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
        # The Slurm logs are the evidence of sbatch jobs; the plugin deletes successful ones.
        "--slurm-keep-successful-logs",
        str(TARGET),
    ]
    # Jobs inherit this environment (sbatch --export=ALL): the venv's programs, and the
    # copied `dens` package ahead of the one the venv has installed.
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")])),
    }
    start = time.monotonic()
    try:
        run = subprocess.run(
            command,
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=SNAKEMAKE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as timeout:
        partial = timeout.stderr.decode() if isinstance(timeout.stderr, bytes) else timeout.stderr
        pytest.fail(
            f"snakemake ran over {SNAKEMAKE_TIMEOUT_S} s (a status command that cannot see "
            f"finished jobs polls forever):\n{' '.join(command)}\n{(partial or '')[-8000:]}\n"
            f"{slurm.log_tail()}"
        )
    elapsed = time.monotonic() - start
    report = f"{' '.join(command)}\n{run.stdout[-4000:]}\n{run.stderr[-8000:]}"
    assert run.returncode == 0, f"snakemake failed after {elapsed:.0f} s:\n{report}"

    submissions = SUBMITTED.findall(run.stderr + run.stdout)
    assert submissions, f"no job was submitted through sbatch:\n{report}"
    job_ids = [job_id for job_id, _ in submissions]
    for job_id, log in submissions:
        assert Path(log).is_file(), f"Slurm log of job {job_id} missing: {log}"
        assert Path(log).is_relative_to(workdir / ".snakemake" / "slurm_logs"), log
    states = slurm_job_states(job_ids)
    for job_id in job_ids:
        state, job_workdir = states.get(job_id, ("not known to squeue", ""))
        assert state == "COMPLETED", f"Slurm job {job_id} is {state}\n{report}"
        assert Path(job_workdir).resolve() == workdir.resolve(), (job_id, job_workdir)

    assert len(job_ids) == 3, f"expected prepare, train and evaluate jobs: {submissions}"
    metrics = json.loads((workdir / TARGET).read_text())
    assert metrics["experiment"] == RUN and metrics["scale"] == "smoke", metrics
    assert metrics["n_test"] > 0 and metrics["forces_mae_meV_per_A"] > 0, metrics
    assert (workdir / f"results/smoke/runs/{RUN}/seed0/checkpoints/best.pt").is_file()
    data = workdir / DATA
    assert data.is_file() and data.stat().st_size > 0, f"{DATA} missing or empty\n{report}"
    db = ase.db.connect(data, type="aselmdb", readonly=True)
    assert db.count() > 0, f"{DATA} holds no structures"
    for row in db.select():
        assert row.formula == "C2H6O", f"row {row.id} of {DATA} is {row.formula}, not ethanol"
        assert row.forces.shape == (row.natoms, 3)
        assert isinstance(row.energy, float)
