"""A real one-node Slurm cluster on localhost for integration tests and `make rehearsal`.

`slurm_cluster()` is a context manager that yields a `SlurmCluster` describing a working
Slurm installation:

- If `sinfo` already answers with an available node, that cluster is used as it is and
  nothing is started or changed.
- Otherwise, as root, it installs the Debian packages `slurm-wlm` and `munge` when their
  programs are missing, creates a munge key when there is none, writes a minimal
  /etc/slurm/slurm.conf (backing up any existing one), starts munged (unless a munged
  already answers), slurmctld and slurmd in the foreground as its own child processes, and
  waits until `sinfo` reports the node idle. On exit it cancels the jobs of its partition,
  stops exactly the daemons it started (by their process ids) and restores the
  configuration it replaced.
- Without root and without a working Slurm it raises `SlurmUnavailable`.

Configuration follows a recipe measured on this kind of machine (Debian slurm-wlm): munge
authentication, proctrack/linuxproc, task/none, select/cons_tres with CR_Core_Memory, no accounting,
MinJobAge=600 (so `squeue` still reports finished jobs to Snakemake's Slurm executor),
ReturnToService=2, one node described by `slurmd -C`, one default partition, and a partition
with a 1-minute time limit where a requeued job waits 20 s (AuthInfo=cred_expire) instead of 120.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
PARTITION = "dens"
SHORT_PARTITION = "dens-1min"  # a 1-minute limit: runs continue across requeued jobs there
REQUEUE_DELAY_S = 20  # AuthInfo=cred_expire: a requeued job waits this long (default 120 s)
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])
REQUIRED_PROGRAMS = (
    "sbatch",
    "squeue",
    "sinfo",
    "scontrol",
    "scancel",
    "slurmctld",
    "slurmd",
    "munged",
    "munge",
    "unmunge",
)
READY_NODE_STATES = ("idle", "mixed", "allocated", "completing")


class SlurmUnavailable(RuntimeError):
    """No working Slurm and no permission (root) to start one."""


class SlurmStartError(RuntimeError):
    """Slurm could not be installed or started, or its node never became usable."""


@dataclass
class SlurmCluster:
    """A usable Slurm cluster.

    partition: the partition tests submit to.
    short_partition: a partition with a time limit of 1 minute, or None (a cluster not started
        here).
    started_here: True when this process started the daemons (and owns the logs).
    log_files: daemon log files written by the daemons started here (empty otherwise).
    """

    partition: str
    started_here: bool
    short_partition: str | None = None
    log_files: dict[str, Path] = field(default_factory=dict)

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of each daemon log started here, for error messages."""
        return _tail_logs(self.log_files, lines)


def _which(program: str) -> str | None:
    return shutil.which(program, path=SEARCH_PATH)


