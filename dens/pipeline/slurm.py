"""Runs longer than a Slurm job may last continue across jobs on their own.

A cluster caps a job's wall time (often at 24-72 h) while the paper's runs take up to ~150 h of
their 16-32 GPUs. The Slurm profile's ``max_job_hours`` caps every training job's time limit;
such a job trains until ``margin`` seconds before its end time (read from ``squeue``), saves
last.pt (:func:`dens.train.train`'s ``stop_at``, the same path as on SIGTERM) and requeues itself
(``scontrol requeue``): Slurm ends it and starts the same job again, with the same job id, after
its requeue delay (slurm.conf's ``AuthInfo=cred_expire``, 120 s by default); the training resumes
from last.pt, bit for bit as after any stop, until its epochs are done. Snakemake's Slurm
executor sees one job that is pending or running all along, so nothing else changes.

Why this mechanism: with snakemake-executor-plugin-slurm 2.8 a job that ends with TIMEOUT is a
failed job (its outputs are deleted and the workflow stops), while a requeued job keeps its
state PENDING/RUNNING, which the executor simply keeps waiting on. The job measures its own
remaining time rather than waiting for Slurm's ``--signal``, which Slurm may send up to a
minute early or late.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from dens.errors import ConfigError
from dens.stopping import TIME_LIMIT, StopRequested

SQUEUE_FORMAT = "%e"  # the job's end time: start + time limit
HISTORY_FILE = "slurm_starts.log"
"""Per run (training) or per simulation directory: one line per start and stop of its job."""
REQUEUE_WAIT_S = 300
"""After ``scontrol requeue`` the process waits to be ended by Slurm (SIGTERM, then SIGKILL after
KillWait), so that the job's last words are Slurm's, not a failed command's."""


def job_id(environ: Mapping[str, str] = os.environ) -> str:
    """The Slurm job this process runs in; ConfigError outside Slurm."""
    job = environ.get("SLURM_JOB_ID")
    if not job:
        raise ConfigError(
            "continuing across Slurm jobs needs a Slurm job (SLURM_JOB_ID is not set); "
            "outside Slurm, train without --continue-before-time-limit"
        )
    return job


def restart_count(job: str) -> int:
    """How often the job was requeued (``Restarts`` of ``scontrol show job``; Slurm's
    SLURM_RESTART_COUNT is not seen inside job steps: Snakemake's Slurm executor drops the
    SLURM_* variables of the job for its steps)."""
    result = subprocess.run(
        ["scontrol", "--oneliner", "show", "job", job], capture_output=True, text=True, timeout=60
    )
    found = re.search(r"\bRestarts=(\d+)", result.stdout)
    if found is None:
        raise ConfigError(f"Slurm job {job}: scontrol shows no Restarts count: {result.stderr}")
    return int(found.group(1))


def job_end_time(job: str) -> float:
    """The job's end time (seconds since the epoch) as Slurm's controller has it."""
    result = subprocess.run(
        ["squeue", "--noheader", "--jobs", job, "--format", SQUEUE_FORMAT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = result.stdout.strip()
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(
            f"Slurm job {job}: no end time from squeue ({text or result.stderr.strip()!r}); "
            "continuing across jobs needs a job with a time limit"
        ) from None


def requeue(job: str) -> None:
    """Ask Slurm to end this job and queue it again (it needs ``--requeue``, which the Slurm
    profile's ``slurm-requeue: true`` passes)."""
    result = subprocess.run(
        ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise ConfigError(f"scontrol requeue {job} failed: {result.stderr.strip()}")


@contextlib.contextmanager
def continuation(
    margin_s: float | None, history: Path, announce: bool = True
) -> Iterator[float | None]:
    """Yields the time (time.time()) at which the work inside should stop, ``margin_s`` seconds
    before this Slurm job's end, or None when ``margin_s`` is None (no continuation). A stop at
    that time (dens.stopping.StopRequested whose ``reason`` is TIME_LIMIT) requeues the job, from
    the process that ``announce``s (rank 0 of a multi-process training), and waits for Slurm to end
    it.

    ``history`` (in the run's directory) gets a line per start and per stop of the job, and each
    start prints the earlier ones first: Snakemake empties a job's log when the requeued job
    starts again, the history keeps where each start began and stopped."""
    if margin_s is None:
        yield None
        return
    job = job_id()
    end = job_end_time(job)
    start = restart_count(job) + 1
    if announce:
        if history.is_file():
            print(f"earlier starts ({history}):\n{history.read_text()}", file=sys.stderr)
        _record(
            history,
            f"Slurm job {job}, start {start}: began {time.strftime('%Y-%m-%d %H:%M:%S')}, ends "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(end))}; stops {margin_s:.0f} s "
            "before, saves its state and requeues the job, which resumes there",
        )
    try:
        yield end - margin_s
    except StopRequested as stopped:
        if stopped.reason == TIME_LIMIT and announce:
            _record(history, f"Slurm job {job}, start {start}: stopped {stopped.where}; requeued")
            requeue(job)
            time.sleep(REQUEUE_WAIT_S)
        raise


def _record(history: Path, line: str) -> None:
    """Print ``line`` to stderr (the job's log) and append it to ``history``."""
    print(line, file=sys.stderr, flush=True)
    history.parent.mkdir(parents=True, exist_ok=True)
    with open(history, "a") as handle:
        handle.write(line + "\n")
