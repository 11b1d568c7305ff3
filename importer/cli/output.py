"""What the command prints: one-line errors, lines that survive a closed stdout, the summary, the question.

Every command is wrapped in ``one_line_errors``: a library error is one ``Error: ...`` line on
stderr and its documented exit code, never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from importer.errors import ImporterError, NothingToDo
from importer.vocab import ExitCode

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: ExitCode) -> None:
    """Print one error line and exit."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def one_line_errors(fn: F) -> F:
    """Turn library errors into one line and an exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NothingToDo as exc:  # said plainly, not as an error: exit 0
            say(str(exc))
            sys.exit(exc.exit_code)
        except ImporterError as exc:
            fail(str(exc), exc.exit_code)
        except BrokenPipeError:
            # The reader of our output (e.g. `| head`) left: stop quietly, as other tools do.
            silence_stdout()
            sys.exit(ExitCode.ROWS_FAILED)
        except (KeyboardInterrupt, click.Abort):
            fail(
                "interrupted before anything was sent" if _before_writes(fn) else "interrupted",
                ExitCode.INTERRUPTED,
            )
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("VOICELINK_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            fail(
                f"unexpected {type(exc).__name__}: {first} (set VOICELINK_DEBUG=1 for details)",
                ExitCode.INPUT,
            )
        return None

    return wrapper  # type: ignore[return-value]


def silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush meets no closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _before_writes(fn: Callable[..., Any]) -> bool:
    # run/rollback settle Ctrl-C themselves once writes start (exit 130 with a workbook), so a
    # KeyboardInterrupt that reaches here came before the first write.
    return fn.__name__ in ("run", "rollback")


def ask(plan: Any, estimate: Callable[[int], str], details: bool = True) -> bool:
    """Show the plan on stderr and ask whether to send it (no is the default)."""
    if details:  # e.g. the rows changed since an earlier run: seen before anything is sent
        for line in plan.details[:20]:
            click.echo(f"  {line}", err=True)
        if len(plan.details) > 20:
            click.echo(f"  ... and {len(plan.details) - 20} more", err=True)
    click.echo(f"Plan: {plan.text()}", err=True)
    writes = len(plan.writes)
    # The plan line just above carries the cost (writes, time at the rate): the question need not repeat it.
    what = ("this write" if writes == 1 else f"these {writes:,} writes") if plan.cost else estimate(writes)
    return click.confirm(f"Send {what} now?", default=False, err=True)


def say(line: str) -> None:
    """Print a line on stdout; once its reader has gone (`| head -1`), drop the rest and carry on.

    A closed stdout must never stop or change a job: a rollback whose plan lines meet a closed
    pipe still sends, writes its workbook and exits with its own code.
    """
    try:
        click.echo(line)
    except BrokenPipeError:
        silence_stdout()


def print_summary(summary: Any) -> None:
    """Print a job's summary lines on stdout (a closed stdout keeps the job's exit code)."""
    try:
        for line in summary.lines():
            click.echo(line)
    except BrokenPipeError:
        # `| head` stopped reading: the job is done, so keep its exit code and stay quiet.
        silence_stdout()
