"""The library's own errors: what a user can cause, each with a message that names the file, key,
experiment or value at fault. The ``dens`` command prints them as one line (exit status 2)."""

from __future__ import annotations


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
    """A data file (a prepared aselmdb split, a checkpoint) is missing or damaged; the message
    names the file and the command that rebuilds it."""


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
    writable (dens.atomic_files); the message names the operation, the folder and its free
    space."""
