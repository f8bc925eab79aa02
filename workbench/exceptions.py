"""The few named errors the library raises; the CLI and pages turn them into messages."""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""


class ImportFormatError(WorkbenchError):
    """A file is not a dataset at all (empty, binary, unknown shape); nothing was imported."""


class ExportError(WorkbenchError):
    """A version cannot be written in the requested format."""


class NotFoundError(WorkbenchError):
    """A dataset, version, row or run that does not exist."""


class StoreBusyError(WorkbenchError):
    """Another process held the store's write lock for longer than we were willing to wait."""


class StoreError(WorkbenchError):
    """The store file could not be read or written (an I/O failure, a fatal database error)."""


class DiskFullError(StoreError):
    """The disk (or the file size limit) is full; a write that failed left nothing half-done."""


class PathNotAllowedError(WorkbenchError):
    """A path the app may not read: outside the data folder while any-path imports are off."""


class ConfigError(WorkbenchError):
    """An option or a combination of options is invalid; the message names the fields."""


class ModelNotAvailableError(WorkbenchError):
    """A model cannot be found or loaded offline."""


class Cancelled(Exception):
    """Raised inside a task when the user asked it to stop (not an error: no WorkbenchError)."""
