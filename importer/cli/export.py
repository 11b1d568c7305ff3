"""The ``export`` command: the account's routing as a workbook ``run`` imports unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from importer.cli.options import build_connect, connect_options
from importer.cli.output import one_line_errors, print_summary
from importer.cli.progress import reading


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Workbook to write (default voicelink-routing-<UTC time>.xlsx).",
)
@click.option("--include-unrouted", is_flag=True, help="Also list DIDs without routing (modes blank).")
@connect_options
@one_line_errors
def export(output: Path | None, include_unrouted: bool, quiet: bool) -> None:
    """Write the account's current routing as a workbook that `run` imports unchanged.

    One row per routed DID in the template's columns, plus a Summary sheet. Importing it
    unchanged sends nothing: keep it as a snapshot before a migration, or edit it in bulk.
    --dry-run reads and counts without writing the file; --yes and --max-error-rate have
    nothing to do (nothing is sent).
    """
    from importer.jobs.export import export_routing
    from importer.options import ExportConfig

    config = ExportConfig.using(
        build_connect(),
        output=output,
        include_unrouted=include_unrouted,
        max_error_rate=None,  # nothing is sent: neither a limit nor a question applies
        confirm=None,
        on_read=reading(quiet),
    )
    summary = export_routing(config)
    print_summary(summary)
    sys.exit(summary.exit_code)
