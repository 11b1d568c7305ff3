"""The ``voicelink-import`` command: a thin layer over the library.

It parses options, calls the library and turns run-level errors into one ``Error: ...``
line on stderr with the documented exit code. Set ``VOICELINK_DEBUG=1`` to see a traceback
for an unexpected error instead.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click

from importer.account.preflight import DEFAULT_BASE_URL
from importer.engine.apply import ERROR_RATE_MIN_WRITES
from importer.errors import ImporterError, NothingToDo
from importer.options import SendOptions, human_duration
from importer.vocab import ExitCode, OnExisting

F = TypeVar("F", bound=Callable[..., Any])

SEND_DEFAULTS = SendOptions()
"""The library's defaults for --requests-per-minute, --concurrency, --timeout."""


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
            _say(str(exc))
            sys.exit(exc.exit_code)
        except ImporterError as exc:
            fail(str(exc), exc.exit_code)
        except BrokenPipeError:
            # The reader of our output (e.g. `| head`) left: stop quietly, as other tools do.
            _silence_stdout()
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


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush meets no closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _before_writes(fn: Callable[..., Any]) -> bool:
    # run/rollback settle Ctrl-C themselves once writes start (exit 130 with a workbook), so a
    # KeyboardInterrupt that reaches here came before the first write.
    return fn.__name__ in ("run", "rollback")


def input_options(fn: F) -> F:
    """The options every command that reads a spreadsheet takes.

    They reach ``build_input`` through the click context, so a command takes only FILE and an input
    option added here needs no change to any command's signature.
    """
    fn = click.option(
        "--default-region",
        metavar="XX",
        expose_value=False,
        callback=_keep_input_option,
        help="Read national numbers (no country code) as numbers of this region, e.g. IN or US.",
    )(fn)
    fn = click.option(
        "--ignore-column",
        "ignore_columns",
        multiple=True,
        metavar="NAME",
        expose_value=False,
        callback=_keep_input_option,
        help="Leave a column out of matching, by header text or letter (repeatable).",
    )(fn)
    fn = click.option(
        "--map",
        "maps",
        multiple=True,
        metavar='"Header Text=field"',
        expose_value=False,
        callback=_keep_input_option,
        help='Map a column (header text or letter: "C=did_number") to a field; wins over '
        "header matching (repeatable).",
    )(fn)
    fn = click.option(
        "--sheet",
        multiple=True,
        metavar="NAME",
        expose_value=False,
        callback=_keep_input_option,
        help="A worksheet to read (repeatable: several make one table). Default: the one sheet whose "
        "headers name the fields; with several such sheets, choose or pass --all-sheets.",
    )(fn)
    fn = click.option(
        "--all-sheets",
        is_flag=True,
        expose_value=False,
        callback=_keep_input_option,
        help="Read every worksheet whose headers name the fields, as one table.",
    )(fn)
    fn = click.option(
        "--encoding",
        metavar="NAME",
        expose_value=False,
        callback=_keep_input_option,
        help="The text encoding of a CSV, e.g. cp1251 or iso-8859-7 (default: detected).",
    )(fn)
    fn = click.option(
        "--skip-hidden-rows",
        is_flag=True,
        expose_value=False,
        callback=_keep_input_option,
        help="Skip rows hidden in Excel (filtered out or hidden) instead of importing them.",
    )(fn)
    return click.argument("file", type=click.Path(path_type=Path, dir_okay=True))(fn)


def _keep_input_option(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta[f"input.{param.name}"] = value
    return value


def build_input(file: Path) -> Any:
    """Return the InputOptions for FILE from the ``input_options`` of the running command, if any."""
    from importer.options import InputOptions
    from importer.read.text import check_encoding
    from importer.validate.columns import parse_column_map

    meta = ctx.meta if (ctx := click.get_current_context(silent=True)) is not None else {}
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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="voicelink-importer")
def main() -> None:
    """Create or update VoiceLink call routing from a carrier's spreadsheet, safely.

    Exit codes: 0 every row done or valid, 1 some rows failed, 2 unusable file or option,
    3 run aborted (key rejected, error rate), 130 interrupted (``vocab.ExitCode``).
    """


