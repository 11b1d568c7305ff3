"""What each kind of problem says, on each surface: one label per kind, messages from templates.

A row problem is data: ``RowIssue(kind, params)``. Its words come from here, as frictionless
words its error types: each :class:`IssueKind` carries a code (stored in the results), a
label (counted in summaries) and a message template over the issue's params. Advice that
names a control is a *control* placeholder in the template (``{set_region}``), filled per
surface: the CLI names its flag (``--default-region IN``), the web page names its own field
("set the default region to IN in step 2"). Nothing rewrites one surface's words into the
other's; each renders the same data with its own.

``render(issue, surface)`` renders a row problem; ``render_reason(kind, surface)`` a reason kind
(``vocab.ReasonKind``) whose words name a control.
"""

from __future__ import annotations

import enum
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from importer.errors import InputError, shown
from importer.fields import FIELD_BY_NAME
from importer.vocab import ReasonKind

if TYPE_CHECKING:
    from importer.model import RowIssue

__all__ = [
    "CONTROLS",
    "IssueKind",
    "Note",
    "NoteKind",
    "Surface",
    "WordedInputError",
    "error_words",
    "issue_label",
    "render",
    "render_advice",
    "render_note",
    "render_reason",
    "render_template",
    "template_fields",
    "worded",
]


class Surface(enum.Enum):
    """Who reads the words: the command line or the web page (each names its own controls)."""

    CLI = "cli"
    WEB = "web"


_STEP2 = "(step 2, Sheet and columns)"

CONTROLS: Mapping[str, Mapping[Surface, str]] = {
    "set_region": {
        Surface.CLI: "pass --default-region {region}",
        Surface.WEB: f"set the default region {_STEP2} to {{region}}",
    },
    "set_any_region": {
        Surface.CLI: "pass --default-region to read national numbers",
        Surface.WEB: f"set the default region {_STEP2} to read national numbers",
    },
    "ignore_column": {
        Surface.CLI: 'leave it out with --ignore-column "{column}"',
        Surface.WEB: f'leave it out: choose "(not in the file)" for {{field}} {_STEP2}',
    },
    "confirm_map": {
        Surface.CLI: 'confirm with --map "{column}={field}"',
        Surface.WEB: f'confirm it: keep "{{column}}" chosen for {{field}} {_STEP2}',
    },
    "map_right": {
        Surface.CLI: "map the right column with --map",
        Surface.WEB: f"choose the right column for {{field}} {_STEP2}",
    },
    "region_option": {Surface.CLI: "--default-region", Surface.WEB: "the default region"},
    "map_option": {Surface.CLI: "--map", Surface.WEB: "the column chosen"},
    "map_pick": {
        Surface.CLI: 'add --map "{near}={field}"',
        Surface.WEB: 'choose "{near}" for {field} in the list',
    },
    "pick_one": {
        Surface.CLI: 'pick one with --map "{header}={field}" or leave one out with --ignore-column "{first}"',
        Surface.WEB: "choose one of them for {field} in the list",
    },
    "skip_hidden": {Surface.CLI: "--skip-hidden-rows", Surface.WEB: "skip hidden rows"},
    "skip_hidden_advice": {
        Surface.CLI: "--skip-hidden-rows skips them",
        Surface.WEB: f'"Skip hidden rows" {_STEP2} skips them',
    },
    "encoding_advice": {
        Surface.CLI: "pass --encoding NAME",
        Surface.WEB: f"choose the file's encoding {_STEP2}",
    },
    "force": {Surface.CLI: "--force", Surface.WEB: "forced"},
    "read_other_sheets": {
        Surface.CLI: "--sheet or --all-sheets reads it",
        Surface.WEB: f"choose it among the sheets {_STEP2} to read it",
    },
}
"""Advice that names a control, per surface: templates over the same params as the message."""


