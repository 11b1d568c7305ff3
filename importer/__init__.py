"""voicelink-importer: create or update VoiceLink call routing from a spreadsheet, safely.

The library's whole job in one call: ``run_import(config)`` (read -> validate -> resolve ->
plan -> apply -> results), or ``validate_file(config)`` for the offline half.
"""

from .errors import AbortedError, ApiError, AuthError, ImporterError, InputError, UnreadableFileError
from .model import Action, RawTable, RoutingRow, RowIssue, RowOutcome, Status, ValidationReport
from .pipeline import InputOptions, RunSummary, ValidateConfig, validate_file
from .rollback import RollbackConfig, rollback
from .run import ImportConfig, OnExisting, Progress, run_import

__all__ = [
    "AbortedError",
    "Action",
    "ApiError",
    "AuthError",
    "ImportConfig",
    "ImporterError",
    "InputError",
    "InputOptions",
    "OnExisting",
    "Progress",
    "RawTable",
    "RollbackConfig",
    "RoutingRow",
    "RowIssue",
    "RowOutcome",
    "RunSummary",
    "Status",
    "UnreadableFileError",
    "ValidateConfig",
    "ValidationReport",
    "rollback",
    "run_import",
    "validate_file",
]
