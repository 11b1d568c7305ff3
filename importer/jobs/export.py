"""Export the account's current routing as a workbook that ``run`` imports unchanged.

The "Routing" sheet has the template's columns (``fields.FIELD_NAMES``), one row per routed
DID (with ``include_unrouted``, one per DID, the unrouted ones with blank modes), every cell
written as text. A "Summary" sheet says when, with which key (its last four characters only),
on which connection, and the counts.

Importing the file unchanged plans every row as unchanged and sends nothing, so an export is
a snapshot to keep before a migration and a sheet to edit routing in bulk. It costs the
connections pre-flight and one sync when sync carries the lists; every page of the DID list
only when it does not (and the DIDs are needed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import xlsxwriter

from importer.account.inventory import DidIndex, read_all_dids
from importer.account.limiter import RateLimiter
from importer.account.preflight import open_client, preflight
from importer.account.records import Connection, Routing, number_key
from importer.errors import OutputError
from importer.fields import DIRECTION_OF, FIELD_NAMES, MODES, STATUS_LABELS
from importer.jobs.outputs import check_writable
from importer.jobs.session import key_fingerprint
from importer.options import ExportConfig
from importer.output.paths import atomic_workbook, check_workbook_name, save_problem
from importer.output.template import ROUTING_SHEET

__all__ = ["ExportSummary", "export_routing", "export_routing_async"]

SUMMARY_SHEET = "Summary"


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote."""

    path: Path | None
    """None for a dry run."""
    connection: str
    routed: int
    unrouted: int
    """Rows written for DIDs without routing (0 unless ``include_unrouted``)."""
    requests: int
    """Requests sent, pre-flight included."""
    warnings: tuple[str, ...] = ()
    exit_code: int = 0

    @property
    def rows(self) -> int:
        return self.routed + self.unrouted

    def lines(self) -> list[str]:
        """A short human summary."""
        out = [
            f"connection {self.connection}: {self.routed} routed DIDs"
            + (f", {self.unrouted} without routing" if self.unrouted else "")
            + f"; {self.requests} requests"
        ]
        out += [f"warning: {w}" for w in self.warnings[:10]]
        if len(self.warnings) > 10:
            out.append(f"... and {len(self.warnings) - 10} more warnings")
        out.append(f"exported: {self.path}" if self.path else "dry run: no file written")
        return out


@dataclass(frozen=True, slots=True)
class _Row:
    did_id: int | None
    did_number: str
    record: Mapping[str, int | None] | None
    """None for a DID without routing."""


def export_routing(
    config: ExportConfig, *, transport: httpx.AsyncBaseTransport | None = None
) -> ExportSummary:
    """Write the account's current routing as an importable workbook.

    Args:
        config: The options.
        transport: An httpx transport instead of the network (the sandbox in-process, tests).

    Returns:
        What was written.

    Raises:
        InputError: No key, a bad option, or the file cannot be written (exit 2).
        ApiError: The API refused or failed (exit 3).
    """
    return asyncio.run(export_routing_async(config, transport=transport))


async def export_routing_async(
    config: ExportConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    limiter: RateLimiter | None = None,
) -> ExportSummary:
    """``export_routing`` inside an event loop; ``limiter`` is the key's, shared with other jobs on it
    (the web service's exports pace their reads with its sends); the workbook is written in a thread."""
    config.check()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    path = None if config.dry_run else config.output or Path(f"voicelink-routing-{now:%Y%m%d-%H%M%S}.xlsx")
    if path is not None:  # checked before any read: the reads cost the user's rate limit
        check_workbook_name(path)
        check_writable(path)
    rows, chosen, requests, warnings = await _read(config, transport, limiter)
    connection = f"{chosen.connection_id} ({chosen.name})" if chosen.name else chosen.connection_id
    routed = sum(1 for r in rows if r.record is not None)
    summary = ExportSummary(path, connection, routed, len(rows) - routed, requests, tuple(warnings))
    if path is not None:
        items: list[tuple[str, str]] = [
            ("exported at", now.isoformat().replace("+00:00", "Z")),
            ("API key", key_fingerprint(config.api_key)),
            ("base URL", config.base_url),
            ("connection", connection),
            ("routed DIDs", str(summary.routed)),
            ("DIDs without routing", str(summary.unrouted) if config.include_unrouted else "not included"),
            ("rows", str(summary.rows)),
            ("requests", str(requests)),
            ("re-import", "voicelink-import run THIS_FILE: unchanged rows send nothing"),
        ]
        items += [("warning", w) for w in warnings]
        await asyncio.to_thread(_write, path, rows, items, chosen.connection_id)
    return summary


