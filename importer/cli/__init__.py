"""The ``voicelink-import`` command: a thin layer over the library.

It parses options, calls the library and turns run-level errors into one ``Error: ...``
line on stderr with the documented exit code. Set ``VOICELINK_DEBUG=1`` to see a traceback
for an unexpected error instead.

One module per concern: ``options`` (the shared flags and the option objects built from them),
``output`` (one-line errors, printing, the question before sending), ``progress`` (the bar and
the reading lines), and the commands: ``run`` (validate, run, demo), ``rollback`` (rollback,
history), ``export``, ``template``, ``serve`` (sandbox, serve, users).
"""

from __future__ import annotations

import click

from importer.cli import export, rollback, run, serve, template

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="voicelink-importer")
def main() -> None:
    """Create or update VoiceLink call routing from a carrier's spreadsheet, safely.

    Exit codes: 0 every row done or valid, 1 some rows failed, 2 unusable file or option,
    3 run aborted (key rejected, error rate), 130 interrupted (``vocab.ExitCode``).
    """


main.add_command(run.validate)
main.add_command(template.template)
main.add_command(run.run)
main.add_command(run.demo)
main.add_command(serve.sandbox)
main.add_command(rollback.rollback)
main.add_command(rollback.history)
main.add_command(serve.serve)
main.add_command(serve.users)
main.add_command(export.export)
