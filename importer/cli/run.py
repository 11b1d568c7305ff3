"""The commands that import a spreadsheet: ``validate`` (offline), ``run`` (through the API), ``demo``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from importer.cli.options import FORCE_HELP, api_options, build_connect, build_input, input_options
from importer.cli.output import fail, one_line_errors, print_summary
from importer.cli.progress import progress_bar, send_and_report
from importer.vocab import ExitCode, OnExisting


@click.command()
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
@click.option("--force", is_flag=True, help=FORCE_HELP)
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
            own_process=True,
        )
    )
    print_summary(summary)
    sys.exit(summary.exit_code)


@click.command()
@input_options
@api_options
@one_line_errors
def run(
    file: Path,
    output: Path | None,
    failed_out: Path | None,
    force: bool,
    on_existing: str,
    journal: Path | None,
    quiet: bool,
) -> None:
    """Create or update the routing of every row of FILE through the API."""
    from importer.jobs.run import run_import
    from importer.options import ImportConfig

    read = build_input(file)  # first: a bad --map or --encoding is the one line said
    config = ImportConfig.using(
        build_connect(),
        input=read,
        output=output,
        failed_out=failed_out,
        overwrite=force,
        on_existing=OnExisting(on_existing),
        journal=journal,
        own_process=True,
    )
    send_and_report(run_import, config, quiet)


@click.command()
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
    update, close = progress_bar(quiet)
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
            own_process=True,
        )
        try:
            summary = run_import(config, transport=httpx.ASGITransport(app=sandbox.app), on_progress=update)
        finally:
            if close is not None:
                close()
    print_summary(summary)
    state = sandbox.state_snapshot()
    click.echo(f"sandbox now holds {len(state.get('routing', []))} routing records")
    # run's exit codes: the sample fails rows on purpose, and a script must not read that as "all done".
    sys.exit(summary.exit_code)
