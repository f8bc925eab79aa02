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


class ConfigError(WorkbenchError):
    """An option or a combination of options is invalid; the message names the fields."""


class ModelNotAvailableError(WorkbenchError):
    """A model cannot be found or loaded offline."""
