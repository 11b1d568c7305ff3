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
        except (KeyboardInterrupt, click.Abort):
            fail(
                "interrupted before anything was sent" if _before_writes(fn) else "interrupted",
                EXIT_INTERRUPTED,
            )
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


def _before_writes(fn: Callable[..., Any]) -> bool:
    # run/rollback settle Ctrl-C themselves once writes start (exit 130 with a workbook), so a
    # KeyboardInterrupt that reaches here came before the first write.
    return fn.__name__ in ("run", "rollback")


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
    fn = click.option(
        "--sheet", metavar="NAME", help="The worksheet to read (default: the first that matches)."
    )(fn)
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


def _progress_bar(quiet: bool) -> tuple[Any, Any]:
    """A tqdm bar on stderr fed by the library's progress callback (the library never imports tqdm)."""
    if quiet:
        return None, None
    from tqdm import tqdm

    bar: Any = None

    def update(p: Any) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=p.total, unit="row", file=sys.stderr, dynamic_ncols=True, desc="sending")
        bar.n = p.done
        eta = f"{int(p.eta_seconds // 60)}m{int(p.eta_seconds % 60):02d}s" if p.eta_seconds else "0s"
        bar.set_postfix_str(f"ok {p.succeeded}, failed {p.failed}, rate-limit ETA {eta}", refresh=False)
        bar.refresh()

    def close() -> None:
        if bar is not None:
            bar.close()

    return update, close


def _ask(counts: Any) -> bool:
    click.echo(f"Plan: {counts.text()}", err=True)
    return click.confirm("Send these writes now?", default=False, err=True)


def _print_summary(summary: Any) -> None:
    for line in summary.lines():
        click.echo(line)


def _send_and_report(job: Callable[..., Any], config: Any, quiet: bool) -> None:
    """Run an API job behind the progress bar, print its summary and exit with its code."""
    update, close = _progress_bar(quiet)
    try:
        summary = job(config, on_progress=update)
    finally:
        if close is not None:
            close()
    _print_summary(summary)
    sys.exit(summary.exit_code)


def _apply_options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(fn: F) -> F:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


_connect_options = _apply_options(
    click.option(
        "--base-url",
        envvar="VOCOBASE_BASE_URL",
        default="https://api.vocobase.com/api/v2",
        show_default=True,
        help="API root (env VOCOBASE_BASE_URL).",
    ),
    click.option("--api-key", help="API key (prefer the env VOCOBASE_API_KEY: flags show in `ps`)."),
    click.option(
        "--connection-id",
        envvar="VOCOBASE_CONNECTION_ID",
        help="VoiceLink connection UUID when several are active (env VOCOBASE_CONNECTION_ID).",
    ),
    click.option("--requests-per-minute", type=click.IntRange(min=1), default=60, show_default=True),
    click.option("--concurrency", type=click.IntRange(1, 16), default=4, show_default=True),
    click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True),
    click.option("--dry-run", is_flag=True, help="Plan only: show what would be sent; send nothing."),
    click.option("--yes", is_flag=True, help="Do not ask before sending."),
    click.option("--quiet", is_flag=True, help="No progress bar."),
)

