"""Data-parallel training (dens.distributed, dens.train) with real processes on the CPU (gloo):
the gradient of two processes is the single-process gradient of the same global batch, with and
without DeNS structures, and with the official OC trainer's free-atom reduction what that
trainer's DDP gives (a global free-atom mean, or for a DeNS batch with partial corruption the
mean of each process's own free-atom mean); a SIGTERM on one process stops both at the same
step with a complete last.pt, and the rerun resumes it exactly; which process this is under
torchrun and srun; the checks that refuse what cannot be split; the mixed-precision switch."""

from __future__ import annotations

import csv
import functools
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from toy_model import build_toy_model, make_emt_dataset, toy_experiment

from dens import distributed
from dens.checkpoint import load_checkpoint
from dens.data.batch import Batch, Data
from dens.denoising import Corruption, DeNSSettings, corrupt
from dens.distributed import World, first_host, process_group
from dens.errors import ConfigError
from dens.stopping import STOPPED_EXIT_CODE
from dens.train import train
from dens.training import losses as training_losses
from dens.training.labels import fit_normalizer
from dens.training.losses import free_atoms_per_process, loss_terms
from dens.training.settings import TrainSettings, loss_settings
from dens.training.trainee import build_trainee, forward_loss, update, use_mixed_precision

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GLOBAL_BATCH = 8
DENS_STRUCTURES = {0, 2}  # both in rank 0's share: rank 1 never uses the noise head
ALL_STRUCTURES = set(range(GLOBAL_BATCH))  # a DeNS batch (the MD ones stay uncorrupted)
CASES = {
    "no DeNS": (False, set(), "structure"),
    "DeNS structures on rank 0 only": (True, DENS_STRUCTURES, "structure"),
    "DeNS on, no structure drawn": (True, set(), "structure"),
    "free atoms, no DeNS": (False, set(), "free_atoms"),
    "free atoms, DeNS on, no structure drawn": (True, set(), "free_atoms"),
    "free atoms, DeNS batch (per-process mean)": (True, ALL_STRUCTURES, "free_atoms"),
    "per-atom reduction (refused under DDP)": (True, DENS_STRUCTURES, "atom"),
}
PER_PROCESS_MEAN = "free atoms, DeNS batch (per-process mean)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def structures() -> list[Data]:
    """EMT clusters shaped like OC20 data: each knows its index (``idx``), some atoms are fixed
    and structure 1 comes from an MD split (never corrupted)."""
    out = []
    for index, data in enumerate(make_emt_dataset(GLOBAL_BATCH, seed=3)):
        data = data.clone()
        data.idx = torch.tensor([index])
        data.fixed = data.fixed.clone()
        data.fixed[: index % 3] = True
        data.md_split = torch.tensor([index in (1, 2)])
        out.append(data)
    return out


def corrupt_by_structure(
    batch: Batch,
    settings: DeNSSettings,
    generator: torch.Generator | None,
    forces: torch.Tensor,
    chosen: frozenset[int],
    batch_generator: torch.Generator | None = None,
) -> Corruption:
    """dens.denoising.corrupt, structure by structure, with draws that depend only on the
    structure (its index) and not on which process holds it: DeNS for the ``chosen`` structures
    (md_split still wins). The engine's own draws are per process by design, so this is how one
    global batch gets the same corruption with one process and with two."""
    parts = []
    for k, data in enumerate(batch.to_data_list()):
        index = int(data.idx)
        single = replace(settings, p=1.0 if index in chosen else 0.0)
        draws = torch.Generator().manual_seed(100 + index)
        parts.append(
            corrupt(Batch.from_data_list([data]), single, draws, forces=forces[batch.batch == k])
        )
    force_inputs = [part.force_input for part in parts]
    return Corruption(
        dens_structures=torch.cat([part.dens_structures for part in parts]),
        corrupted=torch.cat([part.corrupted for part in parts]),
        noise=torch.cat([part.noise for part in parts]),
        pos=torch.cat([part.pos for part in parts]),
        force_input=None if force_inputs[0] is None else torch.cat(force_inputs),
        sigma=settings.sigma,
    )


