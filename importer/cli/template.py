"""The ``template`` command: an empty spreadsheet to fill in."""

from __future__ import annotations

from pathlib import Path

import click

from importer.cli.output import one_line_errors


@click.command()
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