_api_options = _apply_options(
    click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Results workbook."),
    click.option("--failed-out", type=click.Path(path_type=Path, dir_okay=False), help="Failed-rows file."),
    _connect_options,
    click.option(
        "--on-existing",
        type=click.Choice(["update", "skip", "fail"]),
        default="update",
        show_default=True,
        help="A DID whose routing exists and differs: update it, skip the row, or fail it.",
    ),
    click.option("--journal", type=click.Path(path_type=Path, dir_okay=False), help="Journal path."),
    click.option(
        "--max-error-rate",
        type=click.FloatRange(0, 1),
        help="Stop when more than this share of writes failed (once 20 are done), e.g. 0.2.",
    ),
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


def _confirm_callback(yes: bool, dry_run: bool) -> Callable[[Any], bool] | None:
    """Ask before sending only on a terminal, and not with --yes or --dry-run."""
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    return _ask if (interactive and not yes and not dry_run) else None


@main.command()
@input_options
@_api_options
@one_line_errors
def run(
    file: Path,
    sheet: str | None,
    maps: tuple[str, ...],
    default_region: str | None,
    output: Path | None,
    failed_out: Path | None,
    base_url: str,
    api_key: str | None,
    connection_id: str | None,
    requests_per_minute: int,
    concurrency: int,
    timeout: float,
    on_existing: str,
    dry_run: bool,
    yes: bool,
    journal: Path | None,
    max_error_rate: float | None,
    quiet: bool,
) -> None:
    """Create or update the routing of every row of FILE through the API."""
    from .run import ImportConfig, run_import

    config = ImportConfig(
        input=build_input(file, sheet, maps, default_region),
        api_key=_api_key(api_key),
        base_url=base_url,
        output=output,
        failed_out=failed_out,
        connection_id=connection_id,
        requests_per_minute=requests_per_minute,
        concurrency=concurrency,
        timeout=timeout,
        on_existing=on_existing,
        dry_run=dry_run,
        journal=journal,
        max_error_rate=max_error_rate,
        confirm=_confirm_callback(yes, dry_run),
    )
    _send_and_report(run_import, config, quiet)


@main.command()
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Results workbook path."
)
@click.option("--sample", type=click.Choice(["xlsx", "csv"]), default="xlsx", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@one_line_errors
def demo(output: Path | None, sample: str, quiet: bool) -> None:
    """Import the sample sheet into an in-process sandbox, end to end, and show the results."""
    import tempfile

    import httpx

    from .run import ImportConfig, run_import
    from .sandbox import DEFAULT_INVENTORY, SANDBOX_API_KEY, SandboxConfig, create_sandbox

    sample_path = DEFAULT_INVENTORY.parent / f"carrier_routing.{sample}"
    if not sample_path.exists():
        fail(f"the sample sheet {sample_path} is missing (run from a clone of the repository)", EXIT_INPUT)
    stem = "voicelink-demo" if sample == "xlsx" else "voicelink-demo-csv"
    results = output or Path.cwd() / f"{stem}.results.xlsx"
    sandbox = create_sandbox(SandboxConfig(api_key=SANDBOX_API_KEY, requests_per_minute=6000))
    click.echo(f"sandbox: in-process emulator of the VoiceLink API, inventory {DEFAULT_INVENTORY.name}")
    click.echo(f"importing {sample_path} ...")
    update, close = _progress_bar(quiet)
    with tempfile.TemporaryDirectory() as tmp:
        config = ImportConfig(
            input=build_input(sample_path, None, (), None),
            api_key=SANDBOX_API_KEY,
            base_url="http://sandbox.invalid/api/v2",
            output=results,
            failed_out=results.with_name(results.name.replace(".results.xlsx", ".failed.xlsx")),
            requests_per_minute=6000,
            journal=Path(tmp) / "demo.journal.sqlite",
            command="demo",
        )
        try:
            summary = run_import(config, transport=httpx.ASGITransport(app=sandbox.app), on_progress=update)
        finally:
            if close is not None:
                close()
    _print_summary(summary)
    state = sandbox.state_snapshot()
    click.echo(f"sandbox now holds {len(state.get('routing', []))} routing records")
    # The demo shows failed rows on purpose; it succeeded if it ran to the end.
    sys.exit(EXIT_OK if summary.exit_code in (EXIT_OK, EXIT_ROWS_FAILED) else summary.exit_code)


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default)."
)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--api-key", help="Key the sandbox accepts (default: the fixed sandbox key it prints).")
@click.option("--requests-per-minute", type=click.IntRange(min=1), default=60, show_default=True)
@click.option("--retry-after", is_flag=True, help="Send a Retry-After header with 429 answers.")
@click.option("--latency-ms", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Share of requests answered 5xx, NOT applied.",
)
@click.option(
    "--ambiguous-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Share of writes APPLIED, then answered 500 or the connection dropped.",
)
@click.option(
    "--hang-rate", type=click.FloatRange(0, 1), default=0.0, help="Share of writes APPLIED, then hung."
)
@click.option("--hang-seconds", type=click.FloatRange(min=0), default=30.0, show_default=True)
@click.option(
    "--burst-rate", type=click.FloatRange(0, 1), default=0.0, help="Share of requests starting a 429 burst."
)
@click.option("--burst-length", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--two-connections", is_flag=True, help="Activate a second VoiceLink connection.")
@click.option("--no-int-did-numbers", is_flag=True, help="Always send did_number as a string.")
@click.option(
    "--inventory", type=click.Path(path_type=Path, dir_okay=False, exists=True), help="Inventory JSON."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Makes the injected faults repeatable.")
@click.option(
    "--state-out", type=click.Path(path_type=Path, dir_okay=False), help="Write the final state here."
)
@one_line_errors
def sandbox(
    host: str,
    port: int,
    api_key: str | None,
    requests_per_minute: int,
    retry_after: bool,
    latency_ms: int,
    fail_rate: float,
    ambiguous_rate: float,
    hang_rate: float,
    hang_seconds: float,
    burst_rate: float,
    burst_length: int,
    two_connections: bool,
    no_int_did_numbers: bool,
    inventory: Path | None,
    seed: int,
    state_out: Path | None,
) -> None:
    """Serve a local emulator of the VoiceLink API to rehearse an import (Ctrl-C stops it)."""
    from .sandbox import SANDBOX_API_KEY, SandboxConfig, serve

    config = SandboxConfig(
        api_key=api_key or SANDBOX_API_KEY,
        requests_per_minute=requests_per_minute,
        retry_after=retry_after,
        latency_ms=latency_ms,
        fail_rate=fail_rate,
        ambiguous_rate=ambiguous_rate,
        hang_rate=hang_rate,
        hang_seconds=hang_seconds,
        burst_rate=burst_rate,
        burst_length=burst_length,
        two_connections=two_connections,
        int_did_numbers=not no_int_did_numbers,
        inventory=inventory,
        seed=seed,
    )

    def ready(url: str) -> None:
        click.echo(f"VoiceLink sandbox listening: {url}")
        if api_key:
            click.echo("API key: the one given with --api-key")
        else:
            click.echo(f"API key: {SANDBOX_API_KEY}  (the fixed sandbox key)")
        click.echo(f"try: VOCOBASE_BASE_URL={url} VOCOBASE_API_KEY=<key> voicelink-import run FILE --dry-run")
        click.echo("state: GET " + url.rsplit("/api/v2", 1)[0] + "/_sandbox/state ; Ctrl-C stops")

    serve(config, host=host, port=port, state_out=state_out, on_ready=ready)
    if state_out is not None:
        click.echo(f"state written: {state_out}")


@main.command()
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--run-id", type=click.IntRange(min=1), help="The journal's run to undo (default: SOURCE's run)."
)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Results workbook.")
@_connect_options
@click.option("--force", is_flag=True, help="Also overwrite rows someone changed since the run.")
@one_line_errors
def rollback(
    source: Path,
    run_id: int | None,
    output: Path | None,
    base_url: str,
    api_key: str | None,
    connection_id: str | None,
    requests_per_minute: int,
    concurrency: int,
    timeout: float,
    dry_run: bool,
    force: bool,
    yes: bool,
    quiet: bool,
) -> None:
    """Undo a run: restore the rows it updated, deactivate (status 0) the routing it created.

    SOURCE is the run's results workbook (its journal is found beside it) or the journal itself.
    """
    from .rollback import RollbackConfig
    from .rollback import rollback as rollback_run

    def show(plan: Any) -> None:
        for line in plan.lines(limit=50):
            click.echo(line)

    config = RollbackConfig(
        source=source,
        api_key=_api_key(api_key),
        base_url=base_url,
        run_id=run_id,
        output=output,
        connection_id=connection_id,
        requests_per_minute=requests_per_minute,
        concurrency=concurrency,
        timeout=timeout,
        dry_run=dry_run,
        force=force,
        on_plan=show,
        confirm=_confirm_callback(yes, dry_run),
    )
    _send_and_report(rollback_run, config, quiet)


