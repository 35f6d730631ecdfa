"""Tests of the training engine (dens.train) and checkpoints (dens.checkpoint) with the toy
force field on EMT-labelled clusters: learning, logs, exact resume after a crash and after
SIGTERM (with the per-batch DeNS decision too), the preemption exit status, NaN handling and
weights-only checkpoints; the loss of a batch given its draw; the normaliser from the config
and a linear-reference file; the weight-decay groups of the official trainers."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from toy_model import build_toy_model, make_emt_dataset, toy_experiment

from dens.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from dens.data.batch import Batch, Data
from dens.denoising import Corruption, DeNSSettings
from dens.errors import ConfigError
from dens.layout import RunDirectory
from dens.models.equiformer_v2.import_fairchem import load_fairchem_checkpoint as load_eqv2
from dens.models.escn.import_fairchem import load_fairchem_checkpoint as load_escn
from dens.normalization import NUM_ELEMENTS, Normalizer
from dens.stopping import STOPPED_EXIT_CODE, TIME_LIMIT, StopRequested
from dens.train import NonFiniteLossError, train
from dens.training.labels import training_normalizer
from dens.training.log import LOG_COLUMNS
from dens.training.losses import batch_loss, draw_corruption, loss_terms
from dens.training.optimizer import build_optimizer, update_ema, weight_decay_exempt
from dens.training.schedule import Schedule, epoch_batches, learning_rate
from dens.training.settings import LabelSettings, OptimSettings, loss_settings


def optim_settings(optim: dict[str, Any]) -> OptimSettings:
    """The settings of the toy experiment's optim with the keys of ``optim`` replaced."""
    return OptimSettings.from_optim(toy_experiment()["optim"] | optim)


EXPERIMENT = toy_experiment(dens=True, epochs=4, lr=3e-2, energy_reference="linear")
N_TRAIN = 32
BATCHES_PER_EPOCH = N_TRAIN // EXPERIMENT["optim"]["batch_size"]
NORMALIZER_READS = N_TRAIN  # fit_normalizer reads each training structure once
TIMING_COLUMNS = {"epoch_time_s", "train_samples_per_s"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> tuple[list[Data], list[Data]]:
    structures = make_emt_dataset(40, seed=0)
    return structures[:N_TRAIN], structures[N_TRAIN:]


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory) -> Path:
    """The reference: EXPERIMENT trained without interruption."""
    run_dir = tmp_path_factory.mktemp("straight")
    train(EXPERIMENT, *data, run_dir, build_toy_model, progress=False)
    return run_dir


class Interrupting:
    """A training set that runs `action` when its `at`-th item is read (counting all reads)."""

    def __init__(self, items: list[Data], at: int, action: Callable[[], None]) -> None:
        self.items, self.at, self.action, self.reads = items, at, action, 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Data:
        self.reads += 1
        if self.reads == self.at:
            self.action()
        return self.items[index]


def crash() -> None:
    raise RuntimeError("simulated node failure")


def sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def read_log(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    """Exact equality of nested checkpoint contents (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where} keys {set(a) ^ set(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def without_timing(state: dict[str, Any]) -> dict[str, Any]:
    history = [
        {k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in state["history"]
    ]
    return {k: v for k, v in state.items() if k != "timing"} | {"history": history}


def assert_same_run(run_a: Path, run_b: Path) -> None:
    """Final weights, EMA, optimiser, RNG states, best checkpoint and log are identical."""
    last_a = load_checkpoint(run_a / "checkpoints" / "last.pt")
    last_b = load_checkpoint(run_b / "checkpoints" / "last.pt")
    assert_identical(without_timing(last_a), without_timing(last_b), "last.pt")
    assert_identical(
        load_checkpoint(run_a / "checkpoints" / "best.pt"),
        load_checkpoint(run_b / "checkpoints" / "best.pt"),
        "best.pt",
    )
    rows_a, rows_b = read_log(run_a), read_log(run_b)
    assert [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows_b
    ]


def test_learns_and_writes_log_and_weights_only_checkpoints(straight_run, data):
    rows = read_log(straight_run)
    assert list(rows[0]) == list(LOG_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in rows] == [8, 16, 24, 32]
    optim = EXPERIMENT["optim"]
    # Warm-up ends at the end of epoch 1 (lr reached), cosine ends exactly at min_lr.
    assert float(rows[0]["lr"]) == pytest.approx(optim["lr"])
    assert float(rows[-1]["lr"]) == optim["min_lr"]
    # Linear decay of lambda_DeNS per epoch (App. D.2, official MD17 code: coefficient *
    # (1 - epoch / epochs)); the DeNS loss term is logged.
    lambdas = [float(r["lambda_dens"]) for r in rows]
    coefficient = EXPERIMENT["dens"]["coefficient"]
    assert lambdas == pytest.approx([coefficient * (1 - e / 4) for e in range(4)])
    assert float(rows[0]["train_dens_loss"]) > 0.0

    # It learned: validation force MAE well below the zero-force baseline and improving.
    val_forces = [float(r["val_forces_mae_meV_per_A"]) for r in rows]
    val_set = data[1]
    zero_baseline = 1000 * float(torch.cat([d.forces for d in val_set]).abs().mean())
    assert val_forces[-1] < 0.9 * zero_baseline
    assert val_forces[-1] < val_forces[0]

    for name in ("last.pt", "best.pt"):
        state = torch.load(straight_run / "checkpoints" / name, weights_only=True)
        assert state["format_version"] == FORMAT_VERSION and state["kind"] == name[:-3]
    last = torch.load(straight_run / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(straight_run / "checkpoints" / "best.pt", weights_only=True)
    assert (last["epoch"], last["batch_in_epoch"], last["step"]) == (4, 0, 32)
    assert best["weights"] == "ema"
    best_epoch = min(range(4), key=lambda k: val_forces[k]) + 1
    assert best["epoch"] == last["best"]["epoch"] == best_epoch
    assert best["val"]["forces_mae_meV_per_A"] == val_forces[best_epoch - 1]
    assert last["normalizer"]["std"] > 0 and last["rng"][0]["dens"].dtype == torch.uint8


def test_max_steps_ends_the_run_there_with_the_paper_schedule(straight_run, data, tmp_path):
    """optim.max_steps (the rehearsal's cap) ends the run after that many steps, mid-epoch,
    validated and published as at an epoch's end; the lr follows the whole run's schedule (the
    straight run's lr at the same step), and a cap past the run's steps changes nothing."""
    capped = EXPERIMENT | {"optim": EXPERIMENT["optim"] | {"max_steps": 11}}
    result = train(capped, *data, tmp_path / "capped", build_toy_model, progress=False)
    assert (result.steps, result.epochs) == (11, 2)
    rows = read_log(tmp_path / "capped")
    assert [int(r["step"]) for r in rows] == [8, 11]
    assert rows[0]["lr"] == read_log(straight_run)[0]["lr"]  # epoch 1 as the straight run's
    schedule = Schedule.of(optim_settings({"max_steps": 11}), N_TRAIN)
    assert float(rows[1]["lr"]) == learning_rate(10, schedule_settings(capped), 8)
    assert schedule.finished(1, 11) and not schedule.finished(1, 10)
    assert (tmp_path / "capped" / "checkpoints" / "best.pt").is_file()
    last = torch.load(tmp_path / "capped" / "checkpoints" / "last.pt", weights_only=True)
    assert (last["epoch"], last["step"]) == (2, 11)
    uncapped = Schedule.of(optim_settings({"max_steps": 1000}), N_TRAIN)
    assert not uncapped.finished(3, 24) and uncapped.finished(4, 32)


def schedule_settings(experiment: dict[str, Any]) -> OptimSettings:
    return OptimSettings.from_optim(experiment["optim"])


@pytest.mark.parametrize("written_before_data_parallelism", [False, True])
def test_resume_after_crash_matches_uninterrupted_run(
    straight_run, data, tmp_path, written_before_data_parallelism
):
    train_set, val_set = data
    # Fail on the 3rd batch of epoch 3: last.pt then holds the end of epoch 2.
    at = NORMALIZER_READS + 2 * N_TRAIN + 2 * 4 + 1
    with pytest.raises(RuntimeError, match="simulated node failure"):
        train(
            EXPERIMENT,
            Interrupting(train_set, at, crash),
            val_set,
            tmp_path,
            build_toy_model,
            progress=False,
        )
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"]) == (2, 0)
    assert len(read_log(tmp_path)) == 2
    if written_before_data_parallelism:  # one RNG dict, no gradient scaler, shorter log rows
        state["rng"] = state["rng"][0]
        del state["grad_scaler"]
        for row in state["history"]:
            for column in ("world_size", "device", "device_name", "mixed_precision"):
                del row[column]
        save_checkpoint(state, tmp_path / "checkpoints" / "last.pt")

    result = train(EXPERIMENT, train_set, val_set, tmp_path, build_toy_model, progress=False)
    assert (result.epochs, result.steps) == (4, 32)
    if written_before_data_parallelism:  # the two old rows keep their empty device columns
        rows = read_log(tmp_path)
        assert [row["world_size"] for row in rows] == ["", "", "1", "1"]
        resumed = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
        straight = load_checkpoint(straight_run / "checkpoints" / "last.pt")
        for key in ("model", "ema", "optimizer", "rng"):
            assert_identical(resumed[key], straight[key], key)
        return
    assert_same_run(straight_run, tmp_path)


def test_a_run_resumes_only_with_as_many_processes(straight_run, data, tmp_path):
    """Each process draws its own DeNS corruption (last.pt keeps every process's RNG states):
    a run written by two processes is not resumed by one."""
    run_dir = copy_run(straight_run, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["rng"] = state["rng"] * 2
    save_checkpoint(state, last)
    with pytest.raises(ConfigError, match="written by 2 training process.*resumed by 1"):
        train(EXPERIMENT, *data, run_dir, build_toy_model, progress=False)


def test_sigterm_saves_mid_epoch_and_resume_matches_uninterrupted_run(straight_run, data, tmp_path):
    train_set, val_set = data
    # SIGTERM while loading the 4th batch of epoch 2: that step finishes, then last.pt is saved.
    at = NORMALIZER_READS + N_TRAIN + 3 * 4 + 2
    with pytest.raises(StopRequested) as stopped:
        train(
            EXPERIMENT,
            Interrupting(train_set, at, sigterm),
            val_set,
            tmp_path,
            build_toy_model,
            progress=False,
        )
    assert stopped.value.code == STOPPED_EXIT_CODE == 75
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 4, 12)
    assert len(read_log(tmp_path)) == 1

    train(EXPERIMENT, train_set, val_set, tmp_path, build_toy_model, progress=False)
    assert_same_run(straight_run, tmp_path)


def test_stop_at_a_time_saves_and_resume_matches_uninterrupted_run(straight_run, data, tmp_path):
    """``stop_at`` (how a Slurm job ends itself before its time limit) stops like SIGTERM: the
    first step finishes, last.pt is saved, and the resumed run equals the uninterrupted one."""
    train_set, val_set = data
    with pytest.raises(StopRequested) as stopped:
        train(EXPERIMENT, *data, tmp_path, build_toy_model, progress=False, stop_at=time.time())
    assert stopped.value.code == STOPPED_EXIT_CODE and stopped.value.reason == TIME_LIMIT
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (0, 1, 1)

    train(EXPERIMENT, train_set, val_set, tmp_path, build_toy_model, progress=False)
    assert_same_run(straight_run, tmp_path)


def test_sigterm_exit_status_of_a_process(data, tmp_path):
    """A real process gets SIGTERM from outside mid-training and exits with status 75."""
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        torch.set_num_threads(1)
        from toy_model import build_toy_model, make_emt_dataset, toy_experiment
        from dens.train import train

        class Slow:
            def __init__(self, items):
                self.items, self.reads = items, 0
            def __len__(self):
                return len(self.items)
            def __getitem__(self, i):
                self.reads += 1
                if self.reads == {NORMALIZER_READS + 6}:
                    print("training", flush=True)
                    import time; time.sleep(3)  # the parent's SIGTERM arrives meanwhile
                return self.items[i]

        data = make_emt_dataset(40, seed=0)
        train(toy_experiment(epochs=2), Slow(data[:32]), data[32:], sys.argv[1], build_toy_model,
              progress=False)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "training"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == STOPPED_EXIT_CODE
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 2)


def test_nan_label_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(data, tmp_path):
    train_set, val_set = data
    at = NORMALIZER_READS + 2 * N_TRAIN + 1  # first read of epoch 3
    with pytest.raises(RuntimeError, match="simulated node failure"):
        train(
            EXPERIMENT,
            Interrupting(train_set, at, crash),
            val_set,
            tmp_path,
            build_toy_model,
            progress=False,
        )
    last, best = (
        RunDirectory(tmp_path).checkpoint("last"),
        RunDirectory(tmp_path).best_epoch_checkpoint,
    )
    last_bytes, best_bytes = last.read_bytes(), best.read_bytes()

    poisoned = list(train_set)
    poisoned[5] = poisoned[5].clone()
    poisoned[5].energy = torch.tensor([math.nan])
    with pytest.raises(
        NonFiniteLossError,
        match=r"at epoch 3 \(1-based\), batch \d+ of the "
        r"epoch, global step \d+; .*last\.pt keeps the last good state",
    ):
        train(EXPERIMENT, poisoned, val_set, tmp_path, build_toy_model, progress=False)
    assert last.read_bytes() == last_bytes and best.read_bytes() == best_bytes
    state = load_checkpoint(last)
    assert state["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert len(read_log(tmp_path)) == 2


def copy_run(source: Path, run_dir: Path) -> Path:
    shutil.copytree(source, run_dir)
    return run_dir


def test_a_changed_experiment_or_dataset_moves_the_old_run_aside(straight_run, data, tmp_path):
    """A run resumes only if started with the same experiment, data and code; otherwise the old
    run is moved aside (never deleted) and training starts afresh, saying so."""
    run_dir = copy_run(straight_run, tmp_path / "seed0")
    old_last = (run_dir / "checkpoints" / "last.pt").read_bytes()
    changed = toy_experiment(dens=True, epochs=4, lr=1e-3, energy_reference="linear")
    result = train(changed, *data, run_dir, build_toy_model, progress=False)
    assert result.epochs == 4 and len(read_log(run_dir)) == 4
    (moved,) = tmp_path.glob("seed0.previous-*")
    assert (moved / "checkpoints" / "last.pt").read_bytes() == old_last
    reason = (moved / "MOVED_ASIDE.txt").read_text()
    assert "run.experiment.optim.lr: 0.03 in last.pt, 0.001 now" in reason
    assert (run_dir / "checkpoints" / "best.pt").is_file()

    train_set, val_set = data
    train(changed, train_set[:31], val_set, run_dir, build_toy_model, progress=False)
    assert "run.train_set.structures: 32 in last.pt, 31 now" in "".join(
        path.read_text() for path in tmp_path.glob("seed0.previous-*/MOVED_ASIDE.txt")
    )


def test_a_finished_run_asked_again_republishes_its_outputs(straight_run, data, tmp_path):
    """Snakemake deletes a job's outputs before a rerun (--forcerun, a touched input, a rule
    change): the finished run then writes best.pt and log.csv again without training."""
    run_dir = copy_run(straight_run, tmp_path / "run")
    best = (run_dir / "checkpoints" / "best.pt").read_bytes()
    log = (run_dir / "log.csv").read_bytes()
    (run_dir / "checkpoints" / "best.pt").unlink()
    (run_dir / "log.csv").unlink()
    result = train(EXPERIMENT, *data, run_dir, build_toy_model, progress=False)
    assert result.epochs == 4
    assert (run_dir / "checkpoints" / "best.pt").read_bytes() == best
    assert (run_dir / "log.csv").read_bytes() == log
    assert not list(tmp_path.glob("run.previous-*"))


def test_without_dens_direct_forces_no_ema(data, tmp_path, capsys):
    experiment = toy_experiment(dens=False, epochs=3, lr=3e-2, ema_decay=None, grad_clip_norm=None)
    experiment["model"]["hyperparameters"]["gradient_forces"] = False
    result = train(experiment, *data, tmp_path, build_toy_model, progress=True)
    out = capsys.readouterr().out
    assert "toy/pair seed0: starting at epoch 1/3" in out
    assert "toy/pair seed0: epoch 3/3, val force MAE" in out and "left" in out
    rows = read_log(tmp_path)
    assert result.epochs == 3 and len(rows) == 3
    assert {float(r["lambda_dens"]) for r in rows} == {0.0}
    assert {float(r["train_dens_loss"]) for r in rows} == {0.0}
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert best["weights"] == "model" and last["ema"] is None
    assert "noise_force_weight.weight" not in last["model"]  # no noise head without DeNS


def test_checkpoint_is_plain_and_rng_state_round_trips(tmp_path):
    generator = torch.Generator().manual_seed(3)
    torch.rand(5, generator=generator)
    path = tmp_path / "state.pt"
    save_checkpoint(
        {"format_version": FORMAT_VERSION, "rng": generator.get_state(), "x": [1, 2.0, None, "a"]},
        path,
    )
    expected = torch.rand(7, generator=generator)
    state = torch.load(path, weights_only=True)
    restored = torch.Generator().set_state(state["rng"])
    assert torch.equal(torch.rand(7, generator=restored), expected)
    assert state["x"] == [1, 2.0, None, "a"]
    with pytest.raises(TypeError, match=r"checkpoint\['nested'\]\['v'\] is a numpy.float64"):
        save_checkpoint({"nested": {"v": np.float64(1.0)}}, path)
    assert torch.load(path, weights_only=True)["x"] == [1, 2.0, None, "a"]  # old file intact


def test_learning_rate_warmup_then_cosine():
    optim = {"lr": 1e-3, "min_lr": 1e-6, "warmup_epochs": 2, "epochs": 10}
    settings = optim_settings(optim)
    lrs = [learning_rate(s, settings, steps_per_epoch=5) for s in range(50)]
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert all(a > b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == 1e-6
    assert lrs[9 + 20] == pytest.approx(
        1e-6 + 0.5 * (1e-3 - 1e-6) * (1 + math.cos(math.pi * 20 / 40))
    )
    fractional = {**optim, "warmup_epochs": 0.1}
    assert learning_rate(0, optim_settings(fractional), steps_per_epoch=100) == pytest.approx(1e-4)


def test_learning_rate_cosine_total_as_fairchem_cosine_lr_lambda():
    """The official OC20/OC22 schedule (fairchem 1.x CosineLRLambda): warm-up from 0.2 lr, then
    a cosine over all steps down to lr_min_factor 0.01."""
    optim = {
        "lr": 2e-4,
        "min_lr": 2e-6,
        "warmup_epochs": 0.1,
        "warmup_start_factor": 0.2,
        "lr_schedule": "cosine_total",
        "epochs": 12,
    }
    settings = optim_settings(optim)
    lrs = [learning_rate(s, settings, steps_per_epoch=100) for s in range(1200)]
    warmup = 10
    for t in range(1, 1201):  # fairchem's lambda at t steps done, times lr_initial
        if t <= warmup:
            factor = 0.2 * (1 - t / warmup) + t / warmup
        else:
            factor = 0.01 + 0.5 * (1 - 0.01) * (1 + math.cos(math.pi * t / 1200))
        assert lrs[t - 1] == pytest.approx(2e-4 * factor)
    assert lrs[-1] == pytest.approx(2e-6)


def test_learning_rate_multistep_as_fairchem_multistep_lr_lambda():
    """The official eSCN / DeNS eSCN schedule (fairchem 1.x multistep_lr_lambda with epochs
    times iterations per epoch): warm-up from 0.2 lr, then x0.3 at 11.7, 15 and 18.3 epochs."""
    optim = {
        "lr": 8e-4,
        "min_lr": 0.0,
        "warmup_epochs": 0.01,
        "warmup_start_factor": 0.2,
        "lr_schedule": "multistep",
        "decay_epochs": [11.7, 15, 18.3],
        "decay_rate": 0.3,
        "epochs": 20,
    }
    settings = optim_settings(optim)
    lrs = [learning_rate(s, settings, steps_per_epoch=100) for s in range(2000)]
    milestones = [1170, 1500, 1830]
    for t in range(1, 2001):
        if t <= 1:
            factor = 0.2 * (1 - t) + t
        else:
            factor = 0.3 ** sum(m <= t for m in milestones)
        assert lrs[t - 1] == pytest.approx(8e-4 * factor)
    assert lrs[1168] == pytest.approx(8e-4) and lrs[1169] == pytest.approx(8e-4 * 0.3)
    assert lrs[-1] == pytest.approx(8e-4 * 0.3**3)
    with pytest.raises(ConfigError, match="needs decay_epochs and decay_rate"):
        incomplete = {k: v for k, v in optim.items() if k != "decay_rate"}
        optim_settings(incomplete)


LR_REFERENCE = Path(__file__).parent / "fixtures" / "lr_schedule" / "reference_lrs.json"


def timm_cosine_written_out(
    epoch: int, lr: float, min_lr: float, warmup_lr: float, warmup_t: float, t_initial: int
) -> float:
    """timm 0.4.12 CosineLRScheduler._get_lr (scheduler/cosine_lr.py:62-95) as create_scheduler
    builds it (scheduler_factory.py:25-40: t_mul 1, cycle_limit 1, warmup_prefix False), for
    the value that Scheduler.step(epoch) (scheduler.py:67-72) puts in every parameter group."""
    if epoch < warmup_t:
        return warmup_lr + epoch * (lr - warmup_lr) / warmup_t
    cycle = epoch // t_initial
    if cycle >= 1:  # cycle_limit 1: after the first cycle, lr_min
        return min_lr
    t_curr = epoch - t_initial * cycle
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * t_curr / t_initial)) / 2


def test_learning_rate_cosine_epoch_timm_as_timm_cosine_scheduler_per_epoch():
    """The official MD17 code steps timm's cosine scheduler once per epoch (main_md17_dens.py:236
    ``lr_scheduler.step(epoch)``): the lr is constant within an epoch, the warm-up starts at
    warmup_lr (not 0), and the cosine is of the epoch itself (at the end of the warm-up it is
    already below lr). The per-step ``cosine`` schedule fails every one of these checks."""
    optim = {
        "lr": 5e-4,
        "min_lr": 1e-6,
        "warmup_lr": 1e-6,
        "warmup_epochs": 10,
        "epochs": 40,
        "lr_schedule": "cosine_epoch_timm",
    }
    steps = 7
    settings = optim_settings(optim)
    lrs = [learning_rate(s, settings, steps_per_epoch=steps) for s in range(42 * steps)]
    for step, value in enumerate(lrs):
        expected = timm_cosine_written_out(step // steps, 5e-4, 1e-6, 1e-6, 10, 40)
        assert value == pytest.approx(expected, rel=1e-14, abs=0), step
    assert lrs[0] == 1e-6 and lrs[steps - 1] == 1e-6
    assert lrs[9 * steps] == pytest.approx(1e-6 + 9 * (5e-4 - 1e-6) / 10)
    assert lrs[10 * steps] < 5e-4 and lrs[10 * steps] > lrs[11 * steps]
    assert lrs[39 * steps] > 1e-6 and lrs[40 * steps :] == [1e-6] * (2 * steps)
    with pytest.raises(ConfigError, match="'cosine_epoch_timm' needs warmup_lr"):
        no_warmup_lr = {k: v for k, v in optim.items() if k != "warmup_lr"}
        optim_settings(no_warmup_lr)
    with pytest.raises(ConfigError, match="every one of the 1 epochs trains at a warm-up lr"):
        optim_settings({**optim, "epochs": 1, "warmup_epochs": 0.1})
    assert Schedule.of(optim_settings({**optim, "epochs": 1, "warmup_epochs": 0}), 8).epochs == 1


def test_learning_rate_cosine_epoch_timm_equals_the_official_md17_runs():
    """tests/fixtures/lr_schedule: the lr of every epoch of each of the 32 official MD17 scripts,
    set by the official code (its argument parser, create_optimizer, timm 0.4.12's
    create_scheduler, ``lr_scheduler.step(epoch)`` per epoch). Our lr at the first and the last
    step of each epoch (the script's steps per epoch, drop_last) equals it to the last bit."""
    reference = json.loads(LR_REFERENCE.read_text())
    assert len(reference["scripts"]) == 32
    worst = 0.0
    for script in reference["scripts"].values():
        schedule = reference["schedules"][script["schedule"]]
        args, epoch_lrs = schedule["args"], schedule["lrs"]
        assert (args["warmup_lr"], args["min_lr"], args["warmup_epochs"]) == (1e-6, 1e-6, 10)
        optim = {key: args[key] for key in ("lr", "min_lr", "warmup_lr", "warmup_epochs")}
        optim |= {"epochs": args["epochs"], "lr_schedule": "cosine_epoch_timm"}
        steps, settings = script["steps_per_epoch"], optim_settings(optim)
        assert len(epoch_lrs) == args["epochs"]
        for epoch, expected in enumerate(epoch_lrs):
            for step in (epoch * steps, (epoch + 1) * steps - 1):
                value = learning_rate(step, settings, steps_per_epoch=steps)
                worst = max(worst, abs(value - expected) / expected)
    assert worst == 0.0


def test_cosine_epoch_timm_run_trains_each_epoch_at_its_lr_and_resumes_mid_epoch(data, tmp_path):
    """The engine trains each epoch at timm's lr of that epoch (log.csv's lr column, and the lr
    AdamW holds in a last.pt saved mid-epoch); a run stopped mid-epoch resumes on the same
    schedule (the lr is a function of the global step) and ends as the run without a stop."""
    experiment = toy_experiment(
        dens=False,
        epochs=3,
        lr=3e-2,
        min_lr=1e-5,
        lr_schedule="cosine_epoch_timm",
        warmup_epochs=1,
        warmup_lr=1e-4,
    )
    train_set, val_set = data
    straight = tmp_path / "straight"
    train(experiment, train_set, val_set, straight, build_toy_model, progress=False)
    expected = [timm_cosine_written_out(e, 3e-2, 1e-5, 1e-4, 1, 3) for e in range(3)]
    assert [float(row["lr"]) for row in read_log(straight)] == pytest.approx(expected, rel=1e-14)

    stopped = tmp_path / "stopped"
    at = NORMALIZER_READS + N_TRAIN + 3 * 4 + 2  # SIGTERM while loading epoch 2's 4th batch
    with pytest.raises(StopRequested):
        train(
            experiment,
            Interrupting(train_set, at, sigterm),
            val_set,
            stopped,
            build_toy_model,
            progress=False,
        )
    state = load_checkpoint(stopped / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 4, 12)
    assert {group["lr"] for group in state["optimizer"]["param_groups"]} == {expected[1]}
    train(experiment, train_set, val_set, stopped, build_toy_model, progress=False)
    assert_same_run(straight, stopped)


def test_amsgrad_is_an_optimizer_option():
    model = torch.nn.Linear(3, 2)
    optim = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01}
    assert not build_optimizer(model, optim_settings(optim)).param_groups[0]["amsgrad"]
    with_amsgrad = optim_settings({**optim, "amsgrad": True})
    assert build_optimizer(model, with_amsgrad).param_groups[0]["amsgrad"]


def test_epoch_batches_are_seeded_permutations_without_the_last_partial_batch():
    batches = epoch_batches(10, 3, seed=0, epoch=0)
    assert [len(b) for b in batches] == [3, 3, 3]
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))
    assert batches == epoch_batches(10, 3, seed=0, epoch=0)
    assert batches != epoch_batches(10, 3, seed=0, epoch=1)
    assert batches != epoch_batches(10, 3, seed=1, epoch=0)


