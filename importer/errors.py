"""The run-level exceptions. Row problems are values (``model.RowIssue``), never exceptions.

ImporterError                 one clean line for the CLI; exit code on the class
├── InputError                unusable file or option                    (exit 2)
│   └── UnreadableFileError   the file cannot be read as a spreadsheet   (exit 2)
├── ApiError                  the API answered something run-ending      (exit 3)
│   └── AuthError             the key was rejected (401/403)             (exit 3)
└── ResultsNotSavedError      writes were sent, but no results file could be saved (exit 3)

A job that stops itself once writes have begun (``--max-error-rate``, a key revoked midway,
Ctrl-C) raises nothing: it settles what is in flight and returns a summary whose
``exit_code`` says so (``vocab.ExitCode``).
"""

from __future__ import annotations

from .vocab import ExitCode


class ImporterError(Exception):
    """Base of every error that ends a run; its message is one line for the user."""

    exit_code: ExitCode = ExitCode.INPUT


class InputError(ImporterError):
    """A file or option that cannot be used."""

    exit_code = ExitCode.INPUT


class UnreadableFileError(InputError):
    """The input file cannot be read as a spreadsheet."""


class ApiError(ImporterError):
    """The API answered in a way that ends the run."""

    exit_code = ExitCode.ABORTED


class AuthError(ApiError):
    """The API key was rejected."""


class ResultsNotSavedError(ImporterError):
    """Writes were sent (the journal has them) but the results could be saved nowhere."""

    exit_code = ExitCode.ABORTED