class IssueKind(enum.StrEnum):
    """A kind of row problem: code (the value), label, message templates and advice.

    Most kinds have one template (variant ""); a kind whose cause can be said more precisely
    (a national number with or without a likely region) has one per variant, chosen by the
    issue's ``variant`` param. ``advice`` is a longer what-to-do text for the page's check step.
    """

    label: str
    templates: Mapping[str, str]
    advice: str

    def __new__(cls, code: str, label: str, templates: str | Mapping[str, str], advice: str = "") -> Self:
        member = str.__new__(cls, code)
        member._value_ = code
        member.label = label
        member.templates = {"": templates} if isinstance(templates, str) else templates
        member.advice = advice
        return member

    SCIENTIFIC_NOTATION = (
        "scientific_notation",
        "DID in scientific notation (Excel lost digits)",
        '"{column}": "{value}" is in scientific notation, so Excel has lost digits: format the column '
        "as Text in Excel, type the numbers again and export again",
        "Some DIDs are in scientific notation (like 9.18E+11): Excel showed them that way and kept only "
        "the first digits, so the rest cannot be read from this file. Correct them, or in Excel format "
        "the DID column as Text, paste the numbers again, save and read the new file.",
    )
    DECIMAL_NUMBER = (
        "decimal_number",
        "a number saved as a decimal",
        '"{column}": "{value}" is not a whole number (a number saved as a decimal, with a fraction): '
        "{expected}",
    )
    NO_COUNTRY_CODE = (
        "no_country_code",
        "DID without a country code",
        {
            "national": '"{column}": "{value}" is a national number (no country code): if it is '
            "{article} {region} number add the country code: {suggested}{more}, or {set_region}",
            "national_unknown": '"{column}": "{value}" is not an international number: add the country '
            "code (e.g. +91 80 1234 5678), or {set_any_region}",
            "anywhere": '"{column}": "{value}" is not a valid number of any country; if it is {article} '
            "{region} number add the country code: {suggested}{more}, or {set_region}",
        },
        "Some DIDs have no country code (080 1234 5678 instead of +91 80 1234 5678): spreadsheets often "
        "drop a leading + or 00. Add the country code in the cells, or {set_any_region}.",
    )
    BAD_NUMBER = (
        "bad_number",
        "not a valid phone number",
        {
            "": '"{column}": "{value}" is not a phone number',
            "letters": '"{column}": "{value}" contains letters; write the number with digits only',
            "region": '"{column}": "{value}" is not a valid number of region {region} (nor with a '
            "country code)",
            "unparsable": '"{column}": "{value}" is not a valid phone number',
            "country": '"{column}": "{value}" is not a valid number of {country}',
            "anywhere": '"{column}": "{value}" is not a valid number of any country: check the digits '
            "and write it with its country code (e.g. +91 80 1234 5678)",
        },
    )
    EXTENSION = (
        "extension",
        "DID with an extension",
        '"{column}": "{value}" has an extension, but DIDs have no extension: remove {written}',
    )
    MISSING_DID = (
        "missing_did",
        "no DID on the row",
        {
            "": 'no DID: fill in "{number_column}" or "{id_column}"{note}',
            # A formula never calculated is not a missing DID: the reader's note says what the cell holds.
            "formula": "{formula}",
        },
    )
    MISSING_MODE = (
        "missing_mode",
        "mode missing",
        '"{column}" is empty: give the {direction} mode ({modes}){note}',
    )
    BAD_MODE = (
        "bad_mode",
        "unknown mode",
        '"{column}": "{value}" is not an {direction} mode; use one of {modes}',
    )
    MISSING_MODE_ID = (
        "missing_mode_id",
        "bot or trunk id missing for the mode",
        {
            "": '"{mode_column}" is "{mode}" ({mode_label}), which needs {field}, but "{column}" is '
            "empty{note}",
            "absent": '"{mode_column}" is "{mode}" ({mode_label}), which needs {field}, but the file has '
            "no {field} column",
        },
    )
    ID_FOR_UNUSED_MODE = (
        "id_for_unused_mode",
        "id filled in for a mode that does not use it",
        '"{column}" is "{value}" but "{mode_column}" is "{mode}" ({mode_label}), which does not use '
        "{field}: clear it or change the mode",
    )
    BAD_ID = (
        "bad_id",
        "id is not a positive whole number",
        '"{column}": "{value}" {problem}; ids are positive whole numbers',
    )
    BAD_STATUS = (
        "bad_status",
        "unknown status",
        '"{column}": "{value}" is not a status; use active/inactive, 1/0, yes/no, y/n or true/false',
    )
    BAD_UUID = ("bad_uuid", "connection id is not a UUID", '"{column}": "{value}" is not a connection UUID')
    DUPLICATE = ("duplicate", "duplicate DID", '"{column}": "{value}" is a duplicate of {first}')
    EXCEL_ERROR = (
        "excel_error",
        "Excel error in a cell (#N/A, #REF!, ...)",
        '"{column}": the cell holds the Excel error {error} ({meaning}); fix it in the sheet',
    )
    RAGGED_ROW = ("ragged_row", "row has the wrong number of fields", "{problem}")
    WRONG_COLUMN = (
        "wrong_column",
        "column does not look like the field its header matched",
        'column "{column}" does not look like {field} (values {values}; {accepted}): {ignore_column}, '
        "or if it is {field} {confirm_map}",
    )


