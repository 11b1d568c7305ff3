"""The run-level exceptions. Row problems are values (``model.RowIssue``), never exceptions.

ImporterError                 one clean line for the CLI; exit code on the class
├── InputError                unusable file or option                    (exit 2)
│   ├── UnreadableFileError   the file cannot be read as a spreadsheet   (exit 2)
│   └── OutputError           an output file cannot be saved             (exit 2)
├── ApiError                  the API answered something run-ending      (exit 3)
│   └── AuthError             the key was rejected (401/403)             (exit 3)
├── ResultsNotSavedError      writes were sent, but no results file could be saved (exit 3)
└── NothingToDo               the job has nothing to do, e.g. every run rolled back (exit 0)

A job that stops itself once writes have begun (``--max-error-rate``, a key revoked midway,
Ctrl-C) raises nothing: it settles what is in flight and returns a summary whose
``exit_code`` says so (``vocab.ExitCode``).
"""

from __future__ import annotations

from pathlib import Path

from importer.vocab import ExitCode


class ImporterError(Exception):
    """Base of every error that ends a run; its message is one line for the user."""

    exit_code: ExitCode = ExitCode.INPUT

    def __init__(self, message: str) -> None:
        # Messages quote headers, sheet names and values from the file: escaping their control
        # characters here keeps every message on one line, whichever message quotes them.
        super().__init__(shown(str(message)))


class InputError(ImporterError):
    """A file or option that cannot be used."""

    exit_code = ExitCode.INPUT


class UnreadableFileError(InputError):
    """The input file cannot be read as a spreadsheet."""


class OutputError(InputError):
    """An output file cannot be saved: "cannot save PATH: REASON" (the file, never a temp file)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot save {path}: {reason}")
        self.path = path
        self.reason = reason
        """Why, in plain words ("the disk is full"), for messages that name the file themselves."""


class ApiError(ImporterError):
    """The API answered in a way that ends the run."""

    exit_code = ExitCode.ABORTED


class AuthError(ApiError):
    """The API key was rejected."""


class NothingToDo(ImporterError):
    """Nothing to do, and that is no failure (a rollback of a journal whose runs were all rolled back)."""

    exit_code = ExitCode.OK


class ResultsNotSavedError(ImporterError):
    """Writes were sent (the journal has them) but the results could be saved nowhere."""

    exit_code = ExitCode.ABORTED


_ESCAPES = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))},
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def shown(text: str) -> str:
    """Write text from a file (a header, a sheet name) so it stays on one line in a message.

    A header typed as "DID" + Alt-Enter + "Number" holds a newline; printed raw it would break
    the one-line error. Control characters are shown as Python escapes (``DID\\nNumber``).
    """
    return text.translate(_ESCAPES)
