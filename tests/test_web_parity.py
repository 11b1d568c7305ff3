"""Parity: the same messy file through the library and through the web API gives the same rows.

The library side is ``validate_file`` (the CLI's ``validate``) and ``run_import(dry_run=True)``
against the sandbox; the web side is upload -> validate -> plan over the JSON API, on a server
in front of the same sandbox. Every row must end with the same status, action, DID id and reason
kind, and the job must carry the same notes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
from helpers import SAMPLE, config_for, wait_for_job, web_connection

from importer.jobs.run import run_import
from importer.jobs.summary import input_notes
from importer.jobs.validate import load_and_validate, validate_file, validation_outcomes
from importer.options import InputOptions, ValidateConfig
from importer.sandbox import Sandbox, SandboxConfig, create_sandbox
from importer.web.server import ServeSettings, running_server
from importer.words import Surface

TOKEN = "parity-test-token-0123456789-abcdefghij"


@dataclass(frozen=True)
class Case:
    name: str
    make: Any
    """(folder) -> the file to import."""
    options: dict[str, Any]
    """InputOptions fields besides the path."""
    note: str = ""
    """Words one of the notes must hold (so the notes compared are not both empty)."""


def _sample_csv(folder: Path) -> Path:
    return Path(shutil.copy(SAMPLE / "carrier_routing.csv", folder / "carrier.csv"))


def _cp1252_csv(folder: Path) -> Path:
    """The sample in a legacy encoding, with letters that tell it apart (an encoding note)."""
    text = (SAMPLE / "carrier_routing.csv").read_text(encoding="utf-8-sig").replace("Bharat", "Bhärät")
    path = folder / "legacy.csv"
    path.write_bytes(text.encode("cp1252"))
    return path


def _hidden_xlsx(folder: Path) -> Path:
    """The sample workbook with two data rows hidden (a hidden-rows note, skipped rows)."""
    path = Path(shutil.copy(SAMPLE / "carrier_routing.xlsx", folder / "hidden.xlsx"))
    book = openpyxl.load_workbook(path)
    sheet = book["DID Routing"]  # the data sheet (a "Notes" sheet comes first)
    header = next(r for r in range(1, 10) if any(str(c.value or "").strip() for c in sheet[r]))
    for row in (header + 2, header + 5):
        sheet.row_dimensions[row].hidden = True
    book.save(path)
    return path


CASES = [
    Case("sample", _sample_csv, {}),
    Case(
        "legacy-encoding",
        _cp1252_csv,
        {"default_region": "IN", "ignore_columns": ("Notes",), "encoding": None},
        note="(detected)",
    ),
    Case("hidden-rows", _hidden_xlsx, {"default_region": "IN", "skip_hidden_rows": True}, note="hidden rows"),
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, Sandbox]]:
    sandbox = create_sandbox(SandboxConfig(requests_per_minute=100_000))
    settings = ServeSettings(
        connection=web_connection(sandbox), data_dir=tmp_path / "data", port=0, token=TOKEN
    )
    with (
        running_server(settings) as (url, _t, _s),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client,
    ):
        yield client, sandbox


def _web_rows(client: httpx.Client, job_id: str) -> dict[int, tuple[Any, ...]]:
    rows = client.get(f"/api/jobs/{job_id}/rows", params={"limit": 1000}).json()["rows"]
    return {r["row"]: (r["status"], r["action"], r["did_id"], r["reason_kind"]) for r in rows}


def _web_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items() if k != "default_region"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_web_parity_with_the_library_row_by_row(
    case: Case, served: tuple[httpx.Client, Sandbox], tmp_path: Path
) -> None:
    client, sandbox = served
    source = case.make(tmp_path)
    options = InputOptions(path=source, **case.options)

    checked = validate_file(ValidateConfig(input=options, output=tmp_path / "v.results.xlsx"))
    columns = validation_outcomes(load_and_validate(options))
    validated = {
        row: (str(status), str(action), did, str(kind))
        for row, status, action, did, kind in zip(
            columns.row, columns.status, columns.action, columns.did_id, columns.reason_kind, strict=True
        )
    }
    report = load_and_validate(options)
    # The same notes, each surface naming its own controls: the library's, in the page's words.
    web_notes = [
        *input_notes(report.table, options.skip_hidden_rows, Surface.WEB),
        *report.notes_for(Surface.WEB),
    ]
    assert len(web_notes) == len(checked.notes)
    dry = run_import(
        config_for(source, tmp_path, input=options, dry_run=True, surface=Surface.WEB),
        transport=httpx.ASGITransport(app=sandbox.app),
    )
    planned = {o.row: (str(o.status), str(o.action), o.did_id, str(o.reason_kind)) for o in dry.outcomes}
    assert sandbox.state_snapshot()["writes"] == []

    with source.open("rb") as fh:
        form = {"default_region": case.options.get("default_region", "")}
        created = client.post("/api/jobs", files={"file": (source.name, fh)}, data=form)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    wait_for_job(client, job_id, {"validated", "failed"})
    extra = _web_options(case.options)
    if extra:
        assert client.patch(f"/api/jobs/{job_id}", json=extra).status_code == 200
    job = wait_for_job(client, job_id, {"validated", "failed"})
    assert job["status"] == "validated", job

    assert _web_rows(client, job_id) == validated
    assert job["notes"] == web_notes
    assert case.note in " ".join(job["notes"])
    kinds = {v[0] for v in validated.values()}
    assert "failed" in kinds and ("skipped" in kinds) == case.options.get("skip_hidden_rows", False)
    assert job["counts"]["failed"] == checked.counts.get("failed", 0)

    client.post(f"/api/jobs/{job_id}/plan")
    job = wait_for_job(client, job_id, {"planned", "validated"})
    assert job["status"] == "planned", job
    assert _web_rows(client, job_id) == planned
    assert job["notes"] == list(dry.notes)
    assert sandbox.state_snapshot()["writes"] == []
