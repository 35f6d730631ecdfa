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