def test_update_ema_and_weight_decay_groups():
    model = build_toy_model(toy_experiment(dens=True))
    ema = build_toy_model(toy_experiment(dens=True))
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    update_ema(ema, model, 0.75)
    for key, value in ema.state_dict().items():
        expected = 0.75 * before[key] + 0.25 * model.state_dict()[key]
        assert torch.allclose(value, expected, rtol=1e-6, atol=1e-6)

    optimizer = build_optimizer(model, optim_settings({"lr": 1e-3, "weight_decay": 0.1}))
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 and not names[id(p)].endswith(".bias") for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"pair_energy.0.bias", "force_norm_weight"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_GROUPS = FIXTURES / "weight_decay" / "reference_groups.json"
WEIGHT_DECAY_MODELS = {
    "equiformer_v2": (load_eqv2, FIXTURES / "equiformer_v2" / "checkpoint_l4m2_equiformer_v2.pt"),
    "equiformer_v2_dens": (
        load_eqv2,
        FIXTURES / "equiformer_v2" / "checkpoint_l4m2_equiformer_v2_dens.pt",
    ),
    "escn": (load_escn, FIXTURES / "escn" / "checkpoint_escn.pt"),
    "escn_dens": (load_escn, FIXTURES / "escn" / "checkpoint_escn_dens.pt"),
}


