"""A training run longer than the partition's time limit finishes through requeued continuations
of its Slurm job (dens.slurm), run through `snakemake --profile profiles/slurm` on the real
one-node cluster, and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from .slurm_cluster import SlurmCluster
from .test_slurm_profile import PROFILE, copy_working_tree, profile_default_resources

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("slurm")]

RUN = "md17-ethanol/equiformer-l2-dens"
SCALE = "continuation"  # smoke, but 200 epochs: about 2-3 minutes of training on a busy machine
EPOCHS = 200
MAX_JOB_HOURS = "0.017"  # one minute, the partition's limit
CHECKPOINT = Path(f"results/{SCALE}/runs/{RUN}/seed0/checkpoints/best.pt")
JOB_LOG = Path(f"results/{SCALE}/logs/train/{RUN}/seed0.log")
TIMING = {"train_samples_per_s", "epoch_time_s"}  # log.csv columns that differ between runs
STARTS = re.compile(r"Slurm job (\d+), start (\d+): began")
STOPS = re.compile(r"stopped by the job's time limit after epoch (\d+) \+ (\d+) batches")
TIMEOUT_S = 1200


def write_scale(root: Path) -> None:
    """config/scales/continuation.yaml: the smoke scale with MD17 runs of EPOCHS epochs."""
    smoke = yaml.safe_load((root / "config/scales/smoke.yaml").read_text())
    smoke["description"] = f"smoke with {EPOCHS}-epoch MD17 runs (Slurm continuation test)"
    smoke["optim"]["md17"]["epochs"] = EPOCHS
    (root / f"config/scales/{SCALE}.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))


def read_log(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return [
            {key: value for key, value in row.items() if key not in TIMING}
            for row in csv.DictReader(handle)
        ]


@pytest.mark.integration
def test_a_run_longer_than_the_time_limit_continues_in_requeued_jobs(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    if slurm.short_partition is None:
        pytest.skip("the cluster was not started by the tests: no 1-minute partition")
    workdir = tmp_path / "repo"
    workdir.mkdir()
    copy_working_tree(workdir)
    write_scale(workdir)
    resources = profile_default_resources(workdir / PROFILE)
    resources["slurm_partition"] = slurm.short_partition
    del resources["slurm_account"]
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")])),
    }
    command = [
        str(venv_bin / "snakemake"),
        "--profile",
        str(PROFILE.parent),
        "--default-resources",
        *(f"{name}={value}" for name, value in resources.items()),
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--slurm-keep-successful-logs",
        str(CHECKPOINT),
        "--config",
        f"scale={SCALE}",
        f"max_job_hours={MAX_JOB_HOURS}",
    ]
    dry = subprocess.run(
        [*command[:1], "-n", *command[1:]], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert "asks 1 min per job (max_job_hours=0.017)" in dry.stdout + dry.stderr, (
        dry.stdout[-3000:] + dry.stderr
    )

    run = subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    report = f"{' '.join(command)}\n{run.stdout[-4000:]}\n{run.stderr[-6000:]}\n"
    job_log = (workdir / JOB_LOG).read_text() if (workdir / JOB_LOG).is_file() else ""
    assert run.returncode == 0, report + job_log[-6000:] + slurm.log_tail()

    history = (workdir / CHECKPOINT.parents[1] / "slurm_starts.log").read_text()
    starts = STARTS.findall(history)
    assert len(starts) >= 2, f"the run finished in one job: {history}\n{job_log[-3000:]}"
    assert len({job for job, _ in starts}) == 1, starts  # one Slurm job, requeued
    assert [int(start) for _, start in starts] == list(range(1, len(starts) + 1))
    stops = re.findall(
        r"stopped by the job's time limit after epoch (\d+) \+ (\d+) batches", history
    )
    assert len(stops) == len(starts) - 1, history
    # the last job's log shows the earlier starts and stops, and where it resumed
    assert all(line in job_log for line in history.splitlines()[:-1]), job_log[-3000:]
    epoch, batches = stops[-1]
    assert f"{epoch} epochs and {batches} batches done, same experiment" in job_log

    reference = tmp_path / "uninterrupted"
    data = workdir / "results" / SCALE / "data" / "md17-ethanol"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dens",
            "train",
            RUN,
            "--scale",
            SCALE,
            "--threads",
            "1",
            "--train",
            str(data / "train.aselmdb"),
            "--val",
            str(data / "val.aselmdb"),
            "--run-dir",
            str(reference),
        ],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        timeout=TIMEOUT_S,
    )
    continued = torch.load(workdir / CHECKPOINT, weights_only=True)
    straight = torch.load(reference / "checkpoints" / "best.pt", weights_only=True)
    assert continued["epoch"] == straight["epoch"]
    for key, tensor in straight["model"].items():
        assert torch.equal(continued["model"][key], tensor), key
    assert read_log(workdir / CHECKPOINT.parents[1] / "log.csv") == read_log(reference / "log.csv")
