"""voicelink-importer: create or update VoiceLink call routing from a spreadsheet, safely.

The library's jobs, one call each: ``run_import(config)`` (read -> validate -> resolve -> plan
-> apply -> results; ``await run_import_async(config)`` inside an event loop),
``validate_file(config)`` for the offline half, ``rollback_run(config)`` to undo a run and
``export_routing(config)`` to write the account's routing as a workbook ``run`` imports unchanged;
``load_and_validate(options, edits)`` reads and checks a table (with cell corrections). Every
option object is in ``importer.options``. ``importer.jobs.rollback`` is the rollback module.
"""

from importer.engine.apply import Progress
from importer.engine.plan import Plan, Write
from importer.errors import (
    ApiError,
    AuthError,
    ImporterError,
    InputError,
    ResultsNotSavedError,
    UnreadableFileError,
)
from importer.jobs.export import ExportSummary, export_routing
from importer.jobs.rollback import rollback_run, rollback_run_async
from importer.jobs.run import run_import, run_import_async
from importer.jobs.summary import RunSummary
from importer.jobs.validate import CellEdit, load_and_validate, validate_file
from importer.model import RawTable, RoutingRow, RowIssue, RowOutcome, ValidationReport
from importer.options import (
    ConnectOptions,
    ExportConfig,
    ImportConfig,
    InputOptions,
    RollbackConfig,
    SendOptions,
    ValidateConfig,
)
from importer.vocab import Action, ExitCode, OnExisting, ReasonKind, Status

__all__ = [
    "Action",
    "ApiError",
    "AuthError",
    "CellEdit",
    "ConnectOptions",
    "ExitCode",
    "ExportConfig",
    "ExportSummary",
    "ImportConfig",
    "ImporterError",
    "InputError",
    "InputOptions",
    "OnExisting",
    "Plan",
    "Progress",
    "RawTable",
    "ReasonKind",
    "ResultsNotSavedError",
    "RollbackConfig",
    "RoutingRow",
    "RowIssue",
    "RowOutcome",
    "RunSummary",
    "SendOptions",
    "Status",
    "UnreadableFileError",
    "ValidateConfig",
    "ValidationReport",
    "Write",
    "export_routing",
    "load_and_validate",
    "rollback_run",
    "rollback_run_async",
    "run_import",
    "run_import_async",
    "validate_file",
]
