"""The flags several commands share, and the option objects (``importer.options``) built from them.

``input_options`` (what reading a spreadsheet takes) and ``connect_options`` (the key, base URL,
pacing and asking) keep their values in the click context: ``build_input`` and ``build_connect``
turn them into ``InputOptions`` and ``ConnectOptions``, so a command takes only its own flags and
an option added here needs no change to any command's signature.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from importer.account.preflight import DEFAULT_BASE_URL
from importer.cli.output import ask
from importer.engine.apply import ERROR_RATE_MIN_WRITES
from importer.options import ConnectOptions, InputOptions, SendOptions
from importer.vocab import OnExisting

F = TypeVar("F", bound=Callable[..., Any])

SEND_DEFAULTS = SendOptions()
"""The library's defaults for --requests-per-minute, --concurrency, --timeout."""

FORCE_HELP = (
    "Overwrite <stem>.results.xlsx and <stem>.failed.xlsx left by an earlier run; without it they "
    "are kept and this run writes <stem>.results.<YYYYmmdd-HHMMSS>.xlsx. A path given with -o or "
    "--failed-out is always overwritten."
)


def _keep(group: str, ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta[f"{group}.{param.name}"] = value
    return value


def _kept(group: str) -> Callable[..., Callable[[F], F]]:
    """A ``click.option`` whose value is kept in the context under ``group``, not passed to the command."""

    def option(*decls: str, **attrs: Any) -> Callable[[F], F]:
        return click.option(*decls, expose_value=False, callback=functools.partial(_keep, group), **attrs)

    return option


_input_option = _kept("input")
_connect_option = _kept("connect")


def _meta() -> dict[str, Any]:
    """The running command's kept options (none outside a command, e.g. a library call)."""
    return ctx.meta if (ctx := click.get_current_context(silent=True)) is not None else {}


def input_options(fn: F) -> F:
    """The options every command that reads a spreadsheet takes.

    They reach ``build_input`` through the click context, so a command takes only FILE and an input
    option added here needs no change to any command's signature.
    """
    fn = _input_option(
        "--default-region",
        metavar="XX",
        help="Read national numbers (no country code) as numbers of this region, e.g. IN or US.",
    )(fn)
    fn = _input_option(
        "--ignore-column",
        "ignore_columns",
        multiple=True,
        metavar="NAME",
        help="Leave a column out of matching, by header text or letter (repeatable).",
    )(fn)
    fn = _input_option(
        "--map",
        "maps",
        multiple=True,
        metavar='"Header Text=field"',
        help='Map a column (header text or letter: "C=did_number") to a field; wins over '
        "header matching (repeatable).",
    )(fn)
    fn = _input_option(
        "--sheet",
        multiple=True,
        metavar="NAME",
        help="A worksheet to read (repeatable: several make one table). Default: the one sheet whose "
        "headers name the fields; with several such sheets, choose or pass --all-sheets.",
    )(fn)
    fn = _input_option(
        "--all-sheets",
        is_flag=True,
        help="Read every worksheet whose headers name the fields, as one table.",
    )(fn)
    fn = _input_option(
        "--encoding",
        metavar="NAME",
        help="The text encoding of a CSV, e.g. cp1251 or iso-8859-7 (default: detected).",
    )(fn)
    fn = _input_option(
        "--skip-hidden-rows",
        is_flag=True,
        help="Skip rows hidden in Excel (filtered out or hidden) instead of importing them.",
    )(fn)
    return click.argument("file", type=click.Path(path_type=Path, dir_okay=True))(fn)


def build_input(file: Path) -> InputOptions:
    """Return the InputOptions for FILE from the ``input_options`` of the running command, if any."""
    from importer.read.text import check_encoding
    from importer.validate.columns import parse_column_map

    meta = _meta()
    encoding = meta.get("input.encoding")
    return InputOptions(
        path=file,
        sheets=tuple(meta.get("input.sheet", ())),
        all_sheets=bool(meta.get("input.all_sheets")),
        column_map=parse_column_map(list(meta.get("input.maps", ()))),
        default_region=meta.get("input.default_region"),
        encoding=check_encoding(encoding) if encoding else None,
        skip_hidden_rows=bool(meta.get("input.skip_hidden_rows")),
        ignore_columns=tuple(meta.get("input.ignore_columns", ())),
    )


def _apply_options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(fn: F) -> F:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


connect_options = _apply_options(
    _connect_option(
        "--base-url",
        envvar="VOCOBASE_BASE_URL",
        default=DEFAULT_BASE_URL,
        show_default=True,
        help="API root (env VOCOBASE_BASE_URL).",
    ),
    _connect_option("--api-key", help="API key (prefer the env VOCOBASE_API_KEY: flags show in `ps`)."),
    _connect_option(
        "--connection-id",
        envvar="VOCOBASE_CONNECTION_ID",
        help="VoiceLink connection UUID when several are active (env VOCOBASE_CONNECTION_ID).",
    ),
    _connect_option(
        "--requests-per-minute",
        type=click.IntRange(min=1),
        default=SEND_DEFAULTS.requests_per_minute,
        show_default=True,
    ),
    _connect_option(
        "--concurrency", type=click.IntRange(1, 16), default=SEND_DEFAULTS.concurrency, show_default=True
    ),
    _connect_option(
        "--timeout", type=click.FloatRange(min=0.1), default=SEND_DEFAULTS.timeout, show_default=True
    ),
    _connect_option(
        "--max-error-rate",
        type=click.FloatRange(0, 1),
        help="Stop when more than this share of writes failed "
        f"(once {ERROR_RATE_MIN_WRITES} are done), e.g. 0.2.",
    ),
    _connect_option("--dry-run", is_flag=True, help="Plan only: show what would be sent; send nothing."),
    _connect_option("--yes", is_flag=True, help="Do not ask before sending."),
    # The one shared flag a command takes as a parameter: it decides how the command shows progress.
    click.option("--quiet", is_flag=True, help="No progress bar (rollback: no plan lines either)."),
)
"""The options of every command that talks to the API; all but --quiet reach ``build_connect``."""

api_options = _apply_options(
    click.option(
        "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Results workbook, .xlsx."
    ),
    click.option(
        "--failed-out", type=click.Path(path_type=Path, dir_okay=False), help="Failed-rows file, .xlsx."
    ),
    click.option("--force", is_flag=True, help=FORCE_HELP),
    connect_options,
    click.option(
        "--on-existing",
        type=click.Choice([c.value for c in OnExisting]),
        default=OnExisting.UPDATE.value,
        show_default=True,
        help="A DID whose routing exists and differs: "
        + ", ".join(c.label for c in list(OnExisting)[:-1])
        + f" or {list(OnExisting)[-1].label}.",
    ),
    click.option("--journal", type=click.Path(path_type=Path, dir_okay=False), help="Journal path."),
)
"""The options of a job that writes workbooks and sends: ``run``'s."""


def build_connect(*, details: bool = True) -> ConnectOptions:
    """Return the ConnectOptions from the ``connect_options`` of the running command.

    Args:
        details: Whether the question before sending lists the plan's details first (rollback
            prints its plan lines itself).
    """
    meta = _meta()
    dry_run = bool(meta.get("connect.dry_run"))
    requests_per_minute = meta.get("connect.requests_per_minute", SEND_DEFAULTS.requests_per_minute)
    return ConnectOptions(
        api_key=_api_key(meta.get("connect.api_key")),
        base_url=meta.get("connect.base_url", DEFAULT_BASE_URL),
        connection_id=meta.get("connect.connection_id"),
        requests_per_minute=requests_per_minute,
        concurrency=meta.get("connect.concurrency", SEND_DEFAULTS.concurrency),
        timeout=meta.get("connect.timeout", SEND_DEFAULTS.timeout),
        max_error_rate=meta.get("connect.max_error_rate"),
        dry_run=dry_run,
        confirm=_confirm_callback(bool(meta.get("connect.yes")), dry_run, requests_per_minute, details),
    )


def _api_key(flag: str | None) -> str:
    """The key from --api-key (with a warning) or VOCOBASE_API_KEY."""
    if flag:
        click.echo(
            "Warning: --api-key is visible to other users in the process list; prefer VOCOBASE_API_KEY.",
            err=True,
        )
        return flag
    return os.environ.get("VOCOBASE_API_KEY", "")


def _confirm_callback(
    yes: bool, dry_run: bool, requests_per_minute: int, details: bool = True
) -> Callable[[Any], bool] | None:
    """Ask before sending only on a terminal, and not with --yes or --dry-run."""
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if not interactive or yes or dry_run:
        return None
    estimate = SendOptions(requests_per_minute=requests_per_minute).estimate
    return functools.partial(ask, estimate=estimate, details=details)
