"""The field spec is the one source of truth: the schema, template, sandbox and README agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from importer import fields
from importer.fields import FIELDS, MODES, Direction, header_key, match_header, routing_body
from importer.sandbox import check_routing

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_fields_every_spelling_matches_its_own_field(field: fields.Field) -> None:
    for spelling in (
        field.name,
        field.title,
        *field.aliases,
        f"  {field.title.upper()}  ",
        field.name.replace("_", " "),
    ):
        assert match_header(spelling) == field.name, spelling


@pytest.mark.parametrize(
    "header",
    ["State", "Connection", "Inbound SIP", "Outbound SIP", "Number ID", "Inventory ID", "Province"],
)
def test_fields_headers_that_commonly_mean_something_else_match_no_field(header: str) -> None:
    """A US export's State (NY, CA), a connection type, a SIP URI, a carrier's own record id."""
    assert match_header(header) is None


def test_fields_header_key_ignores_case_space_and_punctuation() -> None:
    assert header_key(" Outbound (Bot) ID ") == header_key("outbound-bot_id") == "outboundbotid"


def test_fields_mode_ids_are_fields_of_kind_int_id() -> None:
    for direction, modes in MODES.items():
        for mode in modes.values():
            if mode.requires is not None:
                assert fields.FIELD_BY_NAME[mode.requires].kind is fields.Kind.INT_ID
                assert mode.requires.startswith(direction.value)


def test_readme_column_and_mode_tables_are_generated_from_the_spec() -> None:
    assert fields.columns_markdown() in README
    assert fields.modes_markdown() in README


def _mode_combinations() -> list[dict[str, int]]:
    out = []
    for inbound in MODES[Direction.INBOUND].values():
        for outbound in MODES[Direction.OUTBOUND].values():
            record: dict[str, int | None] = {
                "for_inbound_call": inbound.number,
                "for_outbound_call": outbound.number,
            }
            for need in (inbound.requires, outbound.requires):
                if need:
                    record[need] = 93
            out.append(routing_body(record))
    return out


@pytest.mark.parametrize(
    "body", _mode_combinations(), ids=lambda b: f"{b['for_inbound_call']}-{b['for_outbound_call']}"
)
def test_sandbox_accepts_exactly_the_bodies_the_spec_builds(body: dict[str, int]) -> None:
    allowed = frozenset(fields.ROUTING_FIELDS)
    _, problems = check_routing(body, allowed=allowed, status_required=True, bots=None)
    assert problems == []
    for need in fields.MODE_ID_FIELDS:
        if need in body:
            missing = {k: v for k, v in body.items() if k != need}
            _, problems = check_routing(missing, allowed=allowed, status_required=True, bots=None)
            assert any(need in p for p in problems), problems
        else:
            extra = {**body, need: 5}
            _, problems = check_routing(extra, allowed=allowed, status_required=True, bots=None)
            assert any(need in p for p in problems), problems


def test_template_headers_are_the_field_names() -> None:
    from importer.output.template import template_csv_text

    assert template_csv_text().strip().split(",") == list(fields.FIELD_NAMES)


def test_readme_documents_every_command() -> None:
    from importer.cli import main

    documented = set(re.findall(r"`voicelink-import (\w+)", README))
    assert set(main.commands) <= documented, set(main.commands) - documented


def test_package_exports_exactly_its_documented_names() -> None:
    import importer

    assert sorted(importer.__all__) == importer.__all__
    for name in importer.__all__:
        assert getattr(importer, name) is not None
    assert {
        "run_import",
        "run_import_async",
        "validate_file",
        "rollback_run",
        "export_routing",
        "ImportConfig",
        "ExportConfig",
        "RunSummary",
    } <= set(importer.__all__)