async def _read(
    config: ExportConfig, transport: httpx.AsyncBaseTransport | None, limiter: RateLimiter | None
) -> tuple[list[_Row], Connection, int, list[str]]:
    """Pre-flight, one sync, and the DID pages only if sync left numbers (or DIDs) unknown."""
    on_read = config.on_read
    _limiter, client = await open_client(config, transport, limiter)
    async with client:
        chosen, _ = await preflight(client, config.connection_id)
        if on_read is not None:
            on_read("sync")
        sync = await client.read_sync()
        index = DidIndex(sync.dids)
        unnamed = [r for r in sync.routing if not r.did_number and r.did_id not in index.by_id]
        if unnamed or (config.include_unrouted and not sync.dids):
            await read_all_dids(client, index, on_read)
        rows = _rows(sync.routing, index, include_unrouted=config.include_unrouted)
        return rows, chosen, client.request_count, list(client.warnings)


def _rows(routing: Sequence[Routing], index: DidIndex, *, include_unrouted: bool) -> list[_Row]:
    rows: list[_Row] = []
    routed: set[int] = set()
    for r in routing:
        did = index.by_id.get(r.did_id) if r.did_id is not None else None
        if did is None and r.did_number:
            did = index.by_number.get(number_key(r.did_number))
        did_id = r.did_id if r.did_id is not None else (did.did_id if did is not None else None)
        number = number_key(r.did_number or (did.did_number if did is not None else ""))
        if did_id is not None:
            routed.add(did_id)
        rows.append(_Row(did_id, number, r.record))
    if include_unrouted:
        rows += [
            _Row(d.did_id, number_key(d.did_number), None)
            for d in index.by_id.values()
            if d.did_id not in routed
        ]
    rows.sort(key=lambda r: (r.did_number, r.did_id or 0))
    return rows


def _cells(row: _Row, connection_id: str) -> list[str]:
    """The row's cells in ``FIELD_NAMES`` order: modes and status as their labels, ids as digits."""
    values: dict[str, str] = {
        "did_id": "" if row.did_id is None else str(row.did_id),
        "did_number": row.did_number,
    }
    if row.record is not None:
        for name, value in row.record.items():
            if value is None:
                continue
            direction = DIRECTION_OF.get(name)
            if direction is not None and value in MODES[direction]:
                values[name] = MODES[direction][value].label
            elif name == "status" and value in STATUS_LABELS:
                values[name] = STATUS_LABELS[value]
            else:
                values[name] = str(value)
        values["connection_id"] = connection_id
    return [values.get(name, "") for name in FIELD_NAMES]


def _write(path: Path, rows: Sequence[_Row], items: Sequence[tuple[str, str]], connection_id: str) -> None:
    try:
        with atomic_workbook(path) as book:
            header = book.add_format({"bold": True, "bg_color": "#DDEBF7", "border": 1})
            text = book.add_format({"num_format": "@"})
            sheet = book.add_worksheet(ROUTING_SHEET)
            for c, name in enumerate(FIELD_NAMES):
                # Text columns, so Excel keeps every digit of a number someone types in later.
                sheet.set_column(c, c, max(len(name) + 4, 16), text)
                sheet.write_string(0, c, name, header)
            sheet.freeze_panes(1, 0)
            for r, row in enumerate(rows, start=1):
                for c, value in enumerate(_cells(row, connection_id)):
                    if value:
                        sheet.write_string(r, c, value)
            summary = book.add_worksheet(SUMMARY_SHEET)
            bold = book.add_format({"bold": True})
            summary.set_column(0, 0, 24)
            summary.set_column(1, 1, 70)
            for r, (name, value) in enumerate(items):
                summary.write_string(r, 0, name, bold)
                summary.write_string(r, 1, value)
    except (OSError, xlsxwriter.exceptions.FileCreateError) as exc:
        raise OutputError(path, save_problem(exc, replacing=path.exists())) from None