_FORCE_HELP = (
    "Overwrite <stem>.results.xlsx and <stem>.failed.xlsx left by an earlier run; without it they "
    "are kept and this run writes <stem>.results.<YYYYmmdd-HHMMSS>.xlsx. A path given with -o or "
    "--failed-out is always overwritten."
)


@main.command()
@input_options
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Results workbook path, .xlsx (default <stem>.results.xlsx).",
)
@click.option(
    "--failed-out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Failed-rows file path, .xlsx (default <stem>.failed.xlsx).",
)
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@one_line_errors
def validate(
    file: Path,
    output: Path | None,
    failed_out: Path | None,
    force: bool,
) -> None:
    """Check every row of FILE offline and write the results workbook."""
    from importer.jobs.validate import validate_file
    from importer.options import ValidateConfig

    summary = validate_file(
        ValidateConfig(
            input=build_input(file),
            output=output,
            failed_out=failed_out,
            overwrite=force,
        )
    )
    _print_summary(summary)
    sys.exit(summary.exit_code)


@main.command()
@click.option("--format", "fmt", type=click.Choice(["xlsx", "csv"]), default="xlsx", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Where to write it.")
@one_line_errors
def template(fmt: str, output: Path | None) -> None:
    """Write an empty spreadsheet with the right columns, dropdowns and instructions."""
    from importer.output.template import TEMPLATE_FILES, template_csv_text, write_template_xlsx

    path = output or Path(TEMPLATE_FILES[fmt])
    path.parent.mkdir(parents=True, exist_ok=True)  # as for every output: a missing folder is made
    if fmt == "xlsx":
        write_template_xlsx(path)
    else:
        path.write_text(template_csv_text(), encoding="utf-8", newline="")
    click.echo(f"template written: {path}")


def _progress_bar(
    quiet: bool,
    *,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    every: float = 60.0,
    tick: float = 1.0,
) -> tuple[Any, Any]:
    """Show the library's progress callbacks on stderr (the library never imports tqdm).

    On a terminal: a tqdm bar, redrawn every ``tick`` seconds by a small thread so its elapsed
    time keeps moving while the rate limiter holds writes back. Anywhere else (a pipe, a log,
    CI) bar frames would be noise: one plain line every ``every`` seconds instead. Progress
    notes (e.g. "stopping: 3 writes in flight, settling") are printed even with --quiet.

    Returns:
        The callback and a function that ends the display (None when there is nothing to end).
    """
    out = stream if stream is not None else sys.stderr
    if quiet or not out.isatty():
        due = _every(every, clock)

        def line(p: Any) -> None:
            if p.note:
                click.echo(p.note, file=out)
            elif not quiet and due():
                click.echo(_progress_text(p), file=out)

        return line, None

    import threading

    from tqdm import tqdm

    bar: Any = None
    stop = threading.Event()
    ticker: threading.Thread | None = None

    def redraw() -> None:
        while not stop.wait(tick):
            bar.refresh()

    def update(p: Any) -> None:
        nonlocal bar, ticker
        if p.note and bar is not None:
            bar.write(p.note, file=out)  # above the bar, which stays drawn
        elif p.note:
            click.echo(p.note, file=out)
        if p.note:
            return
        if bar is None:
            bar = tqdm(total=p.total, unit="write", file=out, dynamic_ncols=True, desc="sending")
            ticker = threading.Thread(target=redraw, name="progress-ticker", daemon=True)
            ticker.start()
        bar.n = p.done
        bar.set_postfix_str(f"ok {p.succeeded}, failed {p.failed}{_time_left(p)}", refresh=False)
        bar.refresh()

    def close() -> None:
        stop.set()
        if ticker is not None:
            ticker.join()
        if bar is not None:
            bar.close()

    return update, close


def _progress_text(p: Any) -> str:
    """One progress line for a log: '123/900 writes, 3 failed, about 13 min left'."""
    return f"{p.done}/{p.total} writes, {p.failed} failed{_time_left(p)}"


def _time_left(p: Any) -> str:
    """The rate limiter's estimate (the one ETA), and a 429 pause while there is one."""
    text = f", paused {p.paused_seconds:.0f}s (429)" if p.paused_seconds >= 1 else ""
    if p.eta_seconds is None or p.done >= p.total:
        return text
    minutes = round(p.eta_seconds / 60)
    return text + (", under a minute left" if minutes < 1 else f", about {human_duration(minutes * 60)} left")


def _ask(plan: Any, estimate: Callable[[int], str], details: bool = True) -> bool:
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


def _say(line: str) -> None:
    """Print a line on stdout; once its reader has gone (`| head -1`), drop the rest and carry on.

    A closed stdout must never stop or change a job: a rollback whose plan lines meet a closed
    pipe still sends, writes its workbook and exits with its own code.
    """
    try:
        click.echo(line)
    except BrokenPipeError:
        _silence_stdout()


def _print_summary(summary: Any) -> None:
    try:
        for line in summary.lines():
            click.echo(line)
    except BrokenPipeError:
        # `| head` stopped reading: the job is done, so keep its exit code and stay quiet.
        _silence_stdout()


def _reading(
    quiet: bool,
    *,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    every: float = 60.0,
) -> Callable[[str], None] | None:
    """Say on stderr what a job reads before its plan ("reading: DIDs: page 3 of 50").

    As the progress display: on a terminal every step; anywhere else (a pipe, a log, CI) a line
    only once a read has gone on for ``every`` seconds, then one every ``every`` seconds (a
    large account's DID pages); nothing with --quiet.
    """
    if quiet:
        return None
    out = stream if stream is not None else sys.stderr
    if out.isatty():
        return lambda text: click.echo(f"reading: {text}", file=out)
    due = _every(every, clock)

    def line(text: str) -> None:
        if due():
            click.echo(f"reading: {text}", file=out)

    return line


def _every(seconds: float, clock: Callable[[], float]) -> Callable[[], bool]:
    """Return a check that is true once ``seconds`` have passed since its first call, then every ``seconds``.

    The log-line pace of the progress display and of ``_reading`` (a pipe gets no bar frames).
    """
    last: float | None = None

    def due() -> bool:
        nonlocal last
        now = clock()
        if last is None:
            last = now
        elif now - last >= seconds:
            last = now
            return True
        return False

    return due


def _send_and_report(job: Callable[..., Any], config: Any, quiet: bool) -> None:
    """Run an API job behind the progress bar, print its summary and exit with its code."""
    update, close = _progress_bar(quiet)
    try:
        summary = job(dataclasses.replace(config, on_read=_reading(quiet)), on_progress=update)
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
        default=DEFAULT_BASE_URL,
        show_default=True,
        help="API root (env VOCOBASE_BASE_URL).",
    ),
    click.option("--api-key", help="API key (prefer the env VOCOBASE_API_KEY: flags show in `ps`)."),
    click.option(
        "--connection-id",
        envvar="VOCOBASE_CONNECTION_ID",
        help="VoiceLink connection UUID when several are active (env VOCOBASE_CONNECTION_ID).",
    ),
    click.option(
        "--requests-per-minute",
        type=click.IntRange(min=1),
        default=SEND_DEFAULTS.requests_per_minute,
        show_default=True,
    ),
    click.option(
        "--concurrency", type=click.IntRange(1, 16), default=SEND_DEFAULTS.concurrency, show_default=True
    ),
    click.option(
        "--timeout", type=click.FloatRange(min=0.1), default=SEND_DEFAULTS.timeout, show_default=True
    ),
    click.option(
        "--max-error-rate",
        type=click.FloatRange(0, 1),
        help="Stop when more than this share of writes failed "
        f"(once {ERROR_RATE_MIN_WRITES} are done), e.g. 0.2.",
    ),
    click.option("--dry-run", is_flag=True, help="Plan only: show what would be sent; send nothing."),
    click.option("--yes", is_flag=True, help="Do not ask before sending."),
    click.option("--quiet", is_flag=True, help="No progress bar (rollback: no plan lines either)."),
)

