"""The library's own errors: what a user can cause, each with a message that names the file, key,
experiment or value at fault. The ``dens`` command prints them as one line (exit status 2)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


class DensError(Exception):
    """Base class of the errors ``dens`` reports to a user as one line."""


class ConfigError(DensError, ValueError):
    """Invalid configuration; the message names the file, the key and the value."""


class NotAvailableError(DensError):
    """A stage, dataset family or model family that this version of dens does not implement
    yet; the message names it and what is missing."""


class ModelNotAvailableError(NotAvailableError):
    """The model family of an experiment is not implemented in this version of dens."""


class DataError(DensError):
    """A data file (a prepared aselmdb split, a checkpoint) is missing or damaged: the message
    names the file (``path``), and ends with how to make it again (``remedy``, when given). The
    pipeline's ``dens`` command replaces a generic remedy with the Snakemake target that remakes
    a file of its layout (dens.pipeline.remedies)."""

    def __init__(
        self, message: str, path: str | os.PathLike | None = None, remedy: str = ""
    ) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.remedy = remedy

    def __str__(self) -> str:
        message = super().__str__()
        remedy = (_remedy_for(self) if _remedy_for is not None else None) or self.remedy
        return f"{message}; {remedy}" if remedy else message


_remedy_for: Callable[[DataError], str | None] | None = None


def name_remedies(remedy_for: Callable[[DataError], str | None] | None) -> None:
    """Let ``remedy_for(error)`` say how to make a missing or damaged file again, in place of the
    library's generic remedy wherever it returns one (None: keep it). The pipeline's ``dens``
    command names the Snakemake target of a file in its layout (dens.pipeline.remedies); a fault
    handler's precomputed line (dens.data.aselmdb) takes it too, which a rewrite of the printed
    message could not."""
    global _remedy_for
    _remedy_for = remedy_for


class MissingDataError(DataError, FileNotFoundError):
    """A data file does not exist (also a FileNotFoundError)."""


class InvalidDataError(DataError, ValueError):
    """A data file can be read but its content is not what dens needs (also a ValueError)."""


class CheckpointError(DataError, ValueError):
    """A checkpoint file is damaged or is not a dens checkpoint (also a ValueError)."""


class DeviceError(DensError):
    """A torch device that this machine does not have (``--device cuda`` without CUDA)."""


class UnsupportedStructureError(DensError, ValueError):
    """A structure the trained model cannot answer for (an element absent from its training
    data, atoms closer than the calculator's minimum distance); the message names them."""


class DiskError(DensError):
    """A file could not be written: the file system is full or read-only, or the folder is not
    writable (dens.atomic_files), or what a step will write does not fit in its folder's free
    space (dens.data.disk_space, checked before it starts); the message names the operation or
    the file, the folder and its free space."""
