"""The pipeline on a real Slurm cluster: the Slurm profile submits real jobs through sbatch, a
multi-GPU training is launched with srun, and a run longer than the time limit continues in
requeued jobs.

The `slurm` fixture (conftest.py) provides the cluster: an existing one, or a one-node cluster on
localhost that it installs and starts as root (with a 1-minute partition). One module, so that
`make test` (pytest-xdist, `--dist loadfile`) runs every test that uses the cluster on the worker
that holds it.

- The pipeline test runs `snakemake --profile profiles/slurm` on a copy of the working tree at
  scale `smoke`, changing only the partition and account (the user-editable
  `default-resources`) and the status polling, and checks that every job went through sbatch and
  that the MD17 data it asked for is a readable aselmdb.
- Data-parallel training launched the way the Slurm profile launches a multi-GPU job: `srun` with
  one task per device (workflow/rules/train.smk), here two CPU tasks. dens.distributed reads the
  step's SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID and finds the rendezvous host with
  `scontrol show hostnames`.
- A training run longer than the partition's time limit finishes through requeued continuations
  of its Slurm job (dens.pipeline.slurm), through `snakemake --profile profiles/slurm`, and ends
  exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import csv
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
import torch
import yaml

from dens.checkpoint import load_checkpoint
from dens.pipeline.rehearsal.slurm_cluster import SlurmCluster

pytestmark = pytest.mark.integration


REPO = Path(__file__).resolve().parents[2]
PROFILE = Path("profiles/slurm/config.yaml")
RUN = "md17-ethanol/equiformer-l2-dens"
TARGET = Path(f"results/smoke/runs/{RUN}/seed0/metrics.json")
DATA = Path("results/smoke/data/md17-ethanol/train/shard-000000.aselmdb")  # the split's one shard
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
    with DeNS and evaluates it, each step an sbatch job (the scale's evaluate_in_train_job is
    switched off in the copy, so the evaluate rule, the paper scale's way, runs too)."""
    workdir = tmp_path / "repo"
    workdir.mkdir()
    copy_working_tree(workdir)
    smoke = workdir / "config" / "scales" / "smoke.yaml"
    text = smoke.read_text()
    assert "\nevaluate_in_train_job: true\n" in text, f"{smoke} no longer scores runs in training"
    smoke.write_text(text.replace("evaluate_in_train_job: true", "evaluate_in_train_job: false"))
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


# -- srun: one training process per task ------------------------------------------------------
TESTS = Path(__file__).resolve().parents[1]
WORKER = f"""
import sys, torch
sys.path.insert(0, {str(TESTS)!r})
torch.set_num_threads(1)
from toy_model import build_toy_model, make_emt_dataset, toy_experiment
from dens.train import train

data = make_emt_dataset(24, seed=0)
train(toy_experiment(epochs=1, batch_size=4), data[:16], data[16:], sys.argv[1], build_toy_model,
      progress=False)
"""


