"""Start and stop the web service: uvicorn on one socket, an honest shutdown.

SIGTERM (or Ctrl-C) makes uvicorn stop accepting connections; before it waits for the open ones,
``_Server.shutdown`` tells the jobs to stop: event streams end, sends stop taking new writes and
the writes in flight settle (each is journalled). Jobs stopped that way stay ``sending`` and the
next start resumes them from their journals; the process is gone within a few seconds.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette

from importer.errors import InputError
from importer.serving import listen, serving_in_thread
from importer.web.app import WebConfig, create_app
from importer.web.engine import Connection
from importer.web.jobs import JobService
from importer.web.observe import LogFormat, configure_logging
from importer.web.people import load_users
from importer.web.security import allowed_hosts, check_token, cookie_name, is_loopback, trusted_networks
from importer.web.work import DEFAULT_WORKERS

__all__ = ["ServeSettings", "build", "running_server", "serve"]

SANDBOX_BASE_URL = "http://sandbox.invalid/api/v2"
SHUTDOWN_SECONDS = 4.0
SWITCH_SECONDS = 0.001


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """The options of ``voicelink-import serve``."""

    connection: Connection
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: int = 100
    token: str = field(default="", repr=False)
    """Empty: a random token per start (``VOICELINK_WEB_TOKEN`` sets one in the CLI); else 32+ characters."""
    allowed_host: tuple[str, ...] = ()
    """Names the server answers to besides its address (``--allowed-host``); needed off loopback."""
    log_format: LogFormat = LogFormat.TEXT
    users_file: Path | None = None
    """``--users``: the team's users and roles; None: the token stands for one admin."""
    user_header: str = ""
    """``--user-header``: the header a sign-on proxy names the user in."""
    trusted_proxy: tuple[str, ...] = ()
    """``--trusted-proxy``: the only addresses whose ``user_header`` is believed."""
    notify_url: tuple[str, ...] = ()
    """``--notify-url``: where job notices are POSTed."""
    workers: int = DEFAULT_WORKERS
    """``--workers``: validations, plans and workbook builds run this many at a time; the rest queue."""
    require_approval: bool = False
    """``--require-approval``: a plan starts only once someone other than its planner approved it."""

    def check(self) -> None:
        """Refuse settings that would leave the door open.

        Raises:
            InputError: a token shorter than 32 characters, or a non-loopback address without
                ``--allowed-host``.
        """
        if self.token and (why := check_token(self.token)):
            raise InputError(why)
        if self.user_header and (self.users_file is None or not self.trusted_proxy):
            raise InputError(
                "--user-header needs --users FILE (the roles) and --trusted-proxy ADDRESS (the sign-on "
                "proxy whose header is believed)"
            )
        try:
            trusted_networks(self.trusted_proxy)
        except ValueError as exc:
            raise InputError(f"--trusted-proxy: {exc}") from None
        for url in self.notify_url:
            if not url.startswith(("http://", "https://")):
                raise InputError(f"--notify-url must start with http:// or https://, not {url!r}")
        if self.require_approval and self.users_file is None:
            raise InputError(
                "--require-approval needs --users FILE: without users the token is one admin, and "
                "nobody other than the planner could approve"
            )
        if self.workers < 1:
            raise InputError(f"--workers must be 1 or more, not {self.workers}")
        if self.users_file is not None:
            load_users(self.users_file)  # a bad file is one line now, not a failed start later
        if not is_loopback(self.host) and not self.allowed_host:
            raise InputError(
                f"--host {self.host} is reachable from other machines: name the host name(s) clients use "
                "with --allowed-host NAME (repeatable); the Host check refuses every other name"
            )

    def warnings(self) -> list[str]:
        """What an operator must know before this start (printed by the CLI)."""
        if is_loopback(self.host):
            return []
        return [
            "warning: this server speaks plain HTTP: the token and the uploads travel in clear unless a "
            "TLS-terminating proxy (https) is in front of it"
        ]


