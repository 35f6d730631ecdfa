"""Data-parallel training: one process per device, gradients averaged by DistributedDataParallel.

How a run is launched (``optim.batch_size`` is always the GLOBAL batch; each process takes an
equal, contiguous share of every batch, so the batch size must divide by the process count):

    one process            python -m dens train ...                        (nothing to set up)
    one node, N devices    torchrun --standalone --nproc-per-node N -m dens train ...
    Slurm, N tasks         srun --ntasks N --kill-on-bad-exit=1 python -m dens train ...
                                                                (the pipeline's train rule)

``World.from_environment`` tells which process this is: torchrun's RANK, WORLD_SIZE and
LOCAL_RANK (torchrun also sets MASTER_ADDR and MASTER_PORT), else an srun step's SLURM_PROCID,
SLURM_STEP_NUM_TASKS and SLURM_LOCALID, with the first host of SLURM_STEP_NODELIST (``scontrol
show hostnames``) as the rendezvous, as fairchem 1.x ``distutils.setup`` does under Slurm. A
batch script's own SLURM_NTASKS describes the allocation, not running processes: only srun steps
set SLURM_STEP_NUM_TASKS, so ``python -m dens train`` run directly in a batch script is one
process. ``process_group`` joins the group (NCCL on CUDA, gloo on CPU); each process uses the
GPU of its local rank (cuda:0 when Slurm shows each task only its own GPU).

What the processes share, and how, is in dens.train (module notes): the DeNS corruption
generator of each process is seeded from (seed, rank), validation is split with ``Shard``. Every
collective below is a no-op for a single process, which computes what it did before data
parallelism existed (bit for bit on CPU: tests/test_train.py).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")

TIMEOUT = datetime.timedelta(minutes=30)  # fairchem 1.x's default; rank 0 alone fits the
# normaliser (~1 min for 100k aselmdb reads) and writes checkpoints while the others wait.
SLURM_PORT_BASE = 20000  # rendezvous port of an srun step: base + job id mod 20000


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: rank (0 .. size-1), size, and its
    rank on its node (which GPU it takes)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    rendezvous: str = "env://"

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, log.csv and the console lines."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> World:
        """torchrun's variables, else an srun step's, else a single process (module notes)."""
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" in env:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))
        if "SLURM_STEP_NUM_TASKS" in env and int(env["SLURM_STEP_NUM_TASKS"]) > 1:
            host = env.get("MASTER_ADDR") or first_host(env["SLURM_STEP_NODELIST"])
            port = env.get("MASTER_PORT") or SLURM_PORT_BASE + int(env["SLURM_JOB_ID"]) % 20000
            return cls(
                int(env["SLURM_PROCID"]),
                int(env["SLURM_STEP_NUM_TASKS"]),
                int(env["SLURM_LOCALID"]),
                f"tcp://{host}:{port}",
            )
        return cls()

    def device(self, device: torch.device) -> torch.device:
        """The device of this process: "cuda" without an index is the GPU of the local rank
        (cuda:0 where each task sees one GPU); anything else as given."""
        if device.type != "cuda" or device.index is not None or self.size == 1:
            return device
        return torch.device("cuda", self.local_rank % torch.cuda.device_count())

    def share(self, items: Sequence[T]) -> Sequence[T]:
        """This process's contiguous share of a global batch (sizes divide evenly)."""
        count = len(items) // self.size
        return items[self.rank * count : (self.rank + 1) * count]

    def sum(self, tensor: Tensor) -> Tensor:
        """The element-wise sum of ``tensor`` over all processes (in place; returned)."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, value: Any) -> list[Any]:
        """[value of rank 0, value of rank 1, ...] on every process (picklable values)."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every process; what the other ranks pass is ignored."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` for the training forward pass: DistributedDataParallel across processes
        (it averages the gradients during backward), the model itself for one process.

        find_unused_parameters: a process whose share has no corrupted atom does not use the
        noise head (its DeNS term is 0, dens.denoising), so its gradient is missing there."""
        if self.size == 1:
            return model
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list ("gpu[003-004,007],cpu1" -> "gpu003"): from
    ``scontrol show hostnames`` where Slurm's tools are installed, else read off the list."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        )
    except FileNotFoundError:
        match = re.match(r"([^,\[]*)(?:\[([^\],\-]*))?", nodelist)
        assert match is not None  # the pattern matches every string
        return match.group(1) + (match.group(2) or "")
    except subprocess.CalledProcessError as error:
        raise RuntimeError(
            f"scontrol show hostnames {nodelist} failed ({error.stderr.strip()}); set "
            "MASTER_ADDR to the first node of the step"
        ) from error
    return out.stdout.split()[0]


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the training processes for the duration of the block (NCCL on CUDA, gloo on CPU)
    and leave afterwards; nothing for one process or a group the caller already joined."""
    if world.size == 1 or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        init_method=world.rendezvous,
        rank=world.rank,
        world_size=world.size,
        timeout=TIMEOUT,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


class Shard(Sequence):
    """This process's contiguous part of a dataset (validation is split across processes and
    the sums are added up: dens.training.epoch.validate)."""

    def __init__(self, dataset: Sequence[Any], world: World) -> None:
        self.dataset = dataset
        self.start = len(dataset) * world.rank // world.size
        self.stop = len(dataset) * (world.rank + 1) // world.size

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.dataset[self.start + index]
