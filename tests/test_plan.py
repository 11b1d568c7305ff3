"""Planning: what a dry run shows of each write."""

from __future__ import annotations

import random
from types import MappingProxyType

from importer.engine.plan import _RecordTexts, record_text


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
