"""Reruns through Snakemake never get stuck, and seeds never overwrite each other.

Each path a user takes on the second day, on a copy of the repository at the smoke scale: a
forced rerun, a touched input, regenerated data, a second seed, and a training job stopped by
SIGTERM during its last epoch. A run resumes only when it was started with the same experiment,
data and code; otherwise the previous run is moved aside, never deleted, and the log says so.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from pipeline_copy import copy_repository, environment, snakemake, snakemake_command

pytestmark = pytest.mark.integration

EXPERIMENT = "md17-ethanol/equiformer-l2"
RUN = f"results/smoke/runs/{EXPERIMENT}/seed0"
TRAIN_JOB = f"train {EXPERIMENT} seed 0:"  # the train rule's message when its job runs
TARGET = f"{RUN}/metrics.json"
LOG = f"results/smoke/logs/train/{EXPERIMENT}/seed0.log"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_repository(tmp_path_factory.mktemp("reruns"))
    result = snakemake(root, "--profile", "profiles/local", TARGET, "--config", "scale=smoke")
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = snakemake(root, "--profile", "profiles/local", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def outputs_complete(root: Path, run_dir: str = RUN) -> None:
    for name in ("checkpoints/best.pt", "log.csv", "metrics.json"):
        assert (root / run_dir / name).is_file(), name


def test_forced_rerun_republishes_the_finished_run(pipeline: Path) -> None:
    run(pipeline, TARGET, "--forcerun", "train", "--config", "scale=smoke")
    outputs_complete(pipeline)
    log = (pipeline / LOG).read_text()
    assert "resuming" in log and "same experiment, data and code" in log
    assert not list((pipeline / RUN).parent.glob("seed0.previous-*"))


def test_touched_input_reruns_without_getting_stuck(pipeline: Path) -> None:
    """Snakemake ignores a touched input below 1 MB whose checksum is unchanged; the
    paper-scale splits are far larger, so the test lowers that limit to 0 bytes."""
    # a split folder's mtime is that of the timestamp file Snakemake keeps in it
    (pipeline / "results/smoke/data/md17-ethanol/train/.snakemake_timestamp").touch()
    result = run(pipeline, TARGET, "--max-checksum-file-size", "0", "--config", "scale=smoke")
    assert TRAIN_JOB in result.stdout + result.stderr
    outputs_complete(pipeline)


def test_a_changed_rule_reruns_without_getting_stuck(pipeline: Path) -> None:
    """Snakemake reruns a job whose shell command changed and deletes its outputs first."""
    rule = pipeline / "workflow/rules/train.smk"
    rule.write_text(rule.read_text().replace("--threads {threads}", "--threads 1"))
    result = run(pipeline, TARGET, "--config", "scale=smoke")
    assert TRAIN_JOB in result.stdout + result.stderr
    outputs_complete(pipeline)


def test_a_second_seed_leaves_the_first_alone(pipeline: Path) -> None:
    first = (pipeline / TARGET).read_bytes()
    seed1 = f"results/smoke/runs/{EXPERIMENT}/seed1/metrics.json"
    result = run(pipeline, seed1, "--config", "scale=smoke", "seeds=[0,1]")
    assert "prepare_md17" not in result.stdout + result.stderr  # training seeds keep the data
    assert (pipeline / TARGET).read_bytes() == first
    assert json.loads((pipeline / seed1).read_text())["seed"] == 1
    assert json.loads(first)["seed"] == 0


def test_regenerated_data_moves_the_old_run_aside_with_everything_it_held(pipeline: Path) -> None:
    """Snakemake deletes the train job's outputs (best.pt, log.csv, metrics.json) before the job
    that moves the run aside: the moved run still holds each of them, byte for byte, and every
    other file it had (without their second names, dens.runs.keep_outputs, the three would be
    missing)."""
    before = {
        path.relative_to(pipeline / RUN): path.read_bytes()
        for path in (pipeline / RUN).rglob("*")
        if path.is_file()
    }
    assert {"checkpoints/best.pt", "log.csv", "metrics.json"} <= {str(p) for p in before}
    result = run(pipeline, TARGET, "--config", "scale=smoke", "data_seed=7")
    assert "prepare_md17" in result.stdout + result.stderr
    outputs_complete(pipeline)
    (moved,) = (pipeline / RUN).parent.glob("seed0.previous-*")
    assert "provenance_sha256" in (moved / "MOVED_ASIDE.txt").read_text()
    for name, content in before.items():
        assert (moved / name).read_bytes() == content, name
    assert "moved the previous run to" in (pipeline / LOG).read_text()


def test_sigterm_in_the_last_epoch_then_rerun_finishes(pipeline: Path) -> None:
    """A scale whose training takes a few seconds per epoch; the training process is stopped
    with SIGTERM after its first of two epochs, and the next snakemake resumes and finishes."""
    smoke = yaml.safe_load((pipeline / "config/scales/smoke.yaml").read_text())
    smoke["data"]["md17"].update(n_train=320, stride=1)
    smoke["optim"]["md17"].update(epochs=2, batch_size=4)
    (pipeline / "config/scales/slow.yaml").write_text(yaml.safe_dump(smoke))
    target = TARGET.replace("smoke", "slow")
    log = pipeline / LOG.replace("smoke", "slow")
    process = subprocess.Popen(
        snakemake_command("--profile", "profiles/local", target, "--config", "scale=slow"),
        cwd=pipeline,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 600
    while not (log.is_file() and "epoch 1/2," in log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.2)
    trainer = subprocess.run(
        ["pgrep", "-f", f"dens train {EXPERIMENT} --scale slow"], capture_output=True, text=True
    ).stdout.split()
    assert trainer, "the training process was not found"
    for pid in trainer:
        subprocess.run(["kill", "-TERM", pid], check=False)
    assert process.wait(timeout=300) != 0  # the job stopped: Snakemake reports it failed
    stopped = log.read_text()
    assert "stopped by SIGTERM after epoch 1" in stopped and "resumes there" in stopped

    run(pipeline, target, "--config", "scale=slow")
    outputs_complete(pipeline, RUN.replace("smoke", "slow"))
    assert "resuming" in log.read_text()