def _run(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def _tail_logs(log_files: dict[str, Path], lines: int) -> str:
    parts = []
    for name, path in log_files.items():
        text = path.read_text(errors="replace") if path.exists() else "(no log written)"
        tail = "\n".join(text.splitlines()[-lines:])
        parts.append(f"--- {name} ({path}) ---\n{tail}")
    return "\n".join(parts)


def ready_partition() -> str | None:
    """The partition of a working Slurm cluster, or None when there is none.

    A cluster works when `sinfo` answers and some partition that is up has a node in a
    state that accepts jobs; the default partition (marked `*` by sinfo) is preferred.
    """
    sinfo = _which("sinfo")
    if sinfo is None:
        return None
    try:
        result = _run([sinfo, "--noheader", "--format=%P|%a|%T"], timeout=15)
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        return None
    usable = []
    for line in result.stdout.splitlines():
        name, avail, state = line.strip().split("|")
        if avail == "up" and state.rstrip("*~#!%$@^-") in READY_NODE_STATES:
            usable.append(name)
    defaults = [name.rstrip("*") for name in usable if name.endswith("*")]
    if defaults:
        return defaults[0]
    return usable[0].rstrip("*") if usable else None


def _install_packages() -> None:
    """Install slurm-wlm and munge with apt-get when any of their programs is missing."""
    missing = [program for program in REQUIRED_PROGRAMS if _which(program) is None]
    if not missing:
        return
    apt_get = _which("apt-get")
    if apt_get is None:
        raise SlurmStartError(
            f"Slurm programs {missing} are missing and apt-get is not available to install "
            "slurm-wlm and munge"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt_get, "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"]
    result = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        # A fresh machine may have no (or a stale) package index.
        subprocess.run([apt_get, "update"], capture_output=True, env=env, check=False)
        result = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    still_missing = [program for program in REQUIRED_PROGRAMS if _which(program) is None]
    if result.returncode != 0 or still_missing:
        raise SlurmStartError(
            f"`{' '.join(install)}` failed (exit {result.returncode}); missing programs: "
            f"{still_missing}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )


def _munge_works() -> bool:
    munge, unmunge = _which("munge"), _which("unmunge")
    if munge is None or unmunge is None:
        return False
    credential = _run([munge, "--no-input"], timeout=10)
    if credential.returncode != 0:
        return False
    decoded = subprocess.run(
        [unmunge], input=credential.stdout, capture_output=True, text=True, timeout=10
    )
    return decoded.returncode == 0


def _wait_until(predicate, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def node_config_line() -> str:
    """The `NodeName=... CPUs=... RealMemory=...` line `slurmd -C` prints for this host."""
    slurmd = _which("slurmd")
    if slurmd is None:
        raise SlurmStartError("slurmd is not installed")
    result = _run([slurmd, "-C"])
    for line in result.stdout.splitlines():
        if line.startswith("NodeName="):
            return line.strip()
    raise SlurmStartError(f"`slurmd -C` printed no NodeName line:\n{result.stdout}{result.stderr}")


def slurm_conf_text(host: str, node_line: str, state_dir: Path) -> str:
    """A minimal single-node slurm.conf (no accounting) keeping its state in `state_dir`.

    host: short host name, used for the controller and the node (both on 127.0.0.1).
    node_line: the `slurmd -C` line describing CPUs and memory of `host`.
    """
    node_fields = [f for f in node_line.split() if not f.startswith("NodeName=")]
    return "\n".join(
        [
            "ClusterName=denstest",
            f"SlurmctldHost={host}(127.0.0.1)",
            "AuthType=auth/munge",
            f"AuthInfo=cred_expire={REQUEUE_DELAY_S}",
            "CredType=cred/munge",
            "SlurmUser=root",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "MinJobAge=600",
            "ReturnToService=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            f"StateSaveLocation={state_dir / 'state'}",
            f"SlurmdSpoolDir={state_dir / 'spool'}",
            f"SlurmctldPidFile={state_dir / 'slurmctld.pid'}",
            f"SlurmdPidFile={state_dir / 'slurmd.pid'}",
            f"SlurmctldLogFile={state_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={state_dir / 'slurmd.log'}",
            f"NodeName={host} NodeAddr=127.0.0.1 {' '.join(node_fields)} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName={SHORT_PARTITION} Nodes={host} MaxTime=1 State=UP",
            "",
        ]
    )


@contextmanager
def _replaced_file(path: Path, text: str, mode: int) -> Iterator[None]:
    """Write `text` to `path` and restore the previous content (or absence) on exit."""
    created_dir = not path.parent.exists()
    backup = path.read_bytes() if path.exists() else None
    backup_mode = path.stat().st_mode if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    try:
        yield
    finally:
        if backup is None:
            path.unlink(missing_ok=True)
            if created_dir and not any(path.parent.iterdir()):
                path.parent.rmdir()
        else:
            path.write_bytes(backup)
            path.chmod(backup_mode & 0o7777)


@contextmanager
def _munge_key() -> Iterator[None]:
    """Ensure a munge key exists (owned by munge, mode 0400); remove it on exit if created."""
    if MUNGE_KEY.exists():
        yield
        return
    MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
    MUNGE_KEY.write_bytes(os.urandom(1024))
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o400)
    try:
        yield
    finally:
        MUNGE_KEY.unlink(missing_ok=True)


@contextmanager
def _daemon(
    name: str, args: list[str], output: Path, logs: dict[str, Path], **popen_kwargs
) -> Iterator[None]:
    """Run one daemon in the foreground as a child; stop exactly that process on exit.

    Its stdout and stderr go to `output`, registered in `logs` (all of which are quoted
    when the daemon exits at once).
    """
    logs[f"{name} stdout/stderr"] = output
    with open(output, "wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen_kwargs
        )
    try:
        time.sleep(0.5)
        if process.poll() is not None:
            raise SlurmStartError(
                f"{name} exited at once with status {process.returncode}: {' '.join(args)}\n"
                + _tail_logs(logs, 40)
            )
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _node_state(host: str) -> str:
    result = _run([_which("sinfo") or "sinfo", "--noheader", "--Node", "--format=%N|%T"])
    for line in result.stdout.splitlines():
        name, state = line.strip().split("|")
        if name == host:
            return state
    return f"not listed (sinfo exit {result.returncode}: {result.stderr.strip()})"


def _start_munged(stack: ExitStack, state_dir: Path, logs: dict[str, Path]) -> None:
    """Start munged as user munge (stopped when ``stack`` closes) and wait until it answers."""
    munge_dir = state_dir / "munge"
    munge_dir.mkdir()
    shutil.chown(munge_dir, "munge", "munge")
    MUNGE_RUN_DIR.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_RUN_DIR, "munge", "munge")
    munged = [_which("munged") or "munged", "--foreground", "--force"]
    munged += [f"--pid-file={munge_dir / 'munged.pid'}"]
    munged_user = {"user": "munge", "group": "munge", "extra_groups": []}
    stack.enter_context(_daemon("munged", munged, munge_dir / "munged.out", logs, **munged_user))
    if not _wait_until(_munge_works, timeout=15):
        raise SlurmStartError("munged does not answer\n" + _tail_logs(logs, 40))


@contextmanager
def slurm_cluster(ready_timeout: float = 90.0) -> Iterator[SlurmCluster]:
    """Yield a working Slurm cluster: an existing one, or a one-node cluster started here.

    ready_timeout: seconds to wait for the started node to become idle before raising
    `SlurmStartError` with the daemon logs.
    """
    existing = ready_partition()
    if existing is not None:
        yield SlurmCluster(partition=existing, started_here=False)
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            "no working Slurm cluster (sinfo reports no usable node) and not running as root, "
            "so one cannot be installed and started"
        )
    _install_packages()
    host = socket.gethostname().split(".")[0]
    with ExitStack() as stack:
        state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dens-slurm-")))
        state_dir.chmod(0o755)
        for sub in ("state", "spool"):
            (state_dir / sub).mkdir()
        logs = {
            "slurmctld": state_dir / "slurmctld.log",
            "slurmd": state_dir / "slurmd.log",
        }
        stack.enter_context(_munge_key())
        if not _munge_works():
            _start_munged(stack, state_dir, logs)
        conf = slurm_conf_text(host, node_config_line(), state_dir)
        stack.enter_context(_replaced_file(SLURM_CONF, conf, 0o644))
        slurmctld = [_which("slurmctld") or "slurmctld", "-D", "-i"]
        stack.enter_context(_daemon("slurmctld", slurmctld, state_dir / "slurmctld.out", logs))
        slurmd = [_which("slurmd") or "slurmd", "-D", "-N", host]
        stack.enter_context(_daemon("slurmd", slurmd, state_dir / "slurmd.out", logs))
        cluster = SlurmCluster(
            partition=PARTITION,
            started_here=True,
            short_partition=SHORT_PARTITION,
            log_files=logs,
        )
        if not _wait_until(lambda: _node_state(host) == "idle", timeout=ready_timeout):
            raise SlurmStartError(
                f"node {host} is {_node_state(host)!r}, not idle, {ready_timeout:.0f} s after "
                f"starting slurmctld and slurmd\n{cluster.log_tail()}"
            )
        try:
            yield cluster
        finally:
            scancel = _which("scancel") or "scancel"
            for partition in (PARTITION, SHORT_PARTITION):
                _run([scancel, f"--partition={partition}"])
