"""Plans as data: what a job will write, and what it settled without writing (pure).

``plan_import`` (and ``undo.plan_rollback``) take what was read (the rows or the journal's changes,
the account's live state, the journal's history) and return a :class:`Plan`: the writes as
frozen data plus the outcomes already settled at planning time. No I/O happens here and
nothing shared is changed, so a plan can be shown, tested and applied by any caller
(``apply.apply_plan``).

A :class:`Write` says what the live record must equal once it is applied (``expect``) and
what it must still equal for a re-send to be safe (``guard``): that is all the engine needs
to settle an unknown outcome by re-reading, for a run and a rollback alike.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from importer.account.inventory import Inventory
from importer.account.records import Routing
from importer.collector import collector_paused
from importer.engine.records import ConfirmedRow, InFlightRow
from importer.engine.resolve import NearIndex, resolve_row
from importer.fields import ROUTING_FIELDS, routing_body
from importer.model import RoutingRow, RowOutcome
from importer.vocab import Action, Decision, OnExisting, ReasonKind, Status

__all__ = [
    "NO_DELETE",
    "History",
    "Plan",
    "Undo",
    "Write",
    "body_of",
    "plan_from_dict",
    "plan_import",
    "plan_to_dict",
    "record_text",
    "writes_fingerprint",
]

NO_DELETE = "the API has no delete"
IN_FLIGHT_APPLIED = " (the run's in-flight write had been applied)"


def body_of(values: Mapping[str, object] | None) -> dict[str, int] | None:
    """The full replacement body of a record or body, or None when it is incomplete or not integers."""
    if values is None:
        return None
    record: dict[str, int | None] = {}
    for name in ROUTING_FIELDS:
        value = values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return None
        record[name] = value
    try:
        return routing_body(record)
    except (ValueError, KeyError):
        return None


def record_text(values: Mapping[str, object] | None) -> str:
    """A record or body as one line of JSON for people (null fields left out)."""
    if values is None:
        return ""
    return json.dumps({k: v for k, v in values.items() if v is not None})


class _RecordTexts(dict[tuple[tuple[str, ...], tuple[object, ...]], str]):
    """``record_text`` of many records, the text of each distinct record after its DID id made once.

    A dry run shows a create body per row: ``{"did_id": N, ...}`` with a handful of distinct
    routings after the id. The id is spliced in front of the rest's text, as json.dumps writes it.
    A record is keyed by its names and its values, two flat tuples (no tuple per field).
    """

    def __missing__(self, key: tuple[tuple[str, ...], tuple[object, ...]]) -> str:
        self[key] = text = record_text(dict(zip(*key, strict=True)))
        return text

    def text(self, values: Mapping[str, object] | None) -> str:
        if values is None:
            return ""
        names, kept = tuple(values), tuple(values.values())
        # Only ints, texts and None as keys: True == 1 == 1.0 would share a text they do not have.
        if not _PLAIN.issuperset(map(type, kept)):
            return record_text(values)
        if names and names[0] == "did_id" and type(kept[0]) is int:
            rest = self[names[1:], kept[1:]]
            return f'{{"did_id": {kept[0]}' + (", " + rest[1:] if rest != "{}" else "}")
        return self[names, kept]


_PLAIN = frozenset((int, str, type(None)))


class Write(NamedTuple):
    """One write to send: the data the engine needs to send it, settle it and report it.

    A named tuple (a plan of a large file holds 100,000): immutable like the plan, and made
    about three times faster than a frozen dataclass.
    """

    row: int
    """The outcome's row: the input's Excel row (a rollback: its own results sheet's row)."""
    did_id: int
    did_number: str
    action: Action
    """CREATE or UPDATE."""
    routing_id: int | None
    """The record an update replaces (None for a create)."""
    body: Mapping[str, int | str]
    before: Mapping[str, int | None] | None
    """The live record when planned (None for a create): journalled, shown by a dry run."""
    expect: Mapping[str, int]
    """What the live record (as a body) must equal once the write is applied."""
    guard: Mapping[str, int] | None = None
    """What the live record must still equal for a re-send to be safe; None: no check."""
    done: str = ""
    """The success reason; "" is the kind's label ("created", "updated")."""
    done_kind: ReasonKind = ReasonKind.UPDATED
    dry_kind: ReasonKind = ReasonKind.DRY_RUN_UPDATE
    note: str = ""
    """What the plan says about it, for people (shown in plan lines and dry runs)."""

    @classmethod
    def update(
        cls,
        row: int,
        did_id: int,
        did_number: str,
        routing_id: int,
        target: Mapping[str, int],
        before: Mapping[str, int | None] | None,
        **more: Any,
    ) -> Write:
        """An update of routing ``routing_id`` to ``target``, sent as it is and expected back so.

        Args:
            row: The outcome's row.
            did_id: The DID the routing belongs to.
            did_number: That DID's number, for people.
            routing_id: The record the update replaces.
            target: The record to send.
            before: The live record when planned (None when it was not read).
            more: The rest of the write (guard, done, done_kind, dry_kind, note).
        """
        return cls(
            row=row,
            did_id=did_id,
            did_number=did_number,
            action=Action.UPDATE,
            routing_id=routing_id,
            body=MappingProxyType(dict(target)),
            before=None if before is None else MappingProxyType(dict(before)),
            expect=MappingProxyType(dict(target)),
            **more,
        )

    def outcome(
        self, status: Status, reason: str, kind: str, *, current: str = "", proposed: str = ""
    ) -> RowOutcome:
        """This write's row ending as ``status`` without the engine's answer (not sent, not settled)."""
        return RowOutcome(
            row=self.row,
            status=status,
            action=self.action,
            reason=reason,
            reason_kind=kind,
            did_id=self.did_id,
            routing_id=self.routing_id,
            current=current,
            proposed=proposed,
        )


@dataclass(frozen=True, slots=True)
class Undo:
    """A rollback's decision about one change of the run: a row of the rollback's results sheet."""

    index: int
    """This undo's row in the rollback's Results sheet (Excel numbering, first data row 2)."""
    run_row: int
    """The row of the run's input file that made the change."""
    did_id: int | None
    did_number: str
    action_undone: str
    """'create' or 'update': what the run did."""
    run_wrote: Mapping[str, int] | None
    target: Mapping[str, int] | None
    """The body the rollback sends: the record before the run, or the created one with status 0."""
    live_record: Mapping[str, int | None] | None
    """The live routing when the rollback planned (None: no routing)."""
    routing_id: int | None
    decision: Decision
    reason: str
    reason_kind: ReasonKind
    run_id: int = 0
    """The run whose change this undoes (across several runs: the first that changed the DID)."""

    def line(self) -> str:
        """One plan line for people."""
        did = f"DID {self.did_number or '?'} (id {self.did_id})"
        by = f"run {self.run_id}" if self.run_id else "the run"
        return f"row {self.run_row}, {did}, {self.action_undone}d by {by}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What a job will do: writes to send, outcomes settled without a write, and the counts."""

    writes: tuple[Write, ...]
    outcomes: tuple[RowOutcome, ...]
    """Rows settled at planning time (unchanged, skipped, failed), one outcome each."""
    counts: Mapping[str, int]
    """How many rows each plan step got, in the order people read them."""
    on_existing: OnExisting = OnExisting.UPDATE
    """What a create that meets routing created meanwhile does (``apply_plan`` follows it)."""
    note: str = ""
    """Said after the counts, in parentheses."""
    heading: str = ""
    details: tuple[str, ...] = ()
    """One line per row worth a look before confirming."""
    journal_rows: Mapping[int, int] = field(default_factory=dict)
    """Outcome row -> the row the journal records it under, where they differ (a rollback)."""
    undos: tuple[Undo, ...] = ()
    """A rollback's decisions, one per change of the run, in results order (empty for an import)."""
    cost: str = ""
    """Reads done, writes planned and their time at the rate (``SendOptions.cost``), set by the job."""

    def text(self) -> str:
        """The counts as one line, the note and the cost in parentheses."""
        line = ", ".join(f"{name} {n}" for name, n in self.counts.items())
        said = "; ".join(part for part in (self.note, self.cost) if part)
        return line + (f" ({said})" if said else "")

    def lines(self, limit: int | None = None) -> list[str]:
        """The plan for people: a heading, one line per detail (up to ``limit``), the counts."""
        out = [self.heading] if self.heading else []
        shown = self.details if limit is None else self.details[:limit]
        out += ["  " + d for d in shown]
        if len(shown) < len(self.details):
            out.append(
                f"  ... and {len(self.details) - len(shown)} more (every one is in the results workbook)"
            )
        out.append(f"plan: {self.text()}")
        return out

    def journal_row(self, row: int) -> int:
        return self.journal_rows.get(row, row)

    @collector_paused()  # a tuple of new outcomes and their texts: no cycle to find
    def dry_run(self) -> tuple[RowOutcome, ...]:
        """Every row's outcome when nothing is sent: the settled ones, and each write as 'would ...'."""
        texts = _RecordTexts()
        would = tuple(
            w.outcome(
                Status.NOT_SENT,
                w.dry_kind.label + (f"; {w.note}" if w.note else ""),
                w.dry_kind,
                current=texts.text(w.before),
                proposed=texts.text(w.body),
            )
            for w in self.writes
        )
        return self.outcomes + would

    def not_sent(self, reason: str, kind: ReasonKind) -> tuple[RowOutcome, ...]:
        """The outcome of every write when none is sent (e.g. not confirmed)."""
        return tuple(w.outcome(Status.NOT_SENT, reason, kind) for w in self.writes)


@dataclass(frozen=True, slots=True)
class History:
    """What the journal says about earlier runs of the same input."""

    confirmed: Mapping[int, ConfirmedRow] = field(default_factory=dict)
    in_flight: Mapping[int, InFlightRow] = field(default_factory=dict)


# -- import ----------------------------------------------------------------------------


def _failed(row: int, kind: ReasonKind, reason: str, did_id: int | None) -> RowOutcome:
    return RowOutcome(
        row=row, status=Status.FAILED, action=Action.FAIL, reason=reason, reason_kind=kind, did_id=did_id
    )


@collector_paused()  # writes and outcomes, new and kept: no cycle to find
def plan_import(
    rows: Iterable[RoutingRow],
    inventory: Inventory,
    connection: str,
    history: History,
    on_existing: OnExisting,
) -> Plan:
    """Plan every valid row against the live state: create, update, unchanged, skip or fail.

    A row an earlier run of this input already did is planned against the live state too:
    still as asked, it is unchanged ("done in an earlier run"); changed since (drift), it gets
    the write it needs like any other row, marked "changed since run N" in the plan.

    Args:
        rows: The valid rows, in input order.
        inventory: The account's live state.
        connection: The run's connection id.
        history: Rows earlier runs of this input confirmed or left in flight.
        on_existing: What to do with a DID whose routing exists and differs.

    Returns:
        The plan; a create is planned only for a DID with no routing in ``inventory``.
    """
    writes: list[Write] = []
    outcomes: list[RowOutcome] = []
    details: list[str] = []
    seen: dict[int, int] = {}
    counts: collections.Counter[str] = collections.Counter()
    near = NearIndex.of(inventory.dids_by_number)  # once: a scan per unknown number is quadratic
    bodies: dict[tuple[int | None, ...], MappingProxyType[str, int]] = {}
    for row in rows:
        found = resolve_row(row, inventory, connection, near)
        if not found.ok:
            outcomes.append(_failed(row.row, found.kind, found.reason, found.did_id))
            counts["fail"] += 1
            continue
        did_id = found.did_id
        assert did_id is not None
        if did_id in seen:
            outcomes.append(
                _failed(
                    row.row,
                    ReasonKind.DUPLICATE,
                    f"DID id {did_id} is a duplicate of row {seen[did_id]}",
                    did_id,
                )
            )
            counts["fail"] += 1
            continue
        seen[did_id] = row.row
        # Rows share a handful of distinct records: each body is built once, then only read.
        key = row.record_values()
        desired = bodies.get(key)
        if desired is None:  # one read-only body per distinct record, shared by the writes' expect
            desired = bodies[key] = MappingProxyType(routing_body(row.record()))
        existing = inventory.routing.get(did_id)
        earlier = history.confirmed.get(row.row)
        did = inventory.dids_by_id.get(did_id)
        number = did.did_number if did is not None else (row.did_number or "")
        if existing is not None and body_of(existing.record) == desired:
            if earlier is not None:
                outcomes.append(
                    RowOutcome(
                        row=row.row,
                        status=Status.UNCHANGED,
                        action=Action.UNCHANGED,
                        reason=f"done in an earlier run at {earlier.when} ({earlier.status}); "
                        "the routing is still as requested, nothing sent",
                        reason_kind=ReasonKind.DONE_EARLIER,
                        did_id=did_id,
                        routing_id=existing.routing_id,
                    )
                )
                counts["done_before"] += 1
            else:
                outcomes.append(_already(row.row, did_id, existing, history.in_flight.get(row.row)))
                counts["unchanged"] += 1
            continue
        drift = ""
        if earlier is not None:
            now = "its routing is gone" if existing is None else f"now {record_text(existing.record)}"
            drift = f"changed since run {earlier.run_id} ({now})"
            details.append(f"row {row.row}, DID {number} (id {did_id}): {drift}")
            counts["drifted"] += 1
        if existing is None:
            writes.append(
                Write(
                    row=row.row,
                    did_id=did_id,
                    did_number=number,
                    action=Action.CREATE,
                    routing_id=None,
                    body=MappingProxyType({"did_id": did_id, **desired}),
                    before=None,
                    expect=desired,
                    done=f"created; {drift}" if drift else "",
                    done_kind=ReasonKind.CREATED,
                    dry_kind=ReasonKind.DRY_RUN_CREATE,
                    note=drift,
                )
            )
            counts["create"] += 1
            continue
        if on_existing is not OnExisting.UPDATE:
            skip = on_existing is OnExisting.SKIP
            outcomes.append(
                RowOutcome(
                    row=row.row,
                    status=Status.SKIPPED if skip else Status.FAILED,
                    action=Action.SKIP if skip else Action.FAIL,
                    reason=f"routing {existing.routing_id} exists and differs"
                    + (f" ({drift})" if drift else "")
                    + f"; --on-existing {on_existing}",
                    reason_kind=ReasonKind.EXISTS_SKIPPED if skip else ReasonKind.EXISTS_FAILED,
                    did_id=did_id,
                    routing_id=existing.routing_id,
                    current=record_text(existing.record),
                    proposed=record_text(desired),
                )
            )
            counts["skip" if skip else "fail"] += 1
            continue
        writes.append(
            Write.update(
                row.row,
                did_id,
                number,
                existing.routing_id,
                desired,
                existing.record,
                done=f"updated; {drift}" if drift else "",
                note=drift,
            )
        )
        counts["update"] += 1
    order = ("create", "update", "unchanged", "skip", "fail")
    shown = {name: counts[name] for name in order}
    shown["done in an earlier run"] = counts["done_before"]
    if counts["drifted"]:
        shown["changed since an earlier run"] = counts["drifted"]
    return Plan(
        tuple(writes),
        tuple(outcomes),
        MappingProxyType(shown),
        on_existing=on_existing,
        details=tuple(details),
    )


def _already(row: int, did_id: int, existing: Routing, resumed: InFlightRow | None) -> RowOutcome:
    """A row whose routing is already as asked (perhaps by the write an interrupted run sent)."""
    if resumed is None:
        return RowOutcome(
            row=row,
            status=Status.UNCHANGED,
            action=Action.UNCHANGED,
            reason="routing already as requested; nothing sent",
            reason_kind=ReasonKind.UNCHANGED,
            did_id=did_id,
            routing_id=existing.routing_id,
        )
    return RowOutcome(
        row=row,
        status=Status.SUCCEEDED,
        action=Action(resumed.action),
        reason=f"the write sent by an interrupted run at {resumed.when} had been applied",
        reason_kind=ReasonKind.SETTLED_ON_RESUME,
        did_id=did_id,
        routing_id=existing.routing_id,
    )


# -- a plan as data on disk, and the fingerprint of its writes ---------------------------


def _mapping(values: Mapping[str, object] | None) -> dict[str, object] | None:
    return None if values is None else dict(values)


def _frozen(values: Mapping[str, object] | None) -> MappingProxyType[str, object] | None:
    return None if values is None else MappingProxyType(dict(values))


def _outcome_to_dict(o: RowOutcome) -> dict[str, object]:
    return {name: getattr(o, name) for name in RowOutcome._fields}


def _outcome_from_dict(d: Mapping[str, object]) -> RowOutcome:
    values = dict(d)
    values["status"] = Status(str(values["status"]))
    values["action"] = Action(str(values["action"]))
    return RowOutcome(**values)  # type: ignore[arg-type]


def plan_to_dict(plan: Plan) -> dict[str, object]:
    """A plan as JSON-ready data (``plan_from_dict`` reads it back equal), to keep it with a job."""
    writes = []
    for w in plan.writes:
        item: dict[str, object] = {name: getattr(w, name) for name in Write._fields}
        for name in ("body", "before", "expect", "guard"):
            item[name] = _mapping(item[name])  # type: ignore[arg-type]
        writes.append(item)
    undos = []
    for u in plan.undos:
        item = {name: getattr(u, name) for name in Undo.__slots__}
        for name in ("run_wrote", "target", "live_record"):
            item[name] = _mapping(item[name])  # type: ignore[arg-type]
        undos.append(item)
    return {
        "writes": writes,
        "outcomes": [_outcome_to_dict(o) for o in plan.outcomes],
        "counts": dict(plan.counts),
        "on_existing": plan.on_existing.value,
        "note": plan.note,
        "heading": plan.heading,
        "details": list(plan.details),
        # JSON keys are text: the rows go as pairs.
        "journal_rows": [[k, v] for k, v in plan.journal_rows.items()],
        "undos": undos,
        "cost": plan.cost,
    }


def plan_from_dict(data: Mapping[str, object]) -> Plan:
    """The plan ``plan_to_dict`` wrote.

    Raises:
        KeyError, TypeError, ValueError: the data is not a plan.
    """
    writes = []
    for raw in data["writes"]:  # type: ignore[attr-defined]
        item = dict(raw)
        for name in ("body", "before", "expect", "guard"):
            item[name] = _frozen(item.get(name))
        item["action"] = Action(item["action"])
        item["done_kind"] = ReasonKind(item["done_kind"])
        item["dry_kind"] = ReasonKind(item["dry_kind"])
        writes.append(Write(**item))
    undos = []
    for raw in data.get("undos", ()):  # type: ignore[attr-defined]
        item = dict(raw)
        for name in ("run_wrote", "target", "live_record"):
            item[name] = _frozen(item.get(name))
        item["decision"] = Decision(item["decision"])
        item["reason_kind"] = ReasonKind(item["reason_kind"])
        undos.append(Undo(**item))
    return Plan(
        writes=tuple(writes),
        outcomes=tuple(_outcome_from_dict(o) for o in data["outcomes"]),  # type: ignore[attr-defined]
        counts=MappingProxyType(dict(data["counts"])),  # type: ignore[call-overload]
        on_existing=OnExisting(str(data["on_existing"])),
        note=str(data.get("note", "")),
        heading=str(data.get("heading", "")),
        details=tuple(str(d) for d in data.get("details", ())),  # type: ignore[attr-defined]
        journal_rows=MappingProxyType({int(k): int(v) for k, v in data.get("journal_rows", ())}),  # type: ignore[attr-defined]
        undos=tuple(undos),
        cost=str(data.get("cost", "")),
    )


def writes_fingerprint(plan: Plan) -> str:
    """A digest of what a plan writes: which record of which DID, how, and with what body.

    Two plans with the same fingerprint send the same requests. The words around a write (its
    reason, its note) and the plan's settled outcomes are left out: only the writes change the
    account, so only they decide whether a plan shown is still the plan that would be sent.
    """
    import hashlib

    writes = sorted(
        (w.row, w.did_id, w.action.value, w.routing_id, sorted(w.body.items())) for w in plan.writes
    )
    return hashlib.sha256(json.dumps(writes, default=str).encode()).hexdigest()
