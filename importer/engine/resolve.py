"""Resolve a valid row against the account: its DID's id, its bots, its connection (pure).

Nothing here reads the network: the account's state comes in as an ``Inventory`` read once
per run (``live.read_inventory``), so a row's checks are a function of the row and that state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from importer.account.inventory import BOT_FIELDS, Inventory
from importer.account.records import Connection, Did
from importer.model import RoutingRow
from importer.vocab import ReasonKind

__all__ = ["NearIndex", "Resolution", "connection_problem", "near_match", "resolve_row"]


class Resolution(NamedTuple):
    """What the account says about one row: its DID id and every problem found (one per row: a tuple)."""

    did_id: int | None
    problems: tuple[tuple[ReasonKind, str], ...] = ()

    @property
    def ok(self) -> bool:
        return self.did_id is not None and not self.problems

    @property
    def kind(self) -> ReasonKind:
        """The first problem's kind (the row's reason lists every problem)."""
        return self.problems[0][0]

    @property
    def reason(self) -> str:
        return "; ".join(text for _, text in self.problems)


TAIL = 9
"""A number whose last 9 digits match a purchased DID is that DID with another country code."""


@dataclass(frozen=True, slots=True)
class NearIndex:
    """The purchased DIDs indexed for ``near_match``: a lookup per unknown number, not a scan.

    The hint names the first DID (in the account's order) that ends with the unknown number's
    last 9 digits, or that the unknown number ends with. Both are dictionary lookups: the DIDs
    by their last 9 digits, and every suffix of the unknown number among the DIDs.
    """

    dids: tuple[Did, ...]
    position: Mapping[str, int]
    """Number key -> its place in the account's order (the first match wins, as a scan would)."""
    by_tail: dict[int, dict[str, int]]
    """Length -> last digits -> the first DID with at least that many digits ending so. Length 9 is
    built at once; a number shorter than 9 digits needs a shorter length, built when first asked."""
    lengths: tuple[int, ...] = ()
    """The lengths the account's numbers have: the only suffixes of a number worth looking up."""

    @classmethod
    def of(cls, dids_by_number: Mapping[str, Did]) -> NearIndex:
        """Index the account's DIDs (keyed by number digits) once per job."""
        position = {k: i for i, k in enumerate(dids_by_number)}
        index = cls(tuple(dids_by_number.values()), position, {}, tuple(sorted(set(map(len, position)))))
        index.tails(TAIL)
        return index

    def tails(self, length: int) -> dict[str, int]:
        if length not in self.by_tail:
            firsts: dict[str, int] = {}
            for known, i in self.position.items():
                if len(known) >= length:
                    firsts.setdefault(known[len(known) - length :], i)
            self.by_tail[length] = firsts
        return self.by_tail[length]

    def first(self, number: str) -> Did | None:
        """The first DID that ends with the number's last 9 digits or that the number ends with."""
        tail = number[-TAIL:]
        found = [self.tails(len(tail)).get(tail)]
        found += [self.position.get(number[len(number) - n :]) for n in self.lengths if n <= len(number)]
        places = [i for i in found if i is not None]
        return self.dids[min(places)] if places else None


def near_match(number: str, near: NearIndex) -> str:
    """A hint naming a purchased DID that differs only in its country code, or ""."""
    did = near.first(number)
    if did is None:
        return ""
    return f" (did you mean {did.did_number}, id {did.did_id}? check the country code)"


def connection_problem(
    row_connection: str | None, run_connection: str, connections: Sequence[Connection]
) -> tuple[ReasonKind, str] | None:
    """Say why a row's ``connection_id`` cannot go in this run, or None when it can.

    One run serves one connection (the one chosen at pre-flight): a row naming another
    connection of the account is imported in a run of its own; a UUID the account does not
    have is most likely a typo or another account's.

    Args:
        row_connection: The row's connection_id cell (None or blank: the run's connection).
        run_connection: The connection id this run uses.
        connections: Every connection the account listed.

    Returns:
        The problem's kind and the reason for the row, or None.
    """
    wanted = (row_connection or "").strip()
    if not wanted or wanted.casefold() == run_connection.strip().casefold():
        return None
    by_id = {c.connection_id.strip().casefold(): c for c in connections}
    run = by_id.get(run_connection.strip().casefold())
    uses = f"this run uses '{run.name or run.connection_id}'" if run else f"this run uses {run_connection}"
    other = by_id.get(wanted.casefold())
    if other is None:
        return (
            ReasonKind.UNKNOWN_CONNECTION,
            f"connection {wanted} is not one of this account's connections ({uses})",
        )
    inactive = "" if other.status.upper() == "ACTIVE" else f" (status {other.status or 'unknown'})"
    return (
        ReasonKind.OTHER_CONNECTION,
        f"connection {wanted} is '{other.name or other.connection_id}'{inactive}, {uses}; one run serves "
        f"one connection: import this row in a run of its own with --connection-id {wanted}",
    )


def resolve_row(
    row: RoutingRow, inventory: Inventory, connection: str, near: NearIndex | None = None
) -> Resolution:
    """Find the row's DID id and check its bots and connection against the account.

    Args:
        row: A valid row.
        inventory: The account's live state.
        connection: The run's connection id.
        near: The DIDs indexed for "did you mean" hints; build it once per job
            (``NearIndex.of``), else each unknown number indexes the whole account again.

    Returns:
        The DID id (None when it cannot be found) and every problem, each with its kind.
    """
    problems: list[tuple[ReasonKind, str]] = []
    did_id: int | None = None
    by_number = inventory.dids_by_number.get(row.did_number) if row.did_number else None
    if row.did_number and by_number is None:
        problems.append(
            (
                ReasonKind.DID_NOT_FOUND,
                f"DID {row.did_number} is not in this account's purchased DIDs"
                + near_match(row.did_number, near or NearIndex.of(inventory.dids_by_number)),
            )
        )
    if row.did_id is not None:
        if row.did_id not in inventory.dids_by_id:
            problems.append(
                (ReasonKind.DID_NOT_FOUND, f"DID id {row.did_id} is not in this account's purchased DIDs")
            )
        elif by_number is not None and by_number.did_id != row.did_id:
            problems.append(
                (
                    ReasonKind.DID_MISMATCH,
                    f"did_id {row.did_id} and did_number {row.did_number} are different DIDs "
                    f"({row.did_number} has id {by_number.did_id})",
                )
            )
        did_id = row.did_id
    elif by_number is not None:
        did_id = by_number.did_id
    for name in BOT_FIELDS:
        bot_id = getattr(row, name)
        if bot_id is None:
            continue
        bot = inventory.bots.get(bot_id)
        if bot is None:
            problems.append((ReasonKind.BOT_NOT_FOUND, f"{name} {bot_id}: no such bot in this account"))
        elif not bot.active:
            problems.append((ReasonKind.BOT_INACTIVE, f"{name} {bot_id} ({bot.name}) is inactive"))
    if row.connection_id and (
        problem := connection_problem(row.connection_id, connection, inventory.connections)
    ):
        problems.append(problem)
    return Resolution(did_id, tuple(problems))