_api_options = _apply_options(
    click.option(
        "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Results workbook, .xlsx."
    ),
    click.option(
        "--failed-out", type=click.Path(path_type=Path, dir_okay=False), help="Failed-rows file, .xlsx."
    ),
    click.option("--force", is_flag=True, help=_FORCE_HELP),
    _connect_options,
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
    return functools.partial(_ask, estimate=estimate, details=details)


@main.command()
@input_options
@_api_options
@one_line_errors
def run(
    file: Path,
    output: Path | None,
    failed_out: Path | None,
    force: bool,
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
    from importer.jobs.run import run_import
    from importer.options import ImportConfig

    config = ImportConfig(
        input=build_input(file),
        api_key=_api_key(api_key),
        base_url=base_url,
        output=output,
        failed_out=failed_out,
        overwrite=force,
        connection_id=connection_id,
        requests_per_minute=requests_per_minute,
        concurrency=concurrency,
        timeout=timeout,
        on_existing=OnExisting(on_existing),
        dry_run=dry_run,
        journal=journal,
        max_error_rate=max_error_rate,
        confirm=_confirm_callback(yes, dry_run, requests_per_minute),
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
    """Import the sample sheet into an in-process sandbox, end to end, and show the results.

    Exit codes as for run: the sample has rows with mistakes on purpose, so 1 (some rows failed).
    """
    import tempfile
    from importlib import resources

    import httpx

    from importer.jobs.run import run_import
    from importer.options import ImportConfig
    from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox

    # Package data, so an installed wheel has the sheet and the inventory wherever it runs.
    data = resources.files("importer.data")
    sample_data = data.joinpath(f"carrier_routing.{sample}")
    if not sample_data.is_file():
        fail(
            f"the sample sheet carrier_routing.{sample} is missing from the installed package", ExitCode.INPUT
        )
    stem = "voicelink-demo" if sample == "xlsx" else "voicelink-demo-csv"
    results = output or Path.cwd() / f"{stem}.results.xlsx"
    sandbox = create_sandbox(SandboxConfig(api_key=SANDBOX_API_KEY, requests_per_minute=6000))
    click.echo("sandbox: in-process emulator of the VoiceLink API, inventory inventory.json")
    update, close = _progress_bar(quiet)
    with tempfile.TemporaryDirectory() as tmp, resources.as_file(sample_data) as sample_path:
        click.echo(f"importing {sample_path} ...")
        config = ImportConfig(
            input=build_input(sample_path),
            api_key=SANDBOX_API_KEY,
            base_url="http://sandbox.invalid/api/v2",
            output=results,
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
    # run's exit codes: the sample fails rows on purpose, and a script must not read that as "all done".
    sys.exit(summary.exit_code)


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
@click.option("--lean-sync", is_flag=True, help="Answer sync with routing only (no DIDs, no bots).")
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
    lean_sync: bool,
    state_out: Path | None,
) -> None:
    """Serve a local emulator of the VoiceLink API to rehearse an import (Ctrl-C stops it)."""
    from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, serve

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
        lean_sync=lean_sync,
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
    "--run-id",
    "run_ids",
    type=click.IntRange(min=1),
    multiple=True,
    help="Undo only this journal run (repeatable; default: every run of SOURCE's input).",
)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Results workbook.")
@_connect_options
@click.option("--force", is_flag=True, help="Also overwrite rows someone changed since the run.")
@one_line_errors
def rollback(
    source: Path,
    run_ids: tuple[int, ...],
    output: Path | None,
    base_url: str,
    api_key: str | None,
    connection_id: str | None,
    requests_per_minute: int,
    concurrency: int,
    timeout: float,
    max_error_rate: float | None,
    dry_run: bool,
    force: bool,
    yes: bool,
    quiet: bool,
) -> None:
    """Undo an import: restore the rows it updated, deactivate (status 0) the routing it created.

    SOURCE is the run's results workbook (its journal is found beside it) or the journal itself.
    Every run of the same input is undone (an interrupted run and its resume) unless --run-id
    names the runs.
    """
    from importer.jobs.rollback import rollback_run
    from importer.options import RollbackConfig

    def show(plan: Any) -> None:
        if quiet:  # --quiet: the summary and errors only
            return
        for line in plan.lines(limit=50):
            _say(line)

    config = RollbackConfig(
        source=source,
        api_key=_api_key(api_key),
        base_url=base_url,
        run_ids=run_ids,
        output=output,
        connection_id=connection_id,
        requests_per_minute=requests_per_minute,
        concurrency=concurrency,
        timeout=timeout,
        max_error_rate=max_error_rate,
        dry_run=dry_run,
        force=force,
        on_plan=show,
        confirm=_confirm_callback(yes, dry_run, requests_per_minute, details=False),  # `show` printed them
    )
    _send_and_report(rollback_run, config, quiet)


@main.command()
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@one_line_errors
def history(source: Path) -> None:
    """List the runs a journal records: when, who, input, counts, and what rolled them back.

    SOURCE is a results workbook (its journal is found as rollback finds it) or the journal itself.
    """
    from importer.jobs.history import history_lines, run_history

    for line in history_lines(run_history(source)):
        _say(line)


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default)."
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("voicelink-data"),
    show_default=True,
    help="Where jobs (uploads, journals, results) are kept.",
)
@click.option("--max-upload-mb", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--requests-per-minute", type=click.IntRange(min=1), default=60, show_default=True)
@click.option("--sandbox", "use_sandbox", is_flag=True, help="Send to an in-process sandbox (no key needed).")
@click.option(
    "--allowed-host",
    "allowed_host",
    multiple=True,
    metavar="NAME",
    help="A host name clients use to reach the server (repeatable); required with a non-loopback --host.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines (one per job event) as text or as one JSON object each.",
)
@click.option(
    "--users",
    "users_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The team's users and roles (TOML, made by 'voicelink-import users add').",
)
@click.option(
    "--user-header",
    metavar="NAME",
    default="",
    help="Take the user from this header set by a sign-on proxy (only from --trusted-proxy addresses).",
)
@click.option(
    "--trusted-proxy",
    multiple=True,
    metavar="ADDRESS",
    help="An address (or network) of the sign-on proxy whose --user-header is believed (repeatable).",
)
@click.option(
    "--notify-url",
    multiple=True,
    metavar="URL",
    help="POST a JSON notice here when a job is done, failed or cancelled (repeatable; e.g. a chat webhook).",
)
@one_line_errors
def serve(
    host: str,
    port: int,
    data_dir: Path,
    max_upload_mb: int,
    requests_per_minute: int,
    use_sandbox: bool,
    allowed_host: tuple[str, ...],
    log_format: str,
    users_file: Path | None,
    user_header: str,
    trusted_proxy: tuple[str, ...],
    notify_url: tuple[str, ...],
) -> None:
    """Serve the web service: upload, check, fix, plan and send imports from a browser or the API.

    The key and base URL come from VOCOBASE_API_KEY and VOCOBASE_BASE_URL and stay on the server.
    The access token is random per start unless VOICELINK_WEB_TOKEN sets it (32 characters or more).
    """
    from importer.web.engine import Connection
    from importer.web.observe import LogFormat
    from importer.web.server import ServeSettings, sandbox_connection
    from importer.web.server import serve as serve_web

    if use_sandbox:
        connection = sandbox_connection(requests_per_minute)
    else:
        key = os.environ.get("VOCOBASE_API_KEY", "")
        if not key:
            fail("no API key: set VOCOBASE_API_KEY, or try it with --sandbox", ExitCode.INPUT)
        base_url = os.environ.get("VOCOBASE_BASE_URL") or DEFAULT_BASE_URL
        if not base_url.startswith(("http://", "https://")):
            fail(f"VOCOBASE_BASE_URL must start with http:// or https://, not {base_url!r}", ExitCode.INPUT)
        connection = Connection(
            api_key=key,
            base_url=base_url,
            requests_per_minute=requests_per_minute,
            connection_id=os.environ.get("VOCOBASE_CONNECTION_ID") or None,
        )
    settings = ServeSettings(
        connection=connection,
        data_dir=data_dir,
        host=host,
        port=port,
        max_upload_mb=max_upload_mb,
        token=os.environ.get("VOICELINK_WEB_TOKEN", ""),
        allowed_host=allowed_host,
        log_format=LogFormat(log_format),
        users_file=users_file,
        user_header=user_header,
        trusted_proxy=trusted_proxy,
        notify_url=notify_url,
    )
    settings.check()  # before the key is looked at further or anything listens
    for warning in settings.warnings():
        click.echo(warning, err=True)

    def ready(url: str, token: str) -> None:
        click.echo(f"VoiceLink importer web service: {url}")
        if users_file is not None:  # the server's own token opens nothing then: each user has theirs
            click.echo(f"open: {url}/?token=<your token from 'voicelink-import users add'>")
        else:
            click.echo(f"open: {url}/?token={token}")
        click.echo(f"API: Authorization: Bearer <token> ; jobs kept in {data_dir}")
        click.echo("SIGTERM or Ctrl-C stops it (sends in flight settle and resume on the next start)")

    try:
        serve_web(settings, on_ready=ready)
    except KeyboardInterrupt:
        # uvicorn has shut down cleanly and re-raised the Ctrl-C it caught: say so, not a crash.
        click.echo("web service stopped; jobs that were sending resume on the next start", err=True)
        sys.exit(ExitCode.INTERRUPTED)


_USERS_FILE = click.option(
    "--file",
    "users_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("voicelink-users.toml"),
    show_default=True,
    help="The users file (give it to serve --users).",
)


@main.group()
def users() -> None:
    """Manage the web service's users: names, roles and tokens (kept only as hashes)."""


@users.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["viewer", "operator", "approver", "admin"]),
    required=True,
    help="viewer: see and download; operator: also upload, fix, plan, start; approver: also approve; "
    "admin: also manage others' jobs.",
)
@_USERS_FILE
@one_line_errors
def users_add(name: str, role: str, users_file: Path) -> None:
    """Add NAME (or give them a new token); prints the token once: it is stored only as a hash."""
    from importer.web.people import Role, add_user

    token = add_user(users_file, name, Role(role))
    click.echo(f"user {name} ({role}) saved in {users_file}; their token (shown only now):")
    click.echo(token)


