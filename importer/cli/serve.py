"""The commands that serve: ``sandbox`` (the API emulator), ``serve`` (the web service) and ``users``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from importer.account.preflight import DEFAULT_BASE_URL
from importer.cli.output import fail, one_line_errors
from importer.vocab import ExitCode


@click.command()
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


@click.command()
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
    help="POST a JSON notice here when a job needs approval, is scheduled, done, failed or cancelled "
    "(repeatable; e.g. a chat webhook).",
)
@click.option(
    "--require-approval",
    is_flag=True,
    help="Four eyes: a planned job starts only once someone other than its planner approves it "
    "(needs --users; approvers and admins approve).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Uploads checked (and plans, workbooks built) at a time; the others wait their turn.",
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
    require_approval: bool,
    workers: int,
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
        workers=workers,
        require_approval=require_approval,
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


@click.group()
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