@pytest.mark.parametrize("name", sorted(WEIGHT_DECAY_MODELS))
def test_weight_decay_groups_equal_the_official_trainers(name):
    """The parameters AdamW leaves undecayed are those the official trainer leaves (fairchem
    load_optimizer with the reference model's no_weight_decay, tests/fixtures/weight_decay):
    EquiformerV2 exempts linear biases and every layer-norm parameter (``affine_weight``
    included) but decays the embeddings and ``alpha_dot``; eSCN exempts names with "embedding"
    or "bias". The old rule (1-d parameters and biases) fails both."""
    reference = json.loads(REFERENCE_GROUPS.read_text())[name]
    load, path = WEIGHT_DECAY_MODELS[name]
    model = load(path)[0]
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == reference["parameters"]
    assert sorted(weight_decay_exempt(model)) == reference["exempt"]
    optimizer = build_optimizer(model, optim_settings({"lr": 1e-3, "weight_decay": 0.01}))
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in no_decay["params"]) == reference["exempt"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    if name.startswith("equiformer_v2"):
        assert "norm.affine_weight" in reference["exempt"]
        assert "blocks.0.ga.alpha_dot" not in reference["exempt"]  # 1-d, decayed


def toy_batch(num_fixed: int = 1) -> Batch:
    data = []
    for index, item in enumerate(make_emt_dataset(4, seed=5)):
        item = item.clone()
        item.fixed = item.fixed.clone()
        item.fixed[:num_fixed] = True
        item.md_split = torch.tensor([index == 3])
        data.append(item)
    return Batch.from_data_list(data)


def test_batch_loss_with_a_given_corruption_is_the_drawn_loss():
    """loss_terms = draw_corruption + batch_loss: a Corruption built directly from the draw's
    masks, noise and force input gives the same terms (the API for injected draws)."""
    experiment = toy_experiment(dens=True, loss_reduction="free_atoms")
    batch = toy_batch()
    normalizer = Normalizer(0.1, 2.0, torch.zeros(NUM_ELEMENTS, dtype=torch.float64))
    dens = DeNSSettings.from_config({**experiment["dens"], "p": 1.0})
    losses = loss_settings(experiment["optim"])
    torch.manual_seed(0)
    model = build_toy_model(experiment)
    drawn = loss_terms(
        model, batch, normalizer, losses, dens, torch.Generator().manual_seed(4), 2.0
    )
    draw = draw_corruption(batch, normalizer, dens, torch.Generator().manual_seed(4))
    assert draw.corrupted.any()
    given = Corruption(
        dens_structures=draw.dens_structures,
        corrupted=draw.corrupted,
        noise=draw.noise,
        pos=batch.pos + draw.noise,
        force_input=draw.force_input,
        sigma=dens.sigma,
    )
    terms = batch_loss(model, batch, normalizer, losses, dens, given, 2.0)
    for key in ("total", "energy", "forces", "dens"):
        assert torch.equal(terms[key], drawn[key]), key
    with pytest.raises(ValueError, match="both dens settings and a corruption"):
        batch_loss(model, batch, normalizer, losses, dens, None, 2.0)


def test_normalized_force_encoding_divides_by_the_force_std():
    """dens.force_encoding_units "normalized" encodes f' = f / force std (OC22: 0.148 eV/Å), not
    f / energy std (25.1 eV), which the old engine used."""
    batch = toy_batch(num_fixed=0)
    normalizer = Normalizer(0.0, 25.0, torch.zeros(NUM_ELEMENTS, dtype=torch.float64), None, 0.5)
    dens = DeNSSettings(p=1.0, sigma=0.1, corruption_ratio=1.0, coefficient=1.0)
    draw = draw_corruption(batch, normalizer, dens, torch.Generator().manual_seed(0))
    hit = draw.corrupted
    assert draw.force_input is not None and hit.sum() > 10
    torch.testing.assert_close(draw.force_input[hit], batch.forces[hit] / 0.5, rtol=0, atol=0)


OC20_NORMALIZER = {
    "energy_mean": -0.7554450631141663,
    "energy_std": 2.887317180633545,
    "force_std": 2.887317180633545,
}
OC22_NORMALIZER = {
    "energy_mean": 0.0,
    "energy_std": 25.119809935106424,
    "force_std": 0.14759646356105804,
}


def test_normalizer_from_the_config_and_a_linear_reference_file(tmp_path):
    """optim.normalizer is used as given (OC22: forces / 0.1476, energies / 25.12, the old
    engine fitted one std for both), after the published per-element references of
    optim.energy_reference_file (a path relative to the pipeline directory), as fairchem's
    OC22 dataset subtracts sum_i coeff[Z_i]."""
    data = make_emt_dataset(6, seed=2)
    coeff = np.zeros(100)
    coeff[29], coeff[78], coeff[1] = -3.5, -5.25, 0.75  # Cu, Pt, H
    (tmp_path / "refs").mkdir()
    np.savez(tmp_path / "refs" / "linfit.npz", coeff=coeff)
    optim = {
        "normalizer": OC22_NORMALIZER,
        "energy_reference_file": "refs/linfit.npz",
        "energy_reference": "linear",
    }
    normalizer = training_normalizer(LabelSettings.from_optim(optim), data, 0, root=tmp_path)
    batch = Batch.from_data_list(data)
    numbers = batch.atomic_numbers
    ref = torch.zeros(len(data), dtype=torch.float64).index_add(
        0, batch.batch, torch.from_numpy(coeff)[numbers]
    )
    expected = (batch.energy.double() - ref) / OC22_NORMALIZER["energy_std"]
    got = normalizer.normalize_energy(batch.energy, numbers, batch.batch)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    forces = normalizer.normalize_forces(batch.forces)
    torch.testing.assert_close(forces, batch.forces / OC22_NORMALIZER["force_std"])
    assert normalizer.elements == tuple(sorted(set(numbers.tolist())))
    restored = Normalizer.from_dict(normalizer.to_dict())
    assert restored.force_scale == OC22_NORMALIZER["force_std"]

    oc20_labels = LabelSettings.from_optim({"normalizer": OC20_NORMALIZER})
    oc20 = training_normalizer(oc20_labels, data, 0, root=tmp_path)
    assert (oc20.mean, oc20.std, oc20.force_scale) == tuple(OC20_NORMALIZER.values())
    assert not oc20.element_references.any()
    linear = LabelSettings.from_optim({"energy_reference_file": "refs/linfit.npz"})
    fitted = training_normalizer(linear, data, 0, tmp_path)
    residual = batch.energy.double() - ref
    assert fitted.mean == pytest.approx(float(residual.mean()), rel=1e-12)
    assert fitted.std == pytest.approx(float(residual.std()), rel=1e-12)
    assert fitted.force_std is None

    with pytest.raises(ConfigError, match="needs optim.energy_reference_file"):
        LabelSettings.from_optim({**optim, "energy_reference_file": None})
    with pytest.raises(ConfigError, match="contradicts"):
        LabelSettings.from_optim({**optim, "energy_reference": "mean"})
    with pytest.raises(ConfigError, match="does not exist"):
        missing = LabelSettings.from_optim({**optim, "energy_reference_file": "nope.npz"})
        training_normalizer(missing, data, 0, tmp_path)


def build_drawing_toy_model(experiment: dict) -> torch.nn.Module:
    """The toy model drawing from torch's global generator in every forward pass, training and
    evaluation alike (as a model with dropout, or EquiformerV2 with edge_roll "random"): its
    energy is scaled by 1 + 0.1 u, u uniform."""
    model = build_toy_model(experiment)

    def scale(module, inputs, out):
        return {**out, "energy": out["energy"] * (1 + 0.1 * torch.rand(()))}

    model.register_forward_hook(scale)
    return model


def without_columns(rows: list[dict[str, str]], columns: set[str]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in columns} for row in rows]


