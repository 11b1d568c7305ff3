"""The sandbox package: its module order (no import cycle), its packaged data, lean sync, search, counters."""

from __future__ import annotations

import ast
import asyncio
import filecmp
import importlib.util
import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest

from importer.sandbox import SANDBOX_API_KEY, SandboxConfig, create_sandbox, load_inventory

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "importer" / "sandbox"
DATA = REPO / "importer" / "data"
SAMPLE = REPO / "sample_data"
AUTH = {"Authorization": f"Bearer {SANDBOX_API_KEY}"}
ORDER = ["rules", "state", "faults", "app", "server"]
"""The documented import order: each module imports only the ones before it."""


def _sandbox_imports(path: Path) -> set[str]:
    """Name the importer.sandbox modules a file imports (at any level, TYPE_CHECKING blocks too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module if node.level == 0 else "importer.sandbox." + node.module
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[2] for n in names if n.startswith("importer.sandbox.") and n.count(".") >= 2}
    return found & set(ORDER)


def test_sandbox_modules_import_only_earlier_modules() -> None:
    assert sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__") == sorted(ORDER)
    for index, name in enumerate(ORDER):
        imported = _sandbox_imports(PACKAGE / f"{name}.py")
        assert imported <= set(ORDER[:index]), f"{name} imports {imported - set(ORDER[:index])}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ORDER)
def test_sandbox_each_module_imports_first_in_a_fresh_interpreter(name: str) -> None:
    code = f"import importer.sandbox.{name}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_sandbox_package_exports_what_tests_import() -> None:
    import importer.sandbox as sandbox

    assert sorted(sandbox.__all__) == sandbox.__all__
    assert all(getattr(sandbox, name) is not None for name in sandbox.__all__)


# --- package data: one source of truth ---------------------------------------------------------


@pytest.mark.parametrize("name", ["inventory.json", "carrier_routing.xlsx", "carrier_routing.csv"])
def test_sample_data_copies_equal_the_package_data(name: str) -> None:
    """importer/data is the source; sample_data holds copies (python sample_data/make_samples.py)."""
    assert filecmp.cmp(DATA / name, SAMPLE / name, shallow=False)


def test_make_samples_regenerates_the_package_data_exactly(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLE / "make_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_samples"] = module  # dataclasses look their module up while defining
    try:
        spec.loader.exec_module(module)
        assert module.DATA == DATA
        module.write_xlsx(tmp_path / "s.xlsx")
        module.write_csv(tmp_path / "s.csv")
    finally:
        del sys.modules["make_samples"]
    assert (tmp_path / "s.xlsx").read_bytes() == (DATA / "carrier_routing.xlsx").read_bytes()
    assert (tmp_path / "s.csv").read_bytes() == (DATA / "carrier_routing.csv").read_bytes()


def test_default_inventory_is_the_packaged_one() -> None:
    packaged = load_inventory()
    assert packaged == load_inventory(DATA / "inventory.json")
    assert len(packaged.dids) == 30 and len(packaged.routing) == 4


# --- lean sync, search, per-endpoint counters ---------------------------------------------------


async def _calls(config: SandboxConfig, *calls: tuple[str, str, dict[str, Any]]) -> list[Any]:
    sandbox = create_sandbox(config)
    transport = httpx.ASGITransport(app=sandbox.app)
    out: list[Any] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox/api/v2", headers=AUTH) as c:
        for method, path, params in calls:
            if method == "GET":
                response = await c.get(path, params=params)
            else:
                response = await c.post(path, json=params)
            out.append(response.json()["data"])
    out.append(sandbox.state_snapshot())
    return out


def test_sandbox_lean_sync_answers_routing_only() -> None:
    full, full_state = asyncio.run(_calls(SandboxConfig(), ("POST", "/voicelink/sync", {})))
    lean, dids, bots, lean_state = asyncio.run(
        _calls(
            SandboxConfig(lean_sync=True),
            ("POST", "/voicelink/sync", {}),
            ("GET", "/voicelink/dids/purchased", {"per_page": 100}),
            ("GET", "/voicelink/bots", {"per_page": 1000}),
        )
    )
    assert (lean["dids"], lean["bots"], lean["readiness"]) == ([], [], [])
    assert full["dids"] and full["bots"] and full["readiness"]
    assert lean["routing"] == full["routing"] and len(lean["routing"]) == 4
    # The paged lists still carry everything, for the client's fallback.
    assert [d["id"] for d in dids["data"]] == [d["id"] for d in full["dids"]]
    assert [b["id"] for b in bots["data"]] == [b["id"] for b in full["bots"]]
    assert lean_state["options"]["lean_sync"] is True and full_state["options"]["lean_sync"] is False


@pytest.mark.parametrize(
    ("search", "ids"),
    [
        ("918011223344", [812]),  # a whole number: exactly that DID
        ("8011223344", [812]),  # any literal substring
        ("+918011223344", []),  # no normalising: "+" is not in did_number
        ("91 8011223344", []),
        ("9180112233440", []),
    ],
)
def test_sandbox_did_search_is_a_literal_substring_of_did_number(search: str, ids: list[int]) -> None:
    page, _ = asyncio.run(_calls(SandboxConfig(), ("GET", "/voicelink/dids/purchased", {"search": search})))
    assert [d["id"] for d in page["data"]] == ids


def test_sandbox_counts_requests_per_endpoint() -> None:
    *_, state = asyncio.run(
        _calls(
            SandboxConfig(),
            ("GET", "/telephony/connections", {"provider": "voicelink"}),
            ("POST", "/voicelink/sync", {}),
            ("GET", "/voicelink/dids/purchased", {"search": "918011223344"}),
            ("GET", "/voicelink/dids/purchased", {"search": "918011224455"}),
            ("GET", "/voicelink/dids/purchased", {"page": 2}),
            ("GET", "/voicelink/bots", {"per_page": 1000}),
        )
    )
    assert state["request_counts"] == {
        "GET /telephony/connections": 1,
        "GET /voicelink/bots": 1,
        "GET /voicelink/dids/purchased": 3,
        "POST /voicelink/sync": 1,
    }


@pytest.mark.slow
def test_cli_sandbox_lean_sync_flag(tmp_path: Path) -> None:
    out = tmp_path / "state.json"
    command = [
        sys.executable,
        "-m",
        "importer",
        "sandbox",
        "--port",
        "0",
        "--lean-sync",
        "--state-out",
        str(out),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            url = re.search(r"(http://127\.0\.0\.1:\d+/api/v2)", first)
            assert url is not None, first
            request = urllib.request.Request(
                url.group(1) + "/voicelink/sync",
                data=b"{}",
                headers={**AUTH, "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                data = json.load(resp)["data"]
            assert (data["dids"], data["bots"], len(data["routing"])) == ([], [], 4)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert json.loads(out.read_text(encoding="utf-8"))["options"]["lean_sync"] is True
