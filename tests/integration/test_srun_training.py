"""Data-parallel training launched the way the Slurm profile launches a multi-GPU job: `srun`
with one task per device (workflow/rules/train.smk), here two CPU tasks on a real one-node Slurm
cluster. dens.distributed reads the step's SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID and
finds the rendezvous host with `scontrol show hostnames`."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from dens.checkpoint import load_checkpoint

from .slurm_cluster import SlurmCluster

# One worker holds the session's Slurm cluster: every test that uses it runs there (xdist).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("slurm")]

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
