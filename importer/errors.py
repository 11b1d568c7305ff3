"""The run-level exceptions. Row problems are values (``model.RowIssue``), never exceptions.

ImporterError                 one clean line for the CLI; exit code on the class
├── InputError                unusable file or option                    (exit 2)
│   ├── UnreadableFileError   the file cannot be read as a spreadsheet   (exit 2)
│   └── OutputError           a results file cannot be saved              (exit 2)
├── ApiError                  the API answered something run-ending      (exit 3)
│   └── AuthError             the key was rejected (401/403)             (exit 3)
└── AbortedError              the run stopped itself (error rate, ...)   (exit 3)
"""

from __future__ import annotations


class ImporterError(Exception):
    """Base of every error that ends a run; its message is one line for the user."""

    exit_code = 2


class InputError(ImporterError):
    """A file or option that cannot be used."""

    exit_code = 2


class UnreadableFileError(InputError):
    """The input file cannot be read as a spreadsheet."""


class OutputError(InputError):
    """A results file cannot be saved; the message names the file and a plain reason."""


class ApiError(ImporterError):
    """The API answered in a way that ends the run."""

    exit_code = 3


class AuthError(ApiError):
    """The API key was rejected."""


class AbortedError(ImporterError):
    """The run stopped itself before finishing (e.g. --max-error-rate)."""

    exit_code = 3
