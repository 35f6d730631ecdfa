"""The Snakemake DAG: every paper-scale job planned, targets by name, bad input refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dens.models import PENDING_FAMILIES
from dens.pipeline.registry import load_registry

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
    """Every run a table reads, except cited baselines and runs of model families or stages not
    implemented yet (their cells say "not run"; dens.pipeline.tables.read.table_inputs)."""
    result = snakemake("--profile", "profiles/slurm", "all_tables")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    registry = load_registry({"scale": "paper"})
    cited = {"oc20-all-md/eqv2-31m", "oc20-all-md/eqv2-153m"}  # Table 2 baselines
    runs = [
        name
        for name, experiment in registry.experiments.items()
        if name not in cited
        and experiment["model"]["family"] not in PENDING_FAMILIES
        and experiment["model"]["family"] != "nequip"  # not in the paper: no table reads them
    ]
    oc = "equiformer_v2" not in PENDING_FAMILIES
    assert len(registry.experiments) == 104 + 16  # + NequIP with and without DeNS, 8 molecules
    assert counts["train"] == counts["evaluate"] == len(runs)
    with_test = [r for r in runs if registry.experiment(r)["dataset"] in ("oc20-all-md", "oc22")]
    assert counts.get("submission", 0) == len(with_test)  # All+MD DeNS run, both OC22 runs
    assert counts["relax"] == len(with_test)
    # Table 10: 4 molecules x {Lmax=2, Lmax=2 + DeNS}
    assert counts["simulate"] == 8
    assert counts["table"] == 11  # table1a, table1b, table2 ... table10
    assert counts["prepare_md17"] == 8
    # 11 OC20/OC22 archives, OC22's linear-reference file, 8 MD17 npz
    assert counts["download_archive"] == (20 if oc else 8)
    assert counts.get("extract_archive", 0) == (11 if oc else 0)
    if oc:
        assert counts["prepare_oc20_2m"] == counts["prepare_oc20_all_md"] == 1
        assert counts["prepare_oc22"] == 1
        # one job per group of an archive's source files: ceil(published frames / frames per
        # job), 3.54M frames in half of a 12 h conversion job (dens.data.oc_convert.
        # frames_per_job): S2EF-2M train 1 + 4 val (each dataset converts its own); All+MD
        # train 38 + MD 11 + 4 val + S2EF test 2 + IS2RE 1; OC22 3 + IS2RE 1 (no count published)
        assert counts["convert_group"] == 5 + 56 + 4
        assert "--group 37 --groups 38" in result.stdout
        assert "gres=gpu:8" in result.stdout and "nodes=16" in result.stdout  # 128-GPU All+MD


def test_the_smoke_scale_trains_the_md17_runs_of_its_molecules_only() -> None:
    """config/scales/smoke.yaml md17_molecules [aspirin, ethanol]: the default target plans
    their 2 x 11 MD17 runs (and Table 10's simulations of them) besides the 14 OC runs, not 8 x 11;
    Figure 5 still reads four molecules' datasets. A run of another molecule stays a target of
    its own. Fails where the setting is ignored (102 training jobs, 8 simulations)."""
    result = snakemake("--profile", "profiles/local", "--forceall", "--config", "scale=smoke")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert (counts["train"], counts["simulate"], counts["prepare_md17"]) == (14 + 2 * 11, 4, 4)
    trained = set(re.findall(r"train (md17-[a-z_]+)/", result.stdout))
    assert trained == {"md17-aspirin", "md17-ethanol"}
    target = "results/smoke/runs/md17-benzene/equiformer-l2/seed0/metrics.json"
    alone = snakemake(
        "--profile", "profiles/local", "--forceall", target, "--config", "scale=smoke"
    )
    assert alone.returncode == 0, alone.stderr
    assert job_counts(alone.stdout) == {"prepare_md17": 1, "train": 1, "total": 2}


def test_cited_baselines_are_added_by_a_config_switch() -> None:
    result = snakemake(
        "--profile", "profiles/slurm", "all_tables", "--config", "retrain_cited_baselines=true"
    )
    assert result.returncode == 0, result.stderr
    pending = sum(
        e["model"]["family"] in PENDING_FAMILIES
        for e in load_registry({"scale": "paper"}).experiments.values()
    )
    assert job_counts(result.stdout)["train"] == 104 - pending
    assert "results/paper/" in result.stdout and "results/mini/" not in result.stdout


def test_one_ablation_is_a_target_of_its_own() -> None:
    target = (
        "results/mini/runs/md17-aspirin/equiformer-l2-dens-no-force-encoding/seed0/metrics.json"
    )
    result = snakemake("--profile", "profiles/local", "--forceall", target)  # outputs may exist
    assert result.returncode == 0, result.stderr
    # mini: the training job scores its run too (evaluate_in_train_job)
    assert job_counts(result.stdout) == {"prepare_md17": 1, "train": 1, "total": 2}
    assert "--evaluate results/mini/data/md17-aspirin/test" in result.stdout
    paper = snakemake("--profile", "profiles/slurm", "--forceall", target.replace("mini", "paper"))
    assert paper.returncode == 0, paper.stderr
    counts = job_counts(paper.stdout)
    assert counts["train"] == counts["evaluate"] == 1 and "--evaluate" not in paper.stdout


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


def test_submission_file_is_a_target_of_its_own() -> None:
    target = "results/mini/runs/oc22/eqv2-dens-127m/seed0/test/submission.npz"
    result = snakemake("--profile", "profiles/local", "--forceall", target)
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts == {"prepare_oc22": 1, "train": 1, "submission": 1, "total": 3}
    assert "test/metrics.json" in result.stdout  # the job's second output


def test_oc_tables_need_no_run_that_cannot_exist_yet() -> None:
    """Runs of pending families and IS2RE relaxations are "not run" cells, not inputs of
    Tables 1-3."""
    result = snakemake("--profile", "profiles/local", "--forceall", "table1", "table2", "table3")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["table"] == 4
    assert counts["relax"] == 3
    eqv2 = "equiformer_v2" not in PENDING_FAMILIES
    escn = 2 if "escn" not in PENDING_FAMILIES else 0  # Table 1(a)'s eSCN rows
    assert ("escn" in result.stdout) == bool(escn)
    assert counts.get("submission", 0) == (3 if eqv2 else 0)  # All+MD DeNS, two OC22 runs
    # Tables 1(a), 1(b), 2, 3
    assert counts.get("train", 0) == (6 + 3 + 1 + 2 if eqv2 else 0) + escn


def test_oc22_training_jobs_read_the_published_linear_reference_at_the_paper_scale() -> None:
    """optim.energy_reference_file (fairchem's configs/oc22/linref/oc22_linfit_coeffs.npz, as the
    official OC22 config's lin_ref) is downloaded and given to the OC22 training jobs; at the
    CPU scales the scale sets it null (fitted on the generated data) and no job downloads it."""
    npz = "results/downloads/oc22_linfit_coeffs.npz"
    target = "results/paper/runs/oc22/eqv2-dens-127m/seed0/checkpoints/best.pt"
    result = snakemake("--profile", "profiles/slurm", target)
    assert result.returncode == 0, result.stderr
    train = result.stdout[result.stdout.index("train oc22/eqv2-dens-127m seed 0") :]
    reason = train.splitlines()[1]  # the job's inputs a job before it writes
    assert reason.startswith("Reason:") and npz in reason, train
    assert f"python -m dens data download oc22_linfit_coeffs --out {npz}" in result.stdout
    mini = snakemake("--profile", "profiles/local", target.replace("paper", "mini"))
    assert mini.returncode == 0, mini.stderr
    assert npz not in mini.stdout


def test_published_target_imports_and_scores_the_checkpoints_apart_from_trained_runs() -> None:
    """Target `published` (config/published.yaml): downloads into the scale's own folder from
    the mirror, imports each checkpoint under results/{scale}/published/, scores it, relaxes the
    IS2RE validation splits of All+MD and OC22, writes their S2EF test submissions and the
    table; the OC22 import gets the downloaded linear reference. At the paper scale the
    downloads are results/downloads and the owners' URLs."""
    mirror = "http://127.0.0.1:9/copy"
    result = snakemake(
        "--profile", "profiles/local", "--forceall", "published", "--config", "scale=smoke",
        f"mirror={mirror}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout) == {
        "download_archive": 5,  # four checkpoints and OC22's linear reference
        "prepare_oc20_2m": 1,
        "prepare_oc20_all_md": 1,
        "prepare_oc22": 1,
        "import_checkpoint": 4,
        "evaluate_published": 4,
        "relax_published": 2,
        "submission_published": 2,
        "published_table": 1,
        "published": 1,
        "total": 22,
    }
    out = result.stdout
    assert f"--out results/smoke/downloads/eq2_dens_oc22.pt --mirror {mirror}" in out
    assert "--energy-reference-file results/smoke/downloads/oc22_linfit_coeffs.npz" in out
    relax = "--run-dir results/smoke/published/eq2_dens_oc22 results/smoke/data/oc22/is2re_val_id"
    assert relax in out and "results/smoke/runs/" not in out
    paper = snakemake(
        "--profile", "profiles/slurm", "results/paper/published/eq2_dens_oc22/metrics.json"
    )
    assert paper.returncode == 0, paper.stderr
    assert "--out results/downloads/eq2_dens_oc22.pt > " in paper.stdout


def test_the_jobs_that_read_every_seed_are_given_the_configured_seeds() -> None:
    """Tables, curves and the report average the runs of every configured seed. Before, their
    jobs were not told the seeds of --config: `dens table` read config.yaml's [0] and averaged
    seed 0 alone while the DAG trained seeds 0 and 1. Training jobs keep their one --seed, so a
    second seed reruns none of the first seed's jobs."""
    result = snakemake(
        "--profile", "profiles/local", "--forceall", "--config", "scale=smoke", "seeds=[0,1]"
    )
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if "python -m dens " in line]
    for command in ("table", "curves", "report"):
        jobs = [line for line in commands if f"python -m dens {command} " in line]
        assert jobs and all("--seeds 0 1 " in line for line in jobs), command
    assert not any("--seeds" in line for line in commands if "python -m dens train " in line)
