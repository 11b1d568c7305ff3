"""Opening a job's access to the account: the client, the pre-flight, the inventory read once.

Shared by ``run``, ``rollback`` and ``export``: the client is opened inside the event loop that
uses it, the pre-flight checks the key and chooses the connection (:func:`preflight`, the only
place that does), and the state the job needs is read once (:func:`read_inventory`, in as few
reads as ``inventory.read_state`` can). Re-reads during the writes are ``inventory.LiveRouting``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import httpx

from importer.account.client import VoiceLinkClient
from importer.account.inventory import Inventory, ReadCallback, Rows, read_state
from importer.account.limiter import RateLimiter
from importer.account.records import Connection
from importer.errors import ApiError, InputError

__all__ = [
    "DEFAULT_BASE_URL",
    "ClientSettings",
    "choose_connection",
    "open_client",
    "preflight",
    "read_inventory",
]

DEFAULT_BASE_URL = "https://api.vocobase.com/api/v2"


class ClientSettings(Protocol):
    """What opening a client needs (``options.ConnectOptions`` provides it)."""

    @property
    def api_key(self) -> str: ...
    @property
    def base_url(self) -> str: ...
    @property
    def requests_per_minute(self) -> int: ...
    @property
    def rate_window(self) -> float: ...
    @property
    def timeout(self) -> float: ...
    @property
    def connection_id(self) -> str | None: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def retry_backoff(self) -> float: ...


async def open_client(
    settings: ClientSettings,
    transport: httpx.AsyncBaseTransport | None,
    limiter: RateLimiter | None = None,
) -> tuple[RateLimiter, VoiceLinkClient]:
    """Open one job's client, inside the event loop that will use it.

    Args:
        settings: The key, the base URL and the sending options.
        transport: An httpx transport instead of the network (the sandbox in-process, tests).
        limiter: A limiter shared with other jobs on the same key; None: a new one for this job.
    """
    limiter = limiter or RateLimiter(settings.requests_per_minute, window=settings.rate_window)
    client = VoiceLinkClient(
        settings.base_url,
        settings.api_key,
        limiter=limiter,
        transport=transport,
        timeout=settings.timeout,
        connection_id=settings.connection_id,
        max_connections=max(1, min(settings.concurrency, 16)),
        backoff=settings.retry_backoff,
    )
    return limiter, client


def _listing(connections: Sequence[Connection]) -> str:
    return "; ".join(
        f"{c.name} ({c.connection_id}{', default' if c.is_default else ''})" for c in connections
    )


def choose_connection(
    connections: Sequence[Connection], wanted: str | None, used_before: str | None
) -> Connection:
    """Pick the connection: the one asked for, else the one an earlier run used, else the only active one.

    Raises:
        InputError: the asked one is unknown or differs from the one the earlier run used, or
            several are active and none was asked for.
        ApiError: no connection is active.
    """
    if wanted and used_before and wanted.lower() != used_before.lower():
        raise InputError(f"the run used connection {used_before}, not {wanted}")
    wanted = wanted or used_before
    if wanted:
        for c in connections:
            if c.connection_id.lower() == wanted.lower():
                return c
        raise InputError(
            f"connection {wanted} is not one of this account's connections: {_listing(connections)}"
        )
    active = [c for c in connections if c.status.upper() == "ACTIVE"]
    if len(active) == 1:
        return active[0]
    if not active:
        raise ApiError("this account has no active VoiceLink connection")
    raise InputError(
        "several VoiceLink connections are active; choose one with --connection-id or "
        f"VOCOBASE_CONNECTION_ID: {_listing(connections)}"
    )


async def preflight(
    client: VoiceLinkClient, connection_id: str | None = None, *, used_before: str | None = None
) -> tuple[Connection, tuple[Connection, ...]]:
    """Check the key and choose the connection (one read); set it on the client.

    Args:
        client: The job's client; its ``connection_id`` is set to the chosen connection.
        connection_id: The connection asked for (``--connection-id``), if any.
        used_before: The connection an earlier run used (a rollback must use the run's).

    Returns:
        The chosen connection and every connection of the account.

    Raises:
        AuthError: the key was rejected.
        InputError, ApiError: see :func:`choose_connection`; ApiError when the read fails.
    """
    # A wrong --base-url shows here, the first request of a job (the client says so).
    connections = tuple(await client.list_connections())
    chosen = choose_connection(connections, connection_id, used_before)
    client.connection_id = chosen.connection_id
    return chosen, connections


async def read_inventory(
    client: VoiceLinkClient,
    connection_id: str | None = None,
    *,
    used_before: str | None = None,
    rows: Rows = (),
    on_read: ReadCallback | None = None,
) -> Inventory:
    """The pre-flight, then the account's state the job needs, read once (``inventory.read_state``).

    Args:
        client: The job's client; its ``connection_id`` is set to the chosen connection.
        connection_id: The connection asked for (``--connection-id``), if any.
        used_before: The connection an earlier run used (a rollback must use the run's).
        rows: The DIDs the job will touch (an import's valid rows, a rollback's changes): only
            what sync leaves unresolved of these is read besides it. A callable that makes
            them is called once the sync has gone out (``inventory.read_state``).
        on_read: Told what is being read, for a progress line.

    Returns:
        The DIDs, bots and routing the rows need, the chosen connection and the reads made.

    Raises:
        AuthError: the key was rejected.
        InputError, ApiError: see :func:`preflight`; ApiError when a read fails.
    """
    chosen, connections = await preflight(client, connection_id, used_before=used_before)
    inventory = await read_state(client, rows, on_read=on_read)
    inventory.connection = chosen.connection_id
    inventory.connections = connections
    return inventory
