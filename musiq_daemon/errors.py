"""Errors that reach users.

Every error a user can cause (a bad file, a bad option, a missing model) is a :class:`MusiqError`: its
message is one line that says what went wrong and how to fix it. The CLI prints that line and exits
with :attr:`MusiqError.exit_code`; it never shows a traceback for one of these.
"""

from __future__ import annotations


class MusiqError(Exception):
    """Base class: a one-line, user-facing message."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(MusiqError):
    """A bad option, argument or configuration value."""

    exit_code = 2


class CheckpointError(MusiqError):
    """A checkpoint file is missing, truncated, not an npz, or not a MUSIQ checkpoint of the expected kind."""

    exit_code = 3


class ModelNotInstalledError(MusiqError):
    """A model was asked for that has not been converted/installed in the model directory."""

    exit_code = 3


class ModelFileError(MusiqError):
    """An installed .tflite model (or its metadata) is unreadable or inconsistent."""

    exit_code = 3


class DecodeError(MusiqError):
    """An image file could not be read or decoded (corrupt, truncated, unsupported, too large)."""

    exit_code = 4


class DeviceError(MusiqError):
    """The requested inference device is not available."""

    exit_code = 5


class ConversionError(MusiqError):
    """Converting a checkpoint to TFLite failed (or the `convert` extra is not installed)."""

    exit_code = 6


class DownloadError(MusiqError):
    """Fetching an official checkpoint failed (offline, HTTP error, checksum mismatch)."""

    exit_code = 7


class WriteError(MusiqError):
    """Writing a photo or sidecar failed; the original file is unchanged."""

    exit_code = 9


class OutsideRootError(WriteError):
    """A path that symbolic links lead out of the folder musiqd was given: it is neither read nor written."""

    exit_code = 10


class ReadOnlyError(WriteError):
    """The file or its directory cannot be written (read-only mount, no permission, foreign owner)."""

    exit_code = 10


class DiskFullError(WriteError):
    """No space (or quota) left to write the new version of a file."""

    exit_code = 11


class FileChangedError(WriteError):
    """Another program changed, moved or created the file while musiqd was writing it; retry later."""

    exit_code = 12


class IndexDatabaseError(MusiqError):
    """The index database cannot be opened, is from a newer version, or a query is invalid."""

    exit_code = 8


class ConfigError(UsageError):
    """The configuration (file, environment variable or option) is invalid; the message says where."""

    exit_code = 2


class AlreadyRunningError(MusiqError):
    """Another musiqd daemon already watches with the same index database (one per database)."""

    exit_code = 13
