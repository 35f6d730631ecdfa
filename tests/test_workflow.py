"""The Snakemake DAG: every paper-scale job planned, targets by name, bad input refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        [SNAKEMAKE, "-n", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )


def job_counts(output: str) -> dict[str, int]:
    stats = output.split("Job stats:")[1].split("Reasons:")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, flags=re.M)}


def test_paper_scale_dry_run_plans_every_job() -> None:
    result = snakemake("--profile", "profiles/slurm", "all_tables")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["download_archive"] == 19  # 11 OC20/OC22 archives + 8 MD17 npz
    assert counts["extract_archive"] == 11
    assert counts["prepare_md17"] == 8
    assert counts["prepare_oc20_2m"] == counts["prepare_oc20_all_md"] == counts["prepare_oc22"] == 1
    assert counts["train"] == counts["evaluate"] == 102  # 104 runs - 2 cited Table 2 baselines
    assert counts["relax"] == 3  # IS2RE: All+MD DeNS run, both OC22 runs
    assert counts["simulate"] == 8  # Table 10: 4 molecules x {Lmax=2, Lmax=2 + DeNS}
    assert counts["table"] == 11  # table1a, table1b, table2 ... table10
    assert "gres=gpu:8" in result.stdout and "nodes=16" in result.stdout  # 128-GPU All+MD run


def test_cited_baselines_are_added_by_a_config_switch() -> None:
    result = snakemake(
        "--profile", "profiles/slurm", "all_tables", "--config", "retrain_cited_baselines=true"
    )
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout)["train"] == 104
    assert "results/paper/" in result.stdout and "results/mini/" not in result.stdout


def test_one_ablation_is_a_target_of_its_own() -> None:
    target = (
        "results/mini/runs/md17-aspirin/equiformer-l2-dens-no-force-encoding/seed0/metrics.json"
    )
    result = snakemake("--profile", "profiles/local", "--forceall", target)  # outputs may exist
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout) == {"prepare_md17": 1, "train": 1, "evaluate": 1, "total": 3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "scale=huge"], "unknown scale 'huge'"),
        (
            ["results/mini/runs/md17-aspirin/equiformer-l9/seed0/metrics.json"],
            "md17-aspirin/equiformer-l9",
        ),
        (["--config", "seeds=[-1]"], "seeds.0: -1"),
        (["--config", "seed=1"], "the option is now seeds"),
    ],
)
def test_bad_input_stops_the_dag_with_a_named_error(args: list[str], message: str) -> None:
    result = snakemake("--profile", "profiles/local", *args)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