def one_step(case: str, world: World, share_of: World | None = None) -> dict[str, Any]:
    """One engine step (forward_loss + update) on this process's share of the global batch,
    with ``dens.training.losses.corrupt`` replaced by ``corrupt_by_structure``: the averaged
    gradient left in the model, the loss terms, the agreed stop flag and the atoms corrupted here.
    ``share_of``: train on that process's share alone (one process)."""
    with_dens, chosen, reduction = CASES[case]
    experiment = toy_experiment(dens=with_dens, epochs=1, loss_reduction=reduction)
    data = structures()
    normalizer = fit_normalizer(data, "mean", 0)
    batch = Batch.from_data_list(list((share_of or world).share(data)))
    trainee = build_trainee(
        TrainSettings.from_experiment(experiment),
        lambda: build_toy_model(experiment),
        torch.device("cpu"),
        world,
    )
    settings = DeNSSettings.from_config(experiment["dens"]) if with_dens else None
    losses = loss_settings(experiment["optim"])
    training_losses.corrupt = functools.partial(corrupt_by_structure, chosen=frozenset(chosen))

    def loss(network: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        count = free_atoms_per_process(batch, losses, world)
        return loss_terms(network, batch, normalizer, losses, settings, None, 5.0, None, count)

    total, values, stop = forward_loss(trainee, batch, loss, world, stop=world.rank == 1)
    update(trainee, total, TrainSettings.from_experiment(experiment).optim)
    corrupted = 0
    if settings is not None:
        draw = training_losses.corrupt(batch, settings, None, batch.forces)
        corrupted = int(draw.corrupted.sum())
    gradients = {
        name: None if p.grad is None else p.grad.clone()
        for name, p in trainee.model.named_parameters()
    }
    return {"gradients": gradients, "values": values, "stop": stop, "corrupted": corrupted}


def gradient_worker(rank: int, port: int, out: str) -> None:
    """One of two gloo processes: every case, results saved per rank."""
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    world = World.from_environment()
    with process_group(world, torch.device("cpu")):
        results = {case: one_step(case, world) for case in CASES}
    torch.save(results, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(gradient_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture
def restore_corrupt(monkeypatch):
    """one_step replaces dens.training.losses.corrupt; put it back after the test."""
    monkeypatch.setattr(training_losses, "corrupt", training_losses.corrupt)


def assert_gradients(got: dict, expected: dict, where: str) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if value is None:  # unused by every process: no gradient, AdamW skips it
            assert got[name] is None, f"{where}: {name} got a gradient"
            continue
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("case", [c for c in CASES if "refused" not in c and c != PER_PROCESS_MEAN])
def test_gradient_of_two_processes_is_the_single_process_gradient(
    two_processes, case, restore_corrupt
):
    single = one_step(case, World())
    for rank, result in enumerate(two_processes):
        ddp = result[case]
        assert ddp["values"] == pytest.approx(single["values"], rel=1e-6), rank
        assert_gradients(ddp["gradients"], single["gradients"], f"rank {rank}")
    if case == "DeNS structures on rank 0 only":
        assert two_processes[0][case]["corrupted"] > 0 and two_processes[1][case]["corrupted"] == 0
        assert single["gradients"]["pair_noise.0.weight"] is not None
    assert two_processes[0][case]["stop"] and two_processes[1][case]["stop"]  # rank 1's SIGTERM


def test_free_atom_hybrid_batch_takes_each_process_own_mean(two_processes, restore_corrupt):
    """A DeNS batch with partial corruption under "free_atoms": each process divides by its own
    free atoms (the official hybrid loss's local torch.mean) and DDP averages, so the gradient is
    the mean of the two shares' single-process gradients; the shares' free-atom counts differ
    (fixed atoms), so it is not the global batch's gradient, which a global count would give."""
    shares = [one_step(PER_PROCESS_MEAN, World(), share_of=World(r, 2)) for r in range(2)]
    assert all(share["corrupted"] > 0 for share in shares)
    expected = {}
    for name, first in shares[0]["gradients"].items():
        second = shares[1]["gradients"][name]
        expected[name] = None if first is None else (first + second) / 2
    for rank, result in enumerate(two_processes):
        assert_gradients(result[PER_PROCESS_MEAN]["gradients"], expected, f"rank {rank}")
    whole = one_step(PER_PROCESS_MEAN, World())["gradients"]["pair_energy.0.weight"]
    assert not torch.allclose(expected["pair_energy.0.weight"], whole, rtol=1e-3)


def test_per_atom_reduction_would_not_give_the_global_gradient(two_processes, restore_corrupt):
    """The comparison above can fail: a per-atom mean over each share is not the global mean."""
    case = "per-atom reduction (refused under DDP)"
    single = one_step(case, World())
    ddp = two_processes[0][case]["gradients"]["pair_energy.0.weight"]
    assert not torch.allclose(ddp, single["gradients"]["pair_energy.0.weight"], rtol=1e-3)


WORKER = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from toy_model import build_toy_model, make_emt_dataset, toy_experiment
from dens.train import train

class SigtermOnRank1:
    def __init__(self, items, at):
        self.items, self.at, self.reads = items, at, 0
    def __len__(self):
        return len(self.items)
    def __getitem__(self, i):
        self.reads += 1
        if self.reads == self.at and os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGTERM)
        return self.items[i]

data = make_emt_dataset(24, seed=0)
at = int(sys.argv[2])
train_set = SigtermOnRank1(data[:16], at) if at else data[:16]
train(toy_experiment(epochs=2, batch_size=4), train_set, data[16:], sys.argv[1],
      build_toy_model, progress=False)
"""


def torchrun(script: Path, run_dir: Path, sigterm_at: int) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(free_port()), str(script), str(run_dir), str(sigterm_at)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def assert_identical(a: Any, b: Any, where: str) -> None:
    """Nested checkpoint contents equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def rows_without_timing(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        {k: v for k, v in r.items() if k not in ("epoch_time_s", "train_samples_per_s")}
        for r in rows
    ]


def test_sigterm_on_one_process_stops_all_and_the_rerun_resumes_exactly(tmp_path):
    """torchrun, 2 processes, 16 structures in global batches of 4 (2 per process): rank 1 gets
    SIGTERM while loading its 3rd batch of epoch 1 -> both stop after that step (exit 75), last.pt
    is complete; the rerun with 2 processes ends where an uninterrupted run ends."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    normalizer_reads = 0  # rank 1 does not fit the normaliser: rank 0 does and shares it
    stopped = torchrun(script, tmp_path / "interrupted", normalizer_reads + 2 * 2 + 1)
    assert stopped.returncode != 0
    assert stopped.stderr.count("stopped by SIGTERM after epoch 0 + 3 batches") == 1  # rank 0
    assert f"exitcode  : {STOPPED_EXIT_CODE}" in stopped.stderr
    state = load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (0, 3, 3)
    assert len(state["rng"]) == 2 and not torch.equal(
        state["rng"][0]["dens"], state["rng"][1]["dens"]
    )

    resumed = torchrun(script, tmp_path / "interrupted", 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = torchrun(script, tmp_path / "straight", 0)
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    for key in ("model", "ema", "optimizer", "rng", "step", "best"):
        assert_identical(a[key], b[key], key)
    assert rows_without_timing(tmp_path / "interrupted") == rows_without_timing(
        tmp_path / "straight"
    )
    row = rows_without_timing(tmp_path / "straight")[-1]
    assert (row["world_size"], row["device"], row["mixed_precision"]) == ("2", "cpu", "False")


def test_which_process_under_torchrun_srun_or_neither(monkeypatch):
    torchrun_env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "SLURM_PROCID": "0"}
    assert World.from_environment(torchrun_env) == World(3, 4, 1, "env://")
    srun = {
        "SLURM_PROCID": "9",
        "SLURM_STEP_NUM_TASKS": "16",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NODELIST": "gpu[003-004]",
        "SLURM_JOB_ID": "123456",
    }
    monkeypatch.setattr(distributed, "first_host", lambda nodelist: f"first of {nodelist}")
    expected = World(9, 16, 1, "tcp://first of gpu[003-004]:" + str(20000 + 123456 % 20000))
    assert World.from_environment(srun) == expected
    given = {**srun, "MASTER_ADDR": "node7", "MASTER_PORT": "1234"}
    assert World.from_environment(given).rendezvous == "tcp://node7:1234"
    # A batch script: the allocation's SLURM_NTASKS, no srun step -> one process.
    batch_script = {"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_LOCALID": "0"}
    assert World.from_environment(batch_script) == World()
    assert World.from_environment({**srun, "SLURM_STEP_NUM_TASKS": "1"}) == World()


def test_first_host_of_a_slurm_node_list(monkeypatch):
    def no_scontrol(*args, **kwargs):
        raise FileNotFoundError("scontrol")

    monkeypatch.setattr(distributed.subprocess, "run", no_scontrol)
    assert first_host("gpu[003-004,007],cpu1") == "gpu003"
    assert first_host("node12,node13") == "node12"
    assert first_host("a-[7-9]") == "a-7"

    def scontrol(command, **kwargs):
        assert command == ["scontrol", "show", "hostnames", "n[1-2]"]
        return subprocess.CompletedProcess(command, 0, stdout="n1\nn2\n", stderr="")

    monkeypatch.setattr(distributed.subprocess, "run", scontrol)
    assert first_host("n[1-2]") == "n1"


def test_shares_and_shards_cover_the_batch_once():
    batch = list(range(8))
    shares = [World(r, 4).share(batch) for r in range(4)]
    assert shares == [[0, 1], [2, 3], [4, 5], [6, 7]]
    shards = [distributed.Shard(list(range(10)), World(r, 3)) for r in range(3)]
    assert [list(s) for s in shards] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(IndexError):
        shards[0][3]


def test_what_cannot_be_split_is_refused_before_training(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    data = make_emt_dataset(8, seed=0)
    with pytest.raises(ConfigError, match="batch_size 4 is the global batch.*multiple of 3"):
        train(toy_experiment(), data[:6], data[6:], tmp_path, build_toy_model, progress=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    atom = toy_experiment(loss_reduction="atom")
    with pytest.raises(ConfigError, match="loss_reduction 'atom'"):
        train(atom, data[:6], data[6:], tmp_path, build_toy_model, progress=False)
    with pytest.raises(ConfigError, match="1 validation structures cannot be split over 2"):
        train(toy_experiment(), data[:6], data[7:], tmp_path, build_toy_model, progress=False)
    assert not tmp_path.joinpath("log.csv").exists()


def test_mixed_precision_switch_and_autocast_only_when_on():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_mixed_precision(None, cpu) is False
    assert use_mixed_precision(None, cuda) is True
    assert use_mixed_precision(False, cuda) is False
    assert use_mixed_precision(None, cuda, recipe=False) is False  # MD17: float32 as official
    assert use_mixed_precision(True, cuda, recipe=False) is True
    assert use_mixed_precision(None, cpu, recipe=True) is False
    with pytest.raises(ConfigError, match="CUDA only"):
        use_mixed_precision(True, cpu)

    experiment = toy_experiment(dens=False)
    data = Batch.from_data_list(make_emt_dataset(2, seed=0))
    normalizer = fit_normalizer(data.to_data_list(), "mean", 0)
    seen = []

    def loss(network, batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return loss_terms(
            network, batch, normalizer, loss_settings(experiment["optim"]), None, None, 0
        )

    for enabled in (False, True):  # CPU float16 autocast here only shows the switch at work
        settings = TrainSettings.from_experiment(experiment)
        new_model = functools.partial(build_toy_model, experiment)
        trainee = build_trainee(settings, new_model, cpu, mixed_precision=enabled)
        assert trainee.scaler.is_enabled() is enabled
        forward_loss(trainee, data, loss, World(), stop=False)
    assert seen == [False, True]
