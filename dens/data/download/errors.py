"""The errors and warnings of downloading, verifying and extracting archives."""

from pathlib import Path

from dens.errors import DensError


class DownloadError(DensError, RuntimeError):
    """A URL could not be fetched (the message names the URL)."""


class ChecksumMismatchError(DownloadError):
    """A file's digest differs from the expected one.

    Attributes: ``path`` (the file as it was named), ``expected``, ``actual``, ``algorithm`` and
    ``moved_to`` (where the corrupt bytes were kept for inspection).
    """

    def __init__(
        self, path: Path, expected: str, actual: str, algorithm: str, moved_to: Path, source: str
    ) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        self.algorithm, self.moved_to = algorithm, moved_to
        super().__init__(
            f"checksum mismatch for {path} ({source}): expected {algorithm} {expected}, "
            f"got {actual}; the corrupt file was moved to {moved_to} and will not be reused"
        )


class UnsafeArchiveError(DensError, ValueError):
    """An archive member would be written outside the extraction directory."""

    def __init__(self, archive: Path, member: str, reason: str) -> None:
        self.archive, self.member = archive, member
        super().__init__(f"refusing to extract {archive}: member {member!r} {reason}")


class DamagedArchiveError(DownloadError):
    """An archive could not be read while extracting (truncated or corrupt); nothing was
    extracted."""


class MalformedDownloadError(DownloadError):
    """A file without a published checksum failed the size or format check before its digest
    was recorded (an HTML error page, a truncated body, a wrong file); it was not kept."""


class UnverifiedDownloadWarning(UserWarning):
    """A file was used without a published checksum to verify it against."""