def sandbox_connection(requests_per_minute: int) -> Connection:
    """A connection to an in-process sandbox: no key needed, nothing leaves the process."""
    from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox

    sandbox = create_sandbox(SandboxConfig(requests_per_minute=requests_per_minute))
    return Connection(
        api_key=SANDBOX_API_KEY,
        base_url=SANDBOX_BASE_URL,
        transport=httpx.ASGITransport(app=sandbox.app),
        requests_per_minute=requests_per_minute,
    )


def build(settings: ServeSettings, port: int) -> tuple[Starlette, JobService, str]:
    """The app, its jobs and the token, for the port actually bound."""
    token = settings.token or secrets.token_urlsafe(32)
    service = JobService(
        settings.data_dir,
        settings.connection,
        workers=settings.workers,
        require_approval=settings.require_approval,
    )
    config = WebConfig(
        token=token,
        hosts=allowed_hosts(settings.host, port, settings.allowed_host),
        max_upload_bytes=settings.max_upload_mb * 2**20,
        scratch=settings.data_dir / "incoming",
        cookie=cookie_name(port),
        people=load_users(settings.users_file) if settings.users_file is not None else None,
        user_header=settings.user_header,
        trusted_proxies=settings.trusted_proxy,
        notify_urls=settings.notify_url,
        link_base=_link_base(settings, port),
    )
    return create_app(service, config), service, token


def _link_base(settings: ServeSettings, port: int) -> str:
    """The address links in notices point at: the first ``--allowed-host``, else the bound one."""
    if settings.allowed_host:
        name = settings.allowed_host[0]
        return name if name.startswith(("http://", "https://")) else f"http://{name}"
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{shown}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, telling the jobs to stop before it waits for open connections."""

    def __init__(self, config: uvicorn.Config, service: JobService) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.service.begin_shutdown()
        await super().shutdown(sockets)


def _prepare(settings: ServeSettings) -> tuple[socket.socket, _Server, str, str]:
    settings.check()
    configure_logging(settings.log_format)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.data_dir, 0o700)  # uploads and journals are the team's data
    except OSError as exc:
        raise InputError(f"cannot use the data folder {settings.data_dir}: {exc.strerror or exc}") from None
    sock = listen(settings.host, settings.port)
    port = sock.getsockname()[1]
    app, service, token = build(settings, port)
    config = uvicorn.Config(
        app,
        lifespan="on",
        ws="none",
        access_log=False,  # an access log would keep the ?token= of the first visit
        log_level="warning",
        timeout_graceful_shutdown=int(SHUTDOWN_SECONDS),
    )
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host  # as the Host check knows it
    return sock, _Server(config, service), f"http://{shown}:{port}", token


def serve(settings: ServeSettings, on_ready: Callable[[str, str], None] | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C.

    Args:
        settings: The options.
        on_ready: Called with the base URL and the token once the socket listens.

    Raises:
        InputError: the address cannot be listened on or the data folder cannot be used.
    """
    sock, server, url, token = _prepare(settings)
    # Validations run in threads that hold the GIL between releases; the event loop asks for it
    # back after this long (5 ms by default, which lets a few busy workers delay every answer).
    sys.setswitchinterval(SWITCH_SECONDS)
    # A full garbage collection walks every object the collector tracks while it holds the GIL:
    # the event loop stops for as long, whichever thread's allocation set it off. What is loaded
    # by now (the modules, the app: ~110,000 objects) lives as long as the process, so it is kept
    # out of every later collection (issue 16: a validation's full collections stopped answers).
    gc.collect()
    gc.freeze()
    try:
        if on_ready is not None:
            on_ready(url, token)
        server.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def running_server(settings: ServeSettings) -> Iterator[tuple[str, str, JobService]]:
    """Serve in a background thread for the duration of a ``with`` (tests, benchmarks).

    Yields:
        The base URL, the token and the job service.
    """
    sock, server, url, token = _prepare(settings)
    with serving_in_thread(server, sock, name="web", grace=10):
        yield url, token, server.service
