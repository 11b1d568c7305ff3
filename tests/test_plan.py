"""Planning: what a dry run shows of each write."""

from __future__ import annotations

import random
from types import MappingProxyType

from importer.account.inventory import Inventory
from importer.account.records import Bot, Did, Routing
from importer.engine.plan import History, _RecordTexts, plan_import, record_text
from importer.fields import routing_body
from importer.model import RoutingRow
from importer.vocab import Action, OnExisting


def test_record_texts_equal_record_text_for_bodies_records_and_odd_values() -> None:
    """The dry run's shared texts (the DID id spliced before the rest) are record_text's, exactly."""
    rng = random.Random(7)
    fields = ("for_inbound_call", "inbound_sip_trunk_id", "outbound_websocket_bot_id", "status", "note")
    values: list[object] = [None, 0, 1, 2, -3, 10**20, True, False, 1.5, "x", 'é"\\', ""]
    cases: list[dict[str, object] | None] = [
        None,
        {},
        {"did_id": 5},
        {"did_id": None, "status": 1},
        {"did_id": True, "status": 1},
        {"did_id": 7, "status": None},
        {"status": 1, "did_id": 8},
        {"did_id": 9, "tags": [1, 2]},
        {"did_id": 10, "nested": {"a": None}},
    ]
    for _ in range(2_000):
        record: dict[str, object] = {"did_id": rng.choice([rng.randrange(10**9), None, "12"])}
        for name in rng.sample(fields, rng.randrange(len(fields) + 1)):
            record[name] = rng.choice(values)
        cases.append(record)
    texts = _RecordTexts()
    for case in cases:
        for shown in (case, None if case is None else MappingProxyType(case)):
            assert texts.text(shown) == record_text(shown), case
    assert len(texts) < len(cases)  # records differing only by their DID id share one text


def test_plan_import_bodies_are_each_rows_own_however_many_rows_share_a_record() -> None:
    """Rows share a handful of records and the plan builds each body once: every write still
    sends its own row's record (and its own DID), creates and updates alike."""
    rng = random.Random(7)
    n = 600
    dids = [Did(5000 + i, f"9180300{i:05d}", "active") for i in range(n)]
    routed = {
        5000 + i: Routing(9000 + i, 5000 + i, None, {"for_inbound_call": 1, "for_outbound_call": 4})
        for i in range(0, n, 3)
    }
    inventory = Inventory(
        dids_by_id={d.did_id: d for d in dids},
        dids_by_number={d.did_number: d for d in dids},
        bots={93: Bot(93, "Support", True), 94: Bot(94, "Sales", True)},
        routing=routed,
        connection="c-1",
    )
    rows = []
    for i in range(n):
        inbound, outbound = rng.choice([1, 2, 3]), rng.choice([2, 3, 4])
        rows.append(
            RoutingRow(
                row=i + 2,
                did_id=None,
                did_number=f"9180300{i:05d}",
                for_inbound_call=inbound,
                for_outbound_call=outbound,
                inbound_websocket_bot_id=rng.choice([93, 94]) if inbound == 3 else None,
                inbound_sip_trunk_id=rng.choice([11, 12]) if inbound == 2 else None,
                outbound_websocket_bot_id=rng.choice([93, 94]) if outbound == 3 else None,
                outbound_sip_trunk_id=rng.choice([21, 22]) if outbound == 2 else None,
                status=rng.choice([0, 1]),
            )
        )
    plan = plan_import(rows, inventory, "c-1", History(), OnExisting.UPDATE)
    by_row = {r.row: r for r in rows}
    assert len(plan.writes) > n // 2
    for write in plan.writes:
        own = routing_body(by_row[write.row].record())
        assert dict(write.expect) == own
        assert dict(write.body) == ({"did_id": write.did_id, **own} if write.action is Action.CREATE else own)
        assert write.did_id == 5000 + write.row - 2
