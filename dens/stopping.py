"""Stopping long work so that a rerun continues it: training, relaxation and simulation save their
state and raise one exception, :class:`StopRequested`, when SIGTERM arrives or the time given by
``stop_at`` comes (a Slurm job ends itself before its time limit: dens.pipeline.slurm).
"""

from __future__ import annotations

import os
import sys

SIGTERM = "SIGTERM"
"""The ``reason`` of a stop asked for by SIGTERM (Slurm's preemption, Ctrl-C of a local job)."""
TIME_LIMIT = "the job's time limit"
"""The ``reason`` of a stop at ``stop_at``: dens.pipeline.slurm requeues the job on it."""
STOPPED_EXIT_CODE = os.EX_TEMPFAIL
"""75, "try again later": the exit status of a stopped process; rerunning it continues."""


class StopRequested(SystemExit):
    """The work was stopped with its state saved; uncaught, this SystemExit ends the process with
    STOPPED_EXIT_CODE. ``reason`` is SIGTERM or TIME_LIMIT; ``where`` says where the work stopped
    (``by <reason> <position>``), and the log gets ``stopped <where>; <continuation>`` unless
    ``announce`` is False (the ranks of a multi-process training other than 0 stop silently)."""

    def __init__(
        self, reason: str, position: str, continuation: str, announce: bool = True
    ) -> None:
        super().__init__(STOPPED_EXIT_CODE)
        self.reason = reason
        self.where = f"by {reason} {position}"
        if announce:
            print(f"stopped {self.where}; {continuation}", file=sys.stderr, flush=True)
