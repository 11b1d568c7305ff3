"""The cycle collector around a large run's work, and reading the API's JSON (fast, and what the
fast parser refuses): paused while trees are built, frozen only in a process of the job's own."""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from helpers import SAMPLE, config_for

from importer.account.client import _json_of
from importer.account.records import as_int
from importer.collector import collector_paused, keep_out_of_collections, own_process_collections
from importer.jobs.run import run_import
from importer.sandbox import SandboxConfig, create_sandbox


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generation of every collection that runs while the test does."""
    seen: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(note)
    try:
        yield seen
    finally:
        gc.callbacks.remove(note)


def _big_answer(items: int) -> bytes:
    dids = [{"id": k, "did_number": f"9180{k:08d}"} for k in range(items)]
    return json.dumps({"data": {"dids": dids}}).encode()


def test_collector_paused_only_its_own_pause_resumes_it() -> None:
    """Two overlapping pauses (two jobs of a server): the inner one never turns collection back on
    under the outer, and after both it is on again."""
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with collector_paused(False):
        assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("the body failed")
    assert gc.isenabled()


def test_a_large_answer_is_parsed_without_a_collection(collections: list[int]) -> None:
    """A 100,000-DID sync is about 50 MB of JSON; parsed, it is a tree of millions of objects and no
    cycle. The same bytes parsed with the collector on run collections; through the client, none."""
    content = _big_answer(60_000)
    assert len(content) > 1 << 20
    orjson.loads(content)
    assert len(collections) > 20, "parsing this many objects with the collector on collects, often"
    answer = httpx.Response(200, content=content)
    collections.clear()
    payload = _json_of(answer)
    assert len(collections) <= 1 and gc.isenabled()  # one may come as the pause itself is made
    assert isinstance(payload, dict) and len(payload["data"]["dids"]) == 60_000


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"data": {"total": NaN}}', "nan"),  # Python's json reads it; RFC 8259 (and orjson) do not
        ('{"message": "über"}'.encode("utf-16"), {"message": "über"}),  # another encoding, with a BOM
        (b"<html>502 Bad Gateway</html>", None),  # not JSON at all: the caller shows an excerpt
        (b"", None),
    ],
)
def test_json_of_reads_what_the_fast_parser_refuses(content: bytes, expected: object) -> None:
    payload = _json_of(httpx.Response(200, content=content))
    if expected == "nan":
        assert isinstance(payload, dict) and payload["data"]["total"] != payload["data"]["total"]
    else:
        assert payload == expected


def test_an_id_past_64_bits_is_never_read_as_another_id() -> None:
    """The fast parser reads an integer past 64 bits as a float: that float is not the id the
    server wrote, so it is no id (the item is skipped with a warning), never a rounded one."""
    payload = _json_of(
        httpx.Response(200, content=b'{"id": 123456789012345678901234567890, "n": 9007199254740993}')
    )
    assert isinstance(payload, dict)
    assert as_int(payload["id"]) in (None, 123456789012345678901234567890)
    assert as_int(payload["n"]) == 9007199254740993  # 64 bits: exact
    assert as_int(2.0**53) is None and as_int(4096.0) == 4096


def test_keep_out_of_collections_freezes_only_in_a_process_of_its_own() -> None:
    before = gc.get_freeze_count()
    try:
        keep_out_of_collections(False)
        assert gc.get_freeze_count() == before
        keep_out_of_collections(True)
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_a_library_run_never_freezes_and_a_cli_one_does(tmp_path: Path) -> None:
    """``run_import`` from a notebook or a server keeps every object collectable; the CLI's
    (``own_process``) freezes what it keeps to the end. Both write the same results."""
    gc.unfreeze()
    try:
        for own in (False, True):
            sandbox = create_sandbox(SandboxConfig(requests_per_minute=100_000))
            folder = tmp_path / ("cli" if own else "library")
            folder.mkdir()
            config = config_for(SAMPLE / "carrier_routing.xlsx", folder, dry_run=True, own_process=own)
            summary = run_import(config, transport=httpx.ASGITransport(app=sandbox.app))
            assert summary.counts and summary.failed_path is not None
            assert (gc.get_freeze_count() > 0) is own
    finally:
        gc.unfreeze()


def test_a_pause_in_a_process_of_its_own_freezes_what_it_built() -> None:
    """Within ``own_process_collections(True)`` (the CLI's run), what a pause built is frozen when
    it ends, not walked by the next young collection; without it, or after it, nothing is frozen.
    A thread started outside the run's context (a server's other job) never freezes."""
    gc.unfreeze()
    kept: list[object] = []
    try:
        with own_process_collections(False), collector_paused():
            kept.append([[k] for k in range(1_000)])
        assert gc.get_freeze_count() == 0
        with own_process_collections(True):
            gc.unfreeze()  # entering froze what exists: count only what the pause builds
            with collector_paused():
                kept.append([[k] for k in range(1_000)])
            assert gc.get_freeze_count() > 1_000
            gc.unfreeze()

            def elsewhere() -> None:
                with collector_paused():
                    kept.append([[k] for k in range(1_000)])

            other = threading.Thread(target=elsewhere)
            other.start()
            other.join()
            assert gc.get_freeze_count() == 0
        with collector_paused():
            kept.append([[k] for k in range(1_000)])
        assert gc.get_freeze_count() == 0 and gc.isenabled()
    finally:
        gc.unfreeze()