@main.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Workbook to write (default voicelink-routing-<UTC time>.xlsx).",
)
@click.option("--include-unrouted", is_flag=True, help="Also list DIDs without routing (modes blank).")
@_connect_options
@one_line_errors
def export(
    output: Path | None,
    include_unrouted: bool,
    base_url: str,
    api_key: str | None,
    connection_id: str | None,
    requests_per_minute: int,
    concurrency: int,
    timeout: float,
    dry_run: bool,
    yes: bool,
    quiet: bool,
) -> None:
    """Write the account's current routing as a workbook that `run` imports unchanged.

    One row per routed DID in the template's columns, plus a Summary sheet. Importing it
    unchanged sends nothing: keep it as a snapshot before a migration, or edit it in bulk.
    --dry-run reads and counts without writing the file; --yes has nothing to confirm.
    """
    from .export import ExportConfig, export_routing

    config = ExportConfig(
        api_key=_api_key(api_key),
        base_url=base_url,
        output=output,
        connection_id=connection_id,
        include_unrouted=include_unrouted,
        dry_run=dry_run,
        requests_per_minute=requests_per_minute,
        concurrency=concurrency,
        timeout=timeout,
    )

    def say(text: str) -> None:
        click.echo(f"reading: {text}", err=True)

    summary = export_routing(config, on_read=None if quiet else say)
    _print_summary(summary)
    sys.exit(summary.exit_code)
