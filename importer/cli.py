"""The ``voicelink-import`` command: a thin layer over the library.

It parses options, calls the library and turns run-level errors into one ``Error: ...``
line on stderr with the documented exit code. Set ``VOICELINK_DEBUG=1`` to see a traceback
for an unexpected error instead.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .errors import ImporterError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_ROWS_FAILED, EXIT_INPUT, EXIT_ABORTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def fail(message: str, code: int) -> None:
    """Print one error line and exit."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def one_line_errors(fn: F) -> F:
    """Turn library errors into one line and an exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ImporterError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("VOICELINK_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            fail(
                f"unexpected {type(exc).__name__}: {first} (set VOICELINK_DEBUG=1 for details)",
                EXIT_INPUT,
            )
        return None

    return wrapper  # type: ignore[return-value]


def input_options(fn: F) -> F:
    """The options every command that reads a spreadsheet takes."""
    fn = click.option(
        "--default-region",
        metavar="XX",
        help="Read national numbers (no country code) as numbers of this region, e.g. IN or US.",
    )(fn)
    fn = click.option(
        "--map",
        "maps",
        multiple=True,
        metavar='"Header Text=field"',
        help="Map a column to a field when its header is not recognised (repeatable).",
    )(fn)
    fn = click.option("--sheet", metavar="NAME", help="The worksheet to read (default: the first that matches).")(
        fn
    )
    return click.argument("file", type=click.Path(path_type=Path, dir_okay=True))(fn)


def build_input(file: Path, sheet: str | None, maps: tuple[str, ...], default_region: str | None) -> Any:
    from .pipeline import InputOptions
    from .validate import parse_column_map

    return InputOptions(
        path=file,
        sheet=sheet,
        column_map=parse_column_map(list(maps)),
        default_region=default_region,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="voicelink-importer")
def main() -> None:
    """Create or update VoiceLink call routing from a carrier's spreadsheet, safely.

    Exit codes: 0 every row done or valid, 1 some rows failed, 2 unusable file or option,
    3 run aborted (key rejected, error rate), 130 interrupted.
    """


@main.command()
@input_options
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Results workbook path."
)
@click.option(
    "--failed-out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Failed-rows file path (default <stem>.failed.xlsx).",
)
@one_line_errors
def validate(
    file: Path,
    sheet: str | None,
    maps: tuple[str, ...],
    default_region: str | None,
    output: Path | None,
    failed_out: Path | None,
) -> None:
    """Check every row of FILE offline and write the results workbook."""
    from .pipeline import ValidateConfig, validate_file

    summary = validate_file(
        ValidateConfig(
            input=build_input(file, sheet, maps, default_region), output=output, failed_out=failed_out
        )
    )
    for line in summary.lines():
        click.echo(line)
    sys.exit(summary.exit_code)


@main.command()
@click.option("--format", "fmt", type=click.Choice(["xlsx", "csv"]), default="xlsx", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Where to write it.")
@one_line_errors
def template(fmt: str, output: Path | None) -> None:
    """Write an empty spreadsheet with the right columns, dropdowns and instructions."""
    from .template import TEMPLATE_FILES, template_csv_text, write_template_xlsx

    path = output or Path(TEMPLATE_FILES[fmt])
    if fmt == "xlsx":
        write_template_xlsx(path)
    else:
        path.write_text(template_csv_text(), encoding="utf-8", newline="")
    click.echo(f"template written: {path}")
