"""The importer's vocabulary: every status, action, choice, decision, reason kind and exit code.

Each member carries its *code* (the ``str`` value: stored in the journal and the results
workbook, stable across versions) and its *label* (what people read in summaries and plans).
No internal code reaches a user: summaries print ``member.label``, or :func:`describe_kind`
for a reason kind held as text.

Why ``RowOutcome.reason_kind`` stays a ``str``: it is an open set. Validation's kinds belong
to ``validate.py`` (``bad_mode``, ``duplicate``, ...) and an API refusal carries the API's own
error code, which we cannot enumerate (:meth:`ReasonKind.api` builds ``api_<CODE>``). The
engine's own kinds are :class:`ReasonKind` members (a ``StrEnum``, so they are ``str`` too).
"""

from __future__ import annotations

import enum
from typing import Self

__all__ = ["Action", "Decision", "ExitCode", "OnExisting", "ReasonKind", "Status", "describe_kind"]


class Coded(enum.StrEnum):
    """A ``StrEnum`` whose members are declared ``NAME = "code", "label"`` (or ``..., "template"``).

    ``template`` is what a surface says for the member (``words.render_reason``): the label,
    unless the words name a control (``{force}``), which each surface names its own way.
    """

    label: str
    template: str

    def __new__(cls, code: str, label: str = "", template: str = "") -> Self:
        member = str.__new__(cls, code)
        member._value_ = code
        member.label = label or code.replace("_", " ")
        member.template = template or member.label
        return member


class Status(Coded):
    """The final status of an input row in the results workbook."""

    SUCCEEDED = "succeeded", "succeeded"
    UNCHANGED = "unchanged", "unchanged"
    SKIPPED = "skipped", "skipped"
    FAILED = "failed", "failed"
    NOT_SENT = "not_sent", "not sent"


class Action(Coded):
    """What the plan decided for a row."""

    CREATE = "create", "create"
    UPDATE = "update", "update"
    UNCHANGED = "unchanged", "leave unchanged"
    SKIP = "skip", "skip"
    FAIL = "fail", "fail"
    NONE = "", "none"


class OnExisting(Coded):
    """What to do with a row whose DID already has a different routing."""

    UPDATE = "update", "update it"
    SKIP = "skip", "skip the row"
    FAIL = "fail", "fail the row"


class Decision(Coded):
    """What a rollback's plan decided for one change of the run."""

    SEND = "send", "send the undo"
    UNCHANGED = "unchanged", "already undone"
    SKIP = "skip", "skip"
    FAIL = "fail", "cannot undo"


class ReasonKind(Coded):
    """Why a row ended as it did: the engine's kinds (validation's: ``words.IssueKind``; the API's: text)."""

    CREATED = "created", "created"
    UPDATED = "updated", "updated"
    SETTLED = "settled", "applied, confirmed by re-reading"
    UNCHANGED = "unchanged", "already as requested"
    DONE_EARLIER = "done_earlier", "done in an earlier run"
    SETTLED_ON_RESUME = "settled_on_resume", "an interrupted run's write had been applied"
    EXISTS_SKIPPED = "exists_skipped", "routing exists and differs (skipped)"
    EXISTS_FAILED = "exists_failed", "routing exists and differs"
    UNSETTLED = "unsettled", "outcome unknown (may have been applied): running the same file again settles it"
    # Kept apart from UNSETTLED: re-reading proved these writes were not applied.
    NOT_APPLIED = "not_applied", "not applied: re-reading showed the write did not take"
    VANISHED = "vanished", "routing removed meanwhile"
    CHANGED_MEANWHILE = "changed_meanwhile", "routing changed meanwhile"
    DID_NOT_FOUND = "did_not_found", "DID not in this account"
    DID_MISMATCH = "did_mismatch", "DID ID and DID number name different DIDs"
    BOT_NOT_FOUND = "bot_not_found", "bot not in this account"
    BOT_INACTIVE = "bot_inactive", "bot inactive"
    OTHER_CONNECTION = "other_connection", "row names another connection"
    UNKNOWN_CONNECTION = "unknown_connection", "row names an unknown connection"
    DUPLICATE = "duplicate", "duplicate DID"
    AUTH_REJECTED = "auth_rejected", "the API rejected the key"
    STOPPED = "stopped", "not sent: the run stopped"
    NOT_CONFIRMED = "not_confirmed", "not sent: not confirmed"
    NOT_SENT = "not_sent", "not sent"
    VALIDATED_ONLY = "validated_only", "valid"
    # rollback
    RESTORE = "restore", "restored"
    DEACTIVATE = "deactivate", "deactivated (status 0)"
    FORCED = "forced", "overwritten (forced)", "overwritten ({force})"
    NEVER_APPLIED = "never_applied", "the run's write was never applied"
    ROLLED_BACK = "rolled_back", "rolled back already"
    CHANGED_SINCE = "changed_since", "changed since the run"
    UNKNOWN_DID = "unknown_did", "the journal does not name the DID"
    UNREADABLE_JOURNAL = "unreadable_journal", "the journal's record is incomplete"
    # dry runs: "dry_run_" + the kind the write would end with
    DRY_RUN_CREATE = "dry_run_create", "dry run: would create"
    DRY_RUN_UPDATE = "dry_run_update", "dry run: would update"
    DRY_RUN_RESTORE = "dry_run_restore", "dry run: would restore"
    DRY_RUN_DEACTIVATE = "dry_run_deactivate", "dry run: would deactivate"
    DRY_RUN_FORCED = (
        "dry_run_forced",
        "dry run: would overwrite (forced)",
        "dry run: would overwrite ({force})",
    )
    # rows left out of validation on purpose
    HIDDEN_ROW = "hidden_row", "hidden in Excel (skipped)", "hidden in Excel ({skip_hidden})"
    FOOTER_ROW = "footer_row", "not a data row (footer?)"
    EXCLUDED = "excluded", "excluded on the page"

    @staticmethod
    def api(code: str | int | None) -> str:
        """The kind of a write the API refused: ``api_<its error code or HTTP status>``."""
        return f"{API_PREFIX}{code}"


API_PREFIX = "api_"


def describe_kind(kind: str) -> str:
    """The label of a reason kind held as text: an engine kind's label, else the text itself.

    ``api_<CODE>`` reads "the API refused (CODE)"; validation's kinds are labelled by the caller.
    """
    member = ReasonKind._value2member_map_.get(kind)
    if isinstance(member, ReasonKind):
        return member.label
    if kind.startswith(API_PREFIX):
        return f"the API refused ({kind.removeprefix(API_PREFIX)})"
    return kind.replace("_", " ")


class ExitCode(enum.IntEnum):
    """The command's exit status; the library's summaries carry one."""

    label: str

    def __new__(cls, code: int, label: str = "") -> Self:
        member = int.__new__(cls, code)
        member._value_ = code
        member.label = label
        return member

    OK = 0, "every row done or valid"
    ROWS_FAILED = 1, "some rows failed"
    INPUT = 2, "unusable file or option"
    ABORTED = 3, "run aborted (key rejected, error rate)"
    INTERRUPTED = 130, "interrupted"