@users.command("list")
@_USERS_FILE
@one_line_errors
def users_list(users_file: Path) -> None:
    """List the users and their roles."""
    from importer.web.people import load_users

    for user in load_users(users_file).by_name.values():
        click.echo(f"{user.name}\t{user.role.value}")


@users.command("remove")
@click.argument("name")
@_USERS_FILE
@one_line_errors
def users_remove(name: str, users_file: Path) -> None:
    """Remove NAME: their token stops working when the server next starts."""
    from importer.web.people import remove_user

    remove_user(users_file, name)
    click.echo(f"user {name} removed from {users_file}")


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
    max_error_rate: float | None,
    dry_run: bool,
    yes: bool,
    quiet: bool,
) -> None:
    """Write the account's current routing as a workbook that `run` imports unchanged.

    One row per routed DID in the template's columns, plus a Summary sheet. Importing it
    unchanged sends nothing: keep it as a snapshot before a migration, or edit it in bulk.
    --dry-run reads and counts without writing the file; --yes and --max-error-rate have
    nothing to do (nothing is sent).
    """
    from importer.jobs.export import export_routing
    from importer.options import ExportConfig

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
        on_read=_reading(quiet),
    )
    summary = export_routing(config)
    _print_summary(summary)
    sys.exit(summary.exit_code)
