"""The account's live state during a job: the inventory read once, coalesced re-reads, the client.

Shared by ``run`` and ``rollback`` (and any caller of ``apply.apply_plan``): the state is read
once (:func:`read_inventory`), unknown outcomes are settled by re-reading it (one read shared
by the workers that ask at the same time), and the client is opened inside the event loop that
uses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from .api import Bot, Connection, Did, Routing, VoiceLinkClient
from .errors import ApiError, AuthError, InputError
from .limiter import RateLimiter
from .retry import MAX_ATTEMPTS, backoff_delay

__all__ = [
    "DEFAULT_BASE_URL",
    "ClientSettings",
    "Inventory",
    "LiveRouting",
    "index_routing",
    "open_client",
    "read_inventory",
]

DEFAULT_BASE_URL = "https://api.vocobase.com/api/v2"


@dataclass(slots=True)
class Inventory:
    """The account's live state, read once per job (``routing`` is refreshed by re-reads)."""

    dids_by_id: dict[int, Did]
    dids_by_number: dict[str, Did]
    bots: dict[int, Bot]
    routing: dict[int, Routing]
    connection: str = ""
    """The VoiceLink connection the job uses (every request carries it)."""
    connections: tuple[Connection, ...] = ()
    """Every connection of the account (a row naming another one is told apart from a typo)."""


def index_routing(routings: Sequence[Routing], dids_by_number: Mapping[str, Did]) -> dict[int, Routing]:
    """Index routing records by DID id; a record that names only its number is matched by number."""
    out: dict[int, Routing] = {}
    for r in routings:
        did_id = r.did_id
        if did_id is None and r.did_number is not None:
            did = dids_by_number.get(r.did_number)
            did_id = did.did_id if did is not None else None
        if did_id is not None:
            out[did_id] = r
    return out


class LiveRouting:
    """Re-read the routing state, sharing one read among workers that ask at the same time."""

    ROUNDS = MAX_ATTEMPTS
    """Rounds of the client's own read retries before the run gives up on settling."""

    def __init__(self, client: VoiceLinkClient, inventory: Inventory, backoff: float) -> None:
        self._client = client
        self._inventory = inventory
        self._backoff = backoff
        self._lock = asyncio.Lock()
        self._reads = 0
        self._fresh = 0
        """The number (in ``_reads``) of the last read that succeeded: only it may be shared."""

    async def fresh(self) -> dict[int, Routing]:
        """Return routing read after this call began.

        Raises:
            ApiError: the state could not be read in several rounds of retries.
        """
        arrived = self._reads
        async with self._lock:
            # A read counted in `arrived` may have begun before the caller's write failed, so
            # only a read begun after arrival is fresh enough to share, and only if it succeeded:
            # after a failed one the routing held is stale and could call an applied write unsent.
            if self._fresh > arrived:
                return self._inventory.routing
            self._reads += 1
            number = self._reads
            for round_ in range(1, self.ROUNDS + 1):
                try:
                    routings = await self._client.read_routing()
                    break
                except AuthError:
                    raise
                except ApiError:
                    if round_ == self.ROUNDS:
                        raise
                    await asyncio.sleep(backoff_delay(round_ + 1, self._backoff))
            self._inventory.routing = index_routing(routings, self._inventory.dids_by_number)
            self._fresh = number
            return self._inventory.routing


class ClientSettings(Protocol):
    """What opening a client needs (``apply.ConnectOptions`` provides it)."""

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


def choose_connection(connections: Sequence[Connection], wanted: str | None, used_before: str | None) -> str:
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
                return c.connection_id
        raise InputError(
            f"connection {wanted} is not one of this account's connections: {_listing(connections)}"
        )
    active = [c for c in connections if c.status.upper() == "ACTIVE"]
    if len(active) == 1:
        return active[0].connection_id
    if not active:
        raise ApiError("this account has no active VoiceLink connection")
    raise InputError(
        "several VoiceLink connections are active; choose one with --connection-id or "
        f"VOCOBASE_CONNECTION_ID: {_listing(connections)}"
    )


async def read_inventory(
    client: VoiceLinkClient, connection_id: str | None = None, *, used_before: str | None = None
) -> Inventory:
    """Check the key, choose the connection and read the account's state once.

    Args:
        client: The job's client; its ``connection_id`` is set to the chosen connection.
        connection_id: The connection asked for (``--connection-id``), if any.
        used_before: The connection an earlier run used (a rollback must use the run's).

    Returns:
        Every purchased DID, bot and routing record, and the chosen connection.

    Raises:
        AuthError: the key was rejected.
        InputError, ApiError: see :func:`choose_connection`; ApiError when a read fails.
    """
    connections = await client.list_connections()  # a wrong --base-url shows here (the client says so)
    connection = choose_connection(connections, connection_id, used_before)
    client.connection_id = connection
    dids = await client.list_dids()
    bots = await client.list_bots()
    routings = await client.read_routing()
    by_number = {d.did_number: d for d in dids}
    return Inventory(
        dids_by_id={d.did_id: d for d in dids},
        dids_by_number=by_number,
        bots={b.bot_id: b for b in bots},
        routing=index_routing(routings, by_number),
        connection=connection,
        connections=tuple(connections),
    )
