"""The commands over a run's journal: ``rollback`` (undo it) and ``history`` (list the runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from importer.cli.options import build_connect, connect_options
from importer.cli.output import one_line_errors, say
from importer.cli.progress import send_and_report


@click.command()
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--run-id",
    "run_ids",
    type=click.IntRange(min=1),
    multiple=True,
    help="Undo only this journal run (repeatable; default: every run of SOURCE's input).",
)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Results workbook.")
@connect_options
@click.option("--force", is_flag=True, help="Also overwrite rows someone changed since the run.")
@one_line_errors
def rollback(
    source: Path,
    run_ids: tuple[int, ...],
    output: Path | None,
    force: bool,
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
            say(line)

    config = RollbackConfig.using(
        build_connect(details=False),  # `show` printed them
        source=source,
        run_ids=run_ids,
        output=output,
        force=force,
        on_plan=show,
    )
    send_and_report(rollback_run, config, quiet)


@click.command()
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@one_line_errors
def history(source: Path) -> None:
    """List the runs a journal records: when, who, input, counts, and what rolled them back.

    SOURCE is a results workbook (its journal is found as rollback finds it) or the journal itself.
    """
    from importer.jobs.history import history_lines, run_history

    for line in history_lines(run_history(source)):
        say(line)