def test_validation_inside_epochs_changes_no_weight_and_resumes_exactly(data, tmp_path):
    """optim.val_every_steps adds log.csv rows (kind mid_epoch) every 3 steps inside the epochs
    (steps 3, 6 | 9, 12, 15 of two 8-step epochs); the training is the run's without them, bit
    for bit, although the model draws from torch's global generator in training and in
    validation (validation restores it); a run stopped at step 12, right after such a
    validation, keeps its row and resumes to the same run, no row twice."""
    train_set, val_set = data
    plain = toy_experiment(dens=True, epochs=2, lr=3e-2)
    curves = toy_experiment(dens=True, epochs=2, lr=3e-2, val_every_steps=3)
    for name, experiment in (("plain", plain), ("curves", curves)):
        train(experiment, *data, tmp_path / name, build_drawing_toy_model, progress=False)
    rows = read_log(tmp_path / "curves")
    assert [(int(r["step"]), r["kind"]) for r in rows] == [
        (3, "mid_epoch"),
        (6, "mid_epoch"),
        (8, "epoch"),
        (9, "mid_epoch"),
        (12, "mid_epoch"),
        (15, "mid_epoch"),
        (16, "epoch"),
    ]
    assert [int(r["epoch"]) for r in rows] == [1, 1, 1, 2, 2, 2, 2]
    epoch_rows = [row for row in rows if row["kind"] == "epoch"]
    assert without_columns(epoch_rows, TIMING_COLUMNS) == without_columns(
        read_log(tmp_path / "plain"), TIMING_COLUMNS
    )
    assert len({r["val_forces_mae_meV_per_A"] for r in rows}) == len(rows)  # points of a curve
    last, best = (
        {run: load_checkpoint(tmp_path / run / "checkpoints" / kind) for run in ("plain", "curves")}
        for kind in ("last.pt", "best.pt")
    )
    for key in ("model", "ema", "optimizer", "rng"):
        assert_identical(last["plain"][key], last["curves"][key], key)
    assert_identical(best["plain"]["model"], best["curves"]["model"], "best.pt")
    assert best["plain"]["epoch"] == best["curves"]["epoch"]

    stopped = tmp_path / "stopped"
    at = NORMALIZER_READS + N_TRAIN + 3 * 4 + 2  # SIGTERM while loading epoch 2's 4th batch
    with pytest.raises(StopRequested):
        train(
            curves,
            Interrupting(train_set, at, sigterm),
            val_set,
            stopped,
            build_drawing_toy_model,
            progress=False,
        )
    state = load_checkpoint(stopped / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 4, 12)
    assert [int(row["step"]) for row in read_log(stopped)] == [3, 6, 8, 9, 12]
    train(curves, train_set, val_set, stopped, build_drawing_toy_model, progress=False)
    assert_same_run(tmp_path / "curves", stopped)