class NoteKind(enum.StrEnum):
    """A kind of file-level finding (a note in the summary): code, label and template."""

    label: str
    template: str

    def __new__(cls, code: str, label: str, template: str) -> Self:
        member = str.__new__(cls, code)
        member._value_ = code
        member.label = label
        member.template = template
        return member

    WRONG_MATCH = (
        "wrong_match",
        "a column looks wrongly matched",
        'column "{column}" was matched to {field} by its header, but its values ({values}) do not look '
        "like {field}: its rows failed; {ignore_column} or {map_right}",
    )


@dataclass(frozen=True, slots=True)
class Note:
    """A file-level finding, as data: its kind and the params its words are rendered from."""

    kind: NoteKind
    params: Mapping[str, str] = field(default_factory=dict, hash=False)


def template_fields(template: str) -> set[str]:
    """The placeholder names of a template (controls included)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def render_template(template: str, params: Mapping[str, str], surface: Surface) -> str:
    """A template filled with ``params`` and the controls it names, in the words of ``surface``."""
    values = dict(params)
    if surface is Surface.WEB:
        # The page's lists call fields by their titles ("Inbound Bot ID", not inbound_websocket_bot_id).
        field = values.get("field")
        if field in FIELD_BY_NAME:
            values["field"] = FIELD_BY_NAME[field].title
    for name in template_fields(template) & CONTROLS.keys():
        values[name] = CONTROLS[name][surface].format_map(values)
    return template.format_map(values)


def render(issue: RowIssue, surface: Surface = Surface.CLI) -> str:
    """The message of a row problem in the words of ``surface``.

    Raises:
        KeyError: the issue lacks a param its kind's template needs (a bug where it is raised).
    """
    kind = issue.kind
    return render_template(kind.templates[issue.params.get("variant", "")], issue.params, surface)


def render_advice(kind: IssueKind, surface: Surface) -> str:
    """A kind's what-to-do text ("" when it has none) in the words of ``surface``."""
    return render_template(kind.advice, {}, surface) if kind.advice else ""


def render_reason(kind: ReasonKind, surface: Surface, params: Mapping[str, str] | None = None) -> str:
    """A reason kind's words on ``surface``: its template with its controls filled in."""
    return render_template(kind.template, params or {}, surface)


class WordedInputError(InputError):
    """An unusable option or table whose advice names a control: its words on every surface.

    ``str()`` is the CLI's words (as for any ``InputError``); ``error_words`` gives a surface's.
    """

    def __init__(self, texts: Mapping[Surface, str]) -> None:
        super().__init__(texts[Surface.CLI])
        self.texts = {surface: shown(text) for surface, text in texts.items()}


def worded(template: str, **params: str) -> WordedInputError:
    """An ``InputError`` rendered from a template for every surface (raise it)."""
    return WordedInputError({surface: render_template(template, params, surface) for surface in Surface})


def error_words(exc: BaseException, surface: Surface) -> str:
    """A run-level error in the words of ``surface`` (an error with no surface words: its text)."""
    return exc.texts[surface] if isinstance(exc, WordedInputError) else str(exc)


def render_note(note: Note, surface: Surface = Surface.CLI) -> str:
    """A file-level finding in the words of ``surface``."""
    return render_template(note.kind.template, note.params, surface)


def issue_label(kind: str) -> str:
    """The label of an issue kind held as text (a code no kind has reads as itself, spaced)."""
    member = IssueKind._value2member_map_.get(kind)
    return member.label if isinstance(member, IssueKind) else kind.replace("_", " ")
