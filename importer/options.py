"""Every option object a job takes, in one place: built once, by the CLI from its flags (and by
the web from its settings and the job's choices), then passed to the job functions unchanged.

- :class:`InputOptions`: how to read and check the input table (``read`` and ``validate``).
- :class:`SendOptions`: how a job sends (pace, parallelism, patience, journal, error rate).
- :class:`ConnectOptions`: where and as whom (the key, base URL, connection), plus a job's hooks
  (dry run, confirm, on_plan, on_read); :meth:`ConnectOptions.from_env` reads the environment.
- One config per job: :class:`ValidateConfig`, :class:`ImportConfig`, :class:`RollbackConfig`,
  :class:`ExportConfig`.

A frozen config takes a ``str`` where it wants a ``Path`` (library callers pass either).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from importer.account.inventory import ReadCallback
from importer.account.preflight import DEFAULT_BASE_URL
from importer.engine.plan import Plan
from importer.errors import InputError
from importer.model import RunFacts
from importer.vocab import OnExisting
from importer.words import Surface

__all__ = [
    "DEFAULT_BASE_URL",
    "ConnectOptions",
    "ExportConfig",
    "ImportConfig",
    "InputOptions",
    "RollbackConfig",
    "SendOptions",
    "ValidateConfig",
    "as_path",
    "human_duration",
]


def as_path(config: object, name: str) -> None:
    """Let a frozen config take a ``str`` where it wants a ``Path``."""
    value = getattr(config, name)
    if isinstance(value, str):
        object.__setattr__(config, name, Path(value))


def human_duration(seconds: float) -> str:
    """A duration as people say it: '10 s', '4 min 10 s', '2 h 42 min'."""
    total = max(0, math.ceil(seconds))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


# -- reading ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputOptions:
    """How to read and validate the input file."""

    path: Path
    sheets: tuple[str, ...] = ()
    """--sheet: the workbook sheets to read; () reads the one sheet that names the fields."""
    all_sheets: bool = False
    """--all-sheets: read every sheet that names the fields, as one table."""
    column_map: Mapping[str, str] = field(default_factory=dict)
    """--map: header text or column letter -> field; wins over header matching."""
    default_region: str | None = None
    encoding: str | None = None
    """The text encoding of a CSV (``--encoding``); None detects it."""
    skip_hidden_rows: bool = False
    """Skip the rows hidden in Excel (``--skip-hidden-rows``) instead of importing them."""
    ignore_columns: tuple[str, ...] = ()
    """--ignore-column: header texts or column letters left out of matching."""
    header_row: int | None = None
    """The Excel row of the header when the user chose it (the reader took a title row); None:
    the reader's choice. It can only move down from the reader's (``jobs.validate.move_header``)."""

    def __post_init__(self) -> None:
        as_path(self, "path")
        object.__setattr__(self, "ignore_columns", tuple(self.ignore_columns))
        # One name given where a tuple of names is wanted is one sheet, not its letters.
        object.__setattr__(
            self, "sheets", (self.sheets,) if isinstance(self.sheets, str) else tuple(self.sheets)
        )
        if self.sheets and self.all_sheets:
            raise InputError("give --sheet NAME or --all-sheets, not both")

    def describe(self) -> dict[str, str]:
        """The options as text for the Summary sheet."""
        sheet = "; ".join(self.sheets) or ("(all that match)" if self.all_sheets else "(auto)")
        out = {"sheet": sheet, "default_region": self.default_region or "(none)"}
        if self.column_map:
            out["map"] = "; ".join(f"{h}={f}" for h, f in self.column_map.items())
        if self.encoding:
            out["encoding"] = self.encoding
        if self.skip_hidden_rows:
            out["skip_hidden_rows"] = "yes"
        if self.ignore_columns:
            out["ignore_column"] = "; ".join(self.ignore_columns)
        if self.header_row is not None:
            out["header_row"] = str(self.header_row)
        return out


@dataclass(frozen=True, slots=True)
class ValidateConfig:
    """Options of the ``validate`` command."""

    input: InputOptions
    output: Path | None = None
    failed_out: Path | None = None
    overwrite: bool = False
    """Overwrite the default output files of an earlier run instead of writing timestamped ones."""
    own_process: bool = False
    """The job has its process to itself (the CLI): the failed-rows file is written in a forked
    process while this one writes the results workbook. Never for a server's jobs: a fork could
    catch another thread holding a lock."""

    def __post_init__(self) -> None:
        for name in ("output", "failed_out"):
            as_path(self, name)


# -- sending ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SendOptions:
    """How a job sends: pace, parallelism, patience, journal, when to give up.

    One definition for ``ImportConfig``, ``RollbackConfig`` (both extend it) and the CLI's
    options, which take their defaults from here.
    """

    requests_per_minute: int = 60
    """Requests per ``rate_window`` for the API key (the API allows 60 a minute)."""
    concurrency: int = 4
    """Writes in flight at most."""
    timeout: float = 30.0
    """Seconds to wait for an answer before the outcome counts as unknown."""
    journal: Path | None = None
    """The journal; None: the job's default place (beside the results, or the run's journal)."""
    max_error_rate: float | None = None
    """Stop when more than this share of writes failed (judged from the 20th write on)."""
    retry_backoff: float = 1.0
    """Base delay in seconds between tries (``retry.backoff_delay``); 0 turns waits off (tests)."""
    rate_window: float = 60.0
    """The rate limit's window in seconds (the API's is a minute; tests may shrink it)."""

    def __post_init__(self) -> None:
        as_path(self, "journal")

    def check(self) -> None:
        """Refuse options no job can use.

        Raises:
            InputError: a non-positive rate, concurrency or timeout, or an error rate outside [0, 1].
        """
        if self.requests_per_minute < 1 or self.concurrency < 1 or self.timeout <= 0:
            raise InputError("--requests-per-minute, --concurrency and --timeout must be positive")
        if self.max_error_rate is not None and not 0 <= self.max_error_rate <= 1:
            raise InputError("--max-error-rate must be between 0 and 1")

    def estimate(self, writes: int) -> str:
        """How long ``writes`` writes take at this rate: "9,690 writes, about 2 h 42 min at 60/min"."""
        if not writes:
            return "no writes"
        per_minute = self.requests_per_minute * 60 / self.rate_window
        took = human_duration(writes * 60 / per_minute)
        return f"{writes:,} write{'' if writes == 1 else 's'}, about {took} at {per_minute:g}/min"

    def cost(self, reads_done: int, writes: int) -> str:
        """The plan's cost line: "3 reads done; 10 writes, about 10 s at 60/min".

        Args:
            reads_done: Requests already sent (the pre-flight and the reads of the live state).
            writes: Writes the plan would send.
        """
        return f"{reads_done:,} read{'' if reads_done == 1 else 's'} done; {self.estimate(writes)}"

    def describe(self) -> dict[str, str]:
        """The options as text for the Summary sheet and the journal."""
        return {
            "requests_per_minute": str(self.requests_per_minute),
            "concurrency": str(self.concurrency),
            "timeout": f"{self.timeout:g}s",
            "max_error_rate": "off" if self.max_error_rate is None else f"{self.max_error_rate:g}",
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectOptions(SendOptions):
    """Where and as whom a job sends, on top of how; and the hooks every sending job takes."""

    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    connection_id: str | None = None
    """The VoiceLink connection; None: the only active one (a rollback: the run's)."""
    dry_run: bool = False
    """Plan only: read the live state (and the journal, read-only), send nothing, journal nothing."""
    confirm: Callable[[Plan], bool] | None = None
    """Asked with the plan before any write (not for a dry run); False sends nothing."""
    on_plan: Callable[[Plan], None] | None = None
    """Shown the plan once it is made (dry runs too)."""
    on_read: ReadCallback | None = None
    """Told what is being read before the plan ("reading DIDs: page 3 of 50"), for a progress line."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Self:
        """Options with the key, base URL and connection from ``VOCOBASE_API_KEY``,
        ``VOCOBASE_BASE_URL`` and ``VOCOBASE_CONNECTION_ID`` (``options`` win over them).

        Raises:
            InputError: the options cannot be used (no key, a base URL that is not http(s)).
        """
        env = os.environ if environ is None else environ
        found: dict[str, Any] = {
            "api_key": env.get("VOCOBASE_API_KEY", ""),
            "base_url": env.get("VOCOBASE_BASE_URL") or DEFAULT_BASE_URL,
            "connection_id": env.get("VOCOBASE_CONNECTION_ID") or None,
        }
        made = cls(**{**found, **options})
        made.check()
        return made

    @classmethod
    def using(cls, connect: ConnectOptions, **job: Any) -> Self:
        """A job's config on ``connect``'s key, base URL and pacing, with the job's own options
        (``ImportConfig.using(server_options, input=..., dry_run=True)``)."""
        own = {f.name: getattr(connect, f.name) for f in dataclasses.fields(ConnectOptions)}
        return cls(**{**own, **job})

    def check(self) -> None:
        """Refuse options no job can use (InputError), the key and base URL included."""
        SendOptions.check(self)
        if not self.api_key:
            raise InputError("no API key: set VOCOBASE_API_KEY or pass --api-key")
        if not self.base_url.startswith(("http://", "https://")):
            raise InputError(f"--base-url must start with http:// or https://, not {self.base_url!r}")

    def describe(self) -> dict[str, str]:
        """The options as text for the Summary sheet and the journal (never the key)."""
        out = {
            "base_url": self.base_url,
            **SendOptions.describe(self),
            "dry_run": "yes" if self.dry_run else "no",
        }
        if self.connection_id:
            out["connection_id"] = self.connection_id
        return out


# -- one config per job ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportConfig(ConnectOptions):
    """Everything a run needs; the CLI builds it from flags and the environment."""

    input: InputOptions
    output: Path | None = None
    failed_out: Path | None = None
    overwrite: bool = False
    """Overwrite the default output files of an earlier run instead of writing timestamped ones."""
    on_existing: OnExisting = OnExisting.UPDATE
    command: str = "run"
    audit_extra: Mapping[str, str] = field(default_factory=dict)
    """More lines for the Summary sheet's audit (a web service: who uploaded it, from where)."""
    surface: Surface = Surface.CLI
    """Whose words the results workbook speaks: the CLI's flags or the page's controls."""
    facts: RunFacts = field(default_factory=RunFacts)
    """Where the job runs, for the Summary sheet: the machine (the CLI), or a service's own facts."""
    own_process: bool = False
    """The job has its process to itself (the CLI): the failed-rows file is written in a forked
    process while this one writes the results workbook, and the large data that lives to the end
    (the account's state, the rows, the plan) is taken out of the cycle collector's walks once
    built (``gc.freeze``). Never for a server's jobs: a fork could catch another thread holding a
    lock, and a long-lived process must keep collecting."""

    def __post_init__(self) -> None:
        ConnectOptions.__post_init__(self)
        for name in ("output", "failed_out"):
            as_path(self, name)
        if self.on_existing not in OnExisting._value2member_map_:
            raise InputError(f"--on-existing must be one of {', '.join(OnExisting)}")
        object.__setattr__(self, "on_existing", OnExisting(self.on_existing))

    def describe(self) -> dict[str, str]:
        """The options as text for the Summary sheet and the journal (never the key)."""
        return {
            **self.input.describe(),
            **ConnectOptions.describe(self),
            "on_existing": self.on_existing.value,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RollbackConfig(ConnectOptions):
    """Everything a rollback needs; the CLI builds it from flags and the environment.

    ``journal`` (from ``SendOptions``), when given, is the journal to use instead of the one
    ``source`` points to.
    """

    source: Path
    """A results workbook of a run, or the journal itself."""
    run_ids: Sequence[int] = ()
    """The runs to roll back, and only those. Empty: every run of the input ``source`` names
    (its results workbook's, else the journal's latest import) that changed something."""
    run_id: int | None = None
    """One run to roll back: the same as ``run_ids=(run_id,)``."""
    output: Path | None = None
    force: bool = False
    """Overwrite rows someone changed since the run instead of skipping them."""
    audit_extra: Mapping[str, str] = field(default_factory=dict)
    """More lines for the Summary sheet's audit (a web service: who asked for it, planned, started)."""
    facts: RunFacts = field(default_factory=RunFacts)
    """Where the rollback runs, for the Summary sheet (as ``ImportConfig.facts``)."""

    def __post_init__(self) -> None:
        ConnectOptions.__post_init__(self)
        for name in ("source", "output"):
            as_path(self, name)
        asked = {*self.run_ids, *(() if self.run_id is None else (self.run_id,))}
        object.__setattr__(self, "run_ids", tuple(sorted(int(i) for i in asked)))

    def describe(self) -> dict[str, str]:
        """The options as text for the Summary sheet and the journal (never the key)."""
        out = {**ConnectOptions.describe(self), "force": "yes" if self.force else "no"}
        if self.run_ids:
            out["run_ids"] = ", ".join(map(str, self.run_ids))
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportConfig(ConnectOptions):
    """Options of ``voicelink-import export``: the connection's, the output's.

    ``dry_run`` reads and counts and writes no file; ``on_read`` is told what is being read.
    Nothing is sent, so the sending options other than the rate and the timeout do not apply.
    """

    output: Path | None = None
    """The workbook to write; default ``voicelink-routing-<UTC time>.xlsx`` in the current folder."""
    include_unrouted: bool = False

    def __post_init__(self) -> None:
        ConnectOptions.__post_init__(self)
        as_path(self, "output")
