"""Stopping a training run (dens.stopping): on SIGTERM or at a wall-clock time (``stop_flag``),
with last.pt saved (``training_stopped``)."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from dens.stopping import SIGTERM, TIME_LIMIT, StopRequested
from dens.training.state import Progress


class StopFlag(threading.Event):
    """Set by SIGTERM or at the ``stop_at`` time; ``reason`` says which came first."""

    reason = SIGTERM

    def stop(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
            self.set()


@contextlib.contextmanager
def stop_flag(stop_at: float | None) -> Iterator[StopFlag]:
    """A flag set by SIGTERM, or by a timer at the wall-clock time ``stop_at`` (time.time()),
    while the block runs (the handler is restored and the timer cancelled afterwards)."""
    flag = StopFlag()
    timer = None
    if stop_at is not None:
        timer = threading.Timer(max(0.0, stop_at - time.time()), flag.stop, (TIME_LIMIT,))
        timer.daemon = True
        timer.start()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.stop(SIGTERM))
    try:
        yield flag
    finally:
        if timer is not None:
            timer.cancel()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def training_stopped(
    checkpoint: Path, progress: Progress, reason: str, announce: bool
) -> StopRequested:
    """The stop of a training whose last.pt (``checkpoint``) was just saved."""
    return StopRequested(
        reason,
        f"after epoch {progress.epoch} + {progress.batch_in_epoch} batches (step {progress.step})",
        f"saved {checkpoint}; rerunning the job resumes there",
        announce,
    )