def test_batch_decision_resumes_exactly_and_saves_the_decision_generator(data, tmp_path):
    """With dens.decision "batch" and the free-atom reduction, a run stopped by SIGTERM mid-epoch
    resumes bit for bit (last.pt keeps the decision generator's state too)."""
    experiment = toy_experiment(dens=True, epochs=2, lr=3e-2, loss_reduction="free_atoms")
    experiment["dens"] = {**experiment["dens"], "decision": "batch"}
    train_set, val_set = data
    straight = tmp_path / "straight"
    train(experiment, train_set, val_set, straight, build_toy_model, progress=False)
    state = load_checkpoint(straight / "checkpoints" / "last.pt")
    assert state["rng"][0]["dens_decision"].dtype == torch.uint8

    resumed = tmp_path / "resumed"
    at = NORMALIZER_READS + 5 * 4 + 2  # SIGTERM while loading the 6th batch of epoch 1
    with pytest.raises(StopRequested):
        train(
            experiment,
            Interrupting(train_set, at, sigterm),
            val_set,
            resumed,
            build_toy_model,
            progress=False,
        )
    train(experiment, train_set, val_set, resumed, build_toy_model, progress=False)
    assert_same_run(straight, resumed)


def test_a_split_with_elements_beyond_the_models_table_is_refused_before_training(
    tmp_path: Path,
) -> None:
    """An atomic number beyond the model's embedding table (here 1..20, the EMT data hold Cu,
    Z = 29) is refused in one line naming the element, before a step is taken or a file is
    written (before, nothing compared them: a real model's embedding lookup then failed with an
    IndexError in the first batch, on CUDA a device-side assert)."""
    from dens.data.validation import InvalidStructureError

    def small_table(experiment: dict) -> torch.nn.Module:
        model = build_toy_model(experiment)
        model.max_num_elements = 21
        return model

    class KnownElements(list):  # a dataset that knows its elements, as AseLmdbDataset does
        elements = [29]

    data = make_emt_dataset(12, seed=0)
    with pytest.raises(InvalidStructureError, match=r"the training set: holds .*\(Z=29\).*1\.\.20"):
        train(
            toy_experiment(epochs=1, batch_size=4),
            KnownElements(data[:8]),
            KnownElements(data[8:]),
            tmp_path / "run",
            small_table,
            progress=False,
        )
    assert not (tmp_path / "run").exists()
