"""The "did you mean" hint for numbers the account does not own: same answers, linear time."""

from __future__ import annotations

import random
from collections.abc import ItemsView, Iterator, KeysView, ValuesView

from importer.account.inventory import Inventory
from importer.account.records import Did
from importer.engine.plan import History, plan_import
from importer.engine.resolve import NearIndex, near_match
from importer.model import RoutingRow
from importer.vocab import OnExisting, ReasonKind


def _scan(number: str, dids_by_number: dict[str, Did]) -> str:
    """The hint as the old whole-inventory scan gave it: the reference the index must agree with."""
    tail = number[-9:]
    for known, did in dids_by_number.items():
        if known.endswith(tail) or number.endswith(known):
            return f" (did you mean {did.did_number}, id {did.did_id}? check the country code)"
    return ""


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def test_near_match_index_gives_the_old_scans_suggestions() -> None:
    """A few hundred random accounts and numbers, built so that tails and suffixes collide often."""
    rng = random.Random(17)
    for case in range(300):
        tails = [_digits(rng, rng.randint(1, 10)) for _ in range(4)]
        numbers: dict[str, Did] = {}
        for i in range(rng.randint(0, 25)):
            number = _digits(rng, rng.randint(0, 4)) + rng.choice(tails)
            numbers.setdefault(number, Did(1000 + i, "+" + number, "active"))
        near = NearIndex.of(numbers)
        known = list(numbers)
        queries = [
            _digits(rng, rng.randint(0, 3)) + rng.choice(tails),
            _digits(rng, rng.randint(0, 3)) + (rng.choice(known) if known else ""),
            (rng.choice(known)[rng.randint(0, 3) :] if known else ""),
            _digits(rng, rng.randint(0, 14)),
            "",
        ]
        for q in queries:
            assert near_match(q, near) == _scan(q, numbers), (case, q, known)


class CountingDids(dict[str, Did]):
    """The account's DIDs by number, counting every walk over the whole of them."""

    walks = 0

    def __iter__(self) -> Iterator[str]:
        CountingDids.walks += 1
        return super().__iter__()

    def items(self) -> ItemsView[str, Did]:
        CountingDids.walks += 1
        return super().items()

    def values(self) -> ValuesView[Did]:
        CountingDids.walks += 1
        return super().values()

    def keys(self) -> KeysView[str]:
        CountingDids.walks += 1
        return super().keys()


def test_plan_import_walks_the_inventory_once_however_many_numbers_are_unknown() -> None:
    """200 unknown numbers against 2,000 DIDs: the hint must not scan the account per row."""
    dids = CountingDids({f"9180{i:08d}": Did(i, f"9180{i:08d}", "active") for i in range(2000)})
    inventory = Inventory(
        dids_by_id={d.did_id: d for d in dids.values()}, dids_by_number=dids, bots={}, routing={}
    )
    rows = [
        RoutingRow(row=2 + i, did_id=None, did_number=f"44{i:010d}", for_inbound_call=4, for_outbound_call=4)
        for i in range(200)
    ]
    CountingDids.walks = 0
    plan = plan_import(rows, inventory, "", History(), OnExisting.UPDATE)
    assert [o.reason_kind for o in plan.outcomes] == [ReasonKind.DID_NOT_FOUND] * 200
    # Each 44... number ends with the digits of DID 9180<same 8 digits>: the hint names it.
    assert "did you mean 918000000007, id 7?" in plan.outcomes[7].reason
    assert CountingDids.walks <= 3
