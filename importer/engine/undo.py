"""Planning a rollback (pure): what to write back so the routing a run changed is as it was.

``plan_rollback`` takes the journal's changes of the runs to undo, the account's live state and
the journal's timeline, and returns a :class:`~importer.engine.plan.Plan` of ``Undo`` writes plus
the outcomes settled without writing: a change already rolled back, one written over since by
someone else (kept unless forced), or one whose record the API cannot delete.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType

from importer.account.inventory import DidRef, Inventory
from importer.account.records import Did, number_key
from importer.engine.plan import IN_FLIGHT_APPLIED, NO_DELETE, Plan, Undo, Write, body_of, record_text
from importer.engine.records import ChangeRecord
from importer.engine.timeline import Fate, Timeline
from importer.model import RowOutcome
from importer.vocab import Action, Decision, OnExisting, ReasonKind, Status

__all__ = ["collapse", "named_did", "plan_rollback"]


def named_did(change: ChangeRecord) -> DidRef:
    """The DID a journalled change names: its id (recorded, or in its key), or its number."""
    kind, _, value = change.did_key.partition(":")
    did_id = change.did_id
    if did_id is None and kind == "id" and value.isdigit():
        did_id = int(value)
    return DidRef(did_id, value if kind == "num" else None)


def _did_of(change: ChangeRecord, dids_by_number: Mapping[str, Did]) -> int | None:
    named = named_did(change)
    if named.did_id is not None or named.did_number is None:
        return named.did_id
    did = dids_by_number.get(number_key(named.did_number))
    return did.did_id if did is not None else None


def _group(change: ChangeRecord, dids_by_number: Mapping[str, Did]) -> object:
    """The DID a change belongs to, for collapsing (a DID the journal does not name: its row)."""
    did = _did_of(change, dids_by_number)
    return did if did is not None else ("row", change.row)


def collapse(changes: Sequence[ChangeRecord], dids_by_number: Mapping[str, Did]) -> list[ChangeRecord]:
    """One change per DID: the first one's before and action, the last one's body."""
    by_did: dict[object, list[ChangeRecord]] = collections.defaultdict(list)
    for c in changes:
        by_did[_group(c, dids_by_number)].append(c)
    out: list[ChangeRecord] = []
    for group in by_did.values():
        first, last = group[0], group[-1]
        out.append(
            replace(
                first,
                when=last.when,
                did_id=first.did_id if first.did_id is not None else last.did_id,
                routing_id=last.routing_id if last.routing_id is not None else first.routing_id,
                body=last.body,
                settled=last.settled,
            )
        )
    return sorted(out, key=lambda c: c.row)


def _decide(
    index: int, change: ChangeRecord, inventory: Inventory, force: bool, fate: Fate
) -> tuple[Undo, Mapping[str, int] | None]:
    """Decide the undo of one change against the live state; also return the re-send guard.

    ``fate`` is what the journal says became of the change since: a change already rolled back
    has nothing left to roll back, and a rollback of another run that wrote over it since is the
    tool's own work, never someone's change, so ``force`` does not undo it either.
    """
    did_id = _did_of(change, inventory.dids_by_number)
    did = inventory.dids_by_id.get(did_id) if did_id is not None else None
    live_routing = inventory.routing.get(did_id) if did_id is not None else None
    run_wrote = body_of(change.body)
    created = change.action == Action.CREATE
    target: dict[str, int] | None
    if created:
        target = None if run_wrote is None else {**run_wrote, "status": 0}
    else:
        target = body_of(change.before)
    live_record = None if live_routing is None else dict(live_routing.record)
    live = body_of(live_record)
    routing_id = live_routing.routing_id if live_routing is not None else change.routing_id

    def undo(decision: Decision, kind: ReasonKind, reason: str) -> tuple[Undo, Mapping[str, int] | None]:
        made = Undo(
            index=index,
            run_row=change.row,
            did_id=did_id,
            did_number=did.did_number if did is not None else "",
            action_undone=change.action,
            run_wrote=run_wrote,
            target=target,
            live_record=live_record,
            routing_id=routing_id,
            decision=decision,
            reason=reason,
            reason_kind=kind,
            run_id=change.run_id,
        )
        return made, live

    if did_id is None:
        return undo(
            Decision.FAIL, ReasonKind.UNKNOWN_DID, f"the journal does not say which DID ({change.did_key!r})"
        )
    if run_wrote is None or target is None:
        what = "what the run sent" if run_wrote is None else "the record before the run"
        return undo(
            Decision.FAIL, ReasonKind.UNREADABLE_JOURNAL, f"the journal's copy of {what} is incomplete"
        )
    if fate.rolled_back_by is not None:
        return undo(
            Decision.UNCHANGED,
            ReasonKind.ROLLED_BACK,
            f"rolled back already by run {fate.rolled_back_by}; nothing left to roll back",
        )
    if live is not None and live == target:
        done = "already inactive with the run's modes" if created else "already as before the run"
        return undo(Decision.UNCHANGED, ReasonKind.UNCHANGED, f"{done}; nothing to send")
    if not change.settled and live != run_wrote:
        return undo(
            Decision.UNCHANGED,
            ReasonKind.NEVER_APPLIED,
            f"the run's {change.action} was in flight when it stopped and the live routing is not what it "
            "sent: it was never applied, nothing to undo",
        )
    if live_routing is None:
        return undo(
            Decision.SKIP, ReasonKind.VANISHED, "this DID has no routing any more; nothing to restore"
        )
    if created:
        action = f"{NO_DELETE}: routing {routing_id} will be deactivated (status 0), modes kept"
    else:
        action = f"routing {routing_id} will be restored to {record_text(target)}"
    kind = ReasonKind.DEACTIVATE if created else ReasonKind.RESTORE
    if live == run_wrote:
        return undo(Decision.SEND, kind, action + ("" if change.settled else IN_FLIGHT_APPLIED))
    now = record_text(live_record)
    since = fate.overwritten
    if since is not None and fate.overwritten_by_rollback and live == body_of(since.body):
        return undo(
            Decision.UNCHANGED,
            ReasonKind.ROLLED_BACK,
            f"run {since.run_id}, a rollback, has written it since (now {now}): nothing of run "
            f"{change.run_id}'s change is left to roll back",
        )
    known = since is not None and live == body_of(since.body)
    whose = f"run {since.run_id}'s change" if since is not None and known else "someone's change"
    if force:
        return undo(
            Decision.SEND,
            ReasonKind.FORCED,
            f"changed since the run (now {now}), overwriting because of --force: {action}",
        )
    return undo(
        Decision.SKIP,
        ReasonKind.CHANGED_SINCE,
        f"changed since the run (now {now}, the run wrote {record_text(run_wrote)}); skipped so as not to "
        f"overwrite {whose} (--force overwrites it)",
    )


_SETTLED = {
    Decision.UNCHANGED: (Status.UNCHANGED, Action.UNCHANGED),
    Decision.SKIP: (Status.SKIPPED, Action.SKIP),
    Decision.FAIL: (Status.FAILED, Action.FAIL),
}
_DRY_KIND = {
    ReasonKind.RESTORE: ReasonKind.DRY_RUN_RESTORE,
    ReasonKind.DEACTIVATE: ReasonKind.DRY_RUN_DEACTIVATE,
    ReasonKind.FORCED: ReasonKind.DRY_RUN_FORCED,
}


def plan_rollback(
    changes: Sequence[ChangeRecord],
    inventory: Inventory,
    force: bool,
    *,
    heading: str = "",
    timeline: Timeline | None = None,
) -> Plan:
    """Plan one undo per DID the runs changed: restore an update, deactivate a create.

    The changes of several runs (an interrupted run and its resume) collapse per DID: the
    record before the first of them touched it is put back, guarded by what the last one sent.

    Args:
        changes: The runs' writes from the journal, oldest first (unsettled ones included).
        inventory: The account's live state.
        force: Overwrite rows someone changed since the run instead of skipping them.
        heading: The plan's first line for people.
        timeline: The journal's every write and rollback (``Journal.timeline``): a change
            already rolled back, or written over by a rollback of another run, is left alone.

    Returns:
        The plan: one update per undo to send, guarded by the live record it was planned
        against; every other change settled (unchanged, skipped, failed).
    """
    writes: list[Write] = []
    outcomes: list[RowOutcome] = []
    undos: list[Undo] = []
    known = timeline.fates() if timeline is not None else {}
    # Per DID, the last change of the runs decides what became of it (collapse keeps its body).
    fates = {_group(c, inventory.dids_by_number): known.get(Timeline.key(c), Fate()) for c in changes}
    for index, change in enumerate(collapse(changes, inventory.dids_by_number), start=2):
        fate = fates.get(_group(change, inventory.dids_by_number), Fate())
        u, live = _decide(index, change, inventory, force, fate)
        undos.append(u)
        if u.decision is not Decision.SEND:
            status, action = _SETTLED[u.decision]
            outcomes.append(
                RowOutcome(
                    row=u.index,
                    status=status,
                    action=action,
                    reason=u.reason,
                    reason_kind=u.reason_kind,
                    did_id=u.did_id,
                    routing_id=u.routing_id,
                )
            )
            continue
        assert u.did_id is not None and u.target is not None and u.routing_id is not None
        created = u.action_undone == Action.CREATE
        done = (
            f"{NO_DELETE}: routing {u.routing_id} deactivated (status 0), modes kept"
            if created
            else f"routing {u.routing_id} restored to its record before run {u.run_id}"
        ) + (IN_FLIGHT_APPLIED if u.reason.endswith(IN_FLIGHT_APPLIED) else "")
        writes.append(
            Write.update(
                u.index,
                u.did_id,
                u.did_number,
                u.routing_id,
                u.target,
                u.live_record,
                guard=live,
                done=done,
                done_kind=u.reason_kind,
                dry_kind=_DRY_KIND[u.reason_kind],
                note=u.reason,
            )
        )
    tally = collections.Counter(
        ("deactivate" if u.action_undone == Action.CREATE else "restore")
        if u.decision is Decision.SEND
        else u.decision.value
        for u in undos
    )
    counts = {name: tally[name] for name in ("restore", "deactivate", "unchanged", "skip", "fail")}
    return Plan(
        tuple(writes),
        tuple(outcomes),
        MappingProxyType(counts),
        on_existing=OnExisting.FAIL,
        note=f"{NO_DELETE}: deactivate sets status 0, modes kept",
        heading=heading,
        details=tuple(u.line() for u in undos),
        journal_rows=MappingProxyType({u.index: u.run_row for u in undos}),
        undos=tuple(undos),
    )