def test_two_srun_tasks_train_one_run(slurm: SlurmCluster, tmp_path: Path) -> None:
    command = ["srun", f"--partition={slurm.partition}", "--ntasks=2", "--cpus-per-task=1"]
    command += ["--kill-on-bad-exit=1", sys.executable, "-c", WORKER, str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:] + slurm.log_tail()
    with open(tmp_path / "run" / "log.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert (row["world_size"], row["device"], row["step"]) == ("2", "cpu", "4")
    assert len(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["rng"]) == 2


# -- a run longer than the time limit -------------------------------------------------------------
SCALE = "continuation"  # smoke, with as many MD17 epochs as TRAINING_S of training takes here
CALIBRATION_EPOCHS = 10
# A one-minute job trains for at most 40 s (it stops 15 s before its limit, and starting takes
# seconds), so 90 s of training steps (plus validation) at the calibration's fastest epoch need
# two job starts even if the Slurm job runs twice as fast as that. A fixed epoch count did not:
# 200 epochs took over a minute on a loaded 2-core machine and under 40 s on a faster one; nor
# did 60 s at the calibration's median epoch: calibrated while other tests loaded both cores
# (0.67 s per epoch), the Slurm run took 0.3 s per epoch and finished in one job.
TRAINING_S = 90.0
MAX_JOB_HOURS = "0.017"  # one minute, the partition's limit
CHECKPOINT = Path(f"results/{SCALE}/runs/{RUN}/seed0/checkpoints/best.pt")
JOB_LOG = Path(f"results/{SCALE}/logs/train/{RUN}/seed0.log")
TIMING = {"train_samples_per_s", "epoch_time_s"}  # log.csv columns that differ between runs
STARTS = re.compile(r"Slurm job (\d+), start (\d+): began")
STOPS = re.compile(r"stopped by the job's time limit after epoch (\d+) \+ (\d+) batches")
TIMEOUT_S = 1200


def write_scale(root: Path, epochs: int) -> None:
    """config/scales/continuation.yaml: the smoke scale with MD17 runs of `epochs` epochs."""
    smoke = yaml.safe_load((root / "config/scales/smoke.yaml").read_text())
    smoke["description"] = f"smoke with {epochs}-epoch MD17 runs (Slurm continuation test)"
    smoke["optim"]["md17"]["epochs"] = epochs
    (root / f"config/scales/{SCALE}.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))


def local_training(root: Path, run_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start `dens train RUN` at scale SCALE on the data the pipeline prepared, outside Slurm;
    its output goes to run_dir/stdout.log."""
    data = root / "results" / SCALE / "data" / "md17-ethanol"
    command = [sys.executable, "-m", "dens", "train", RUN, "--scale", SCALE, "--threads", "1"]
    command += ["--train", str(data / "train"), "--val", str(data / "val")]
    run_dir.mkdir(parents=True)
    with open(run_dir / "stdout.log", "wb") as output:
        return subprocess.Popen(
            [*command, "--run-dir", str(run_dir)],
            cwd=root,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def finish(training: subprocess.Popen[bytes], run_dir: Path) -> None:
    """Wait for a local_training process; fail with its output if it failed."""
    returncode = training.wait(timeout=TIMEOUT_S)
    output = (run_dir / "stdout.log").read_text(errors="replace")
    assert returncode == 0, f"dens train into {run_dir} failed:\n{output[-3000:]}"


def calibrated_epochs(root: Path, run_dir: Path, env: dict[str, str]) -> int:
    """Epochs that take about TRAINING_S of training on this machine: the smoke MD17 data is
    prepared (locally, as the later Slurm run would), CALIBRATION_EPOCHS epochs are trained and
    timed by their log.csv epoch_time_s, the fastest epoch counting (a run sized on a slow
    moment of a loaded machine may finish in one job; a longer one only adds job starts)."""
    write_scale(root, CALIBRATION_EPOCHS)
    data = Path(f"results/{SCALE}/data/md17-ethanol/provenance.json")
    subprocess.run(
        ["snakemake", "--cores", "1", "--config", f"scale={SCALE}", "--", str(data)],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        timeout=TIMEOUT_S,
    )
    finish(local_training(root, run_dir, env), run_dir)
    with open(run_dir / "log.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["kind"] == "epoch"]  # not mid-epoch
    seconds = [float(row["epoch_time_s"]) for row in rows]
    fastest = min(seconds)  # this machine's speed when nothing else loads it
    return max(CALIBRATION_EPOCHS, round(TRAINING_S / fastest))


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
    resources = profile_default_resources(workdir / PROFILE)
    resources["slurm_partition"] = slurm.short_partition
    del resources["slurm_account"]
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")])),
    }
    epochs = calibrated_epochs(workdir, tmp_path / "calibration", env)
    print(f"{epochs} epochs: about {TRAINING_S:.0f} s of training")
    write_scale(workdir, epochs)
    # the uninterrupted run to compare with trains while the Slurm job waits for its requeues
    reference = tmp_path / "uninterrupted"
    uninterrupted = local_training(workdir, reference, env)
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
    print(history)  # the job's starts and stops (pytest -s shows them)
    starts = STARTS.findall(history)
    assert len(starts) >= 2, f"the run finished in one job: {history}\n{job_log[-3000:]}"
    assert len({job for job, _ in starts}) == 1, starts  # one Slurm job, requeued
    assert [int(start) for _, start in starts] == list(range(1, len(starts) + 1))
    stops = STOPS.findall(history)
    assert len(stops) == len(starts) - 1, history
    # the last job's log shows the earlier starts and stops, and where it resumed
    assert all(line in job_log for line in history.splitlines()[:-1]), job_log[-3000:]
    epoch, batches = stops[-1]
    assert f"{epoch} epochs and {batches} batches done, same experiment" in job_log

    finish(uninterrupted, reference)
    continued = torch.load(workdir / CHECKPOINT, weights_only=True)
    straight = torch.load(reference / "checkpoints" / "best.pt", weights_only=True)
    assert continued["epoch"] == straight["epoch"]
    for key, tensor in straight["model"].items():
        assert torch.equal(continued["model"][key], tensor), key
    assert read_log(workdir / CHECKPOINT.parents[1] / "log.csv") == read_log(reference / "log.csv")
