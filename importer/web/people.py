"""People and roles: who may do what with which job. The one place the role table lives.

``serve --users FILE`` reads a TOML file written by ``voicelink-import users add``::

    [users.alice]
    role = "operator"
    token_sha256 = "9f86d0..."

A token is 32 random bytes (``secrets.token_urlsafe(32)``, 256 bits), printed once and stored
only as its SHA-256. A slow, salted hash (scrypt, pbkdf2) defends guessable passwords against a
stolen file; a 256-bit random token cannot be guessed whatever the hash, so a fast hash loses
nothing and lets each request find its user by one lookup instead of trying every user's salt.

Without ``--users`` the server's single token stands for one admin (:data:`SOLE_ADMIN`).
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from importer.errors import InputError

__all__ = [
    "SOLE_ADMIN",
    "Action",
    "People",
    "Role",
    "User",
    "add_user",
    "can",
    "hash_token",
    "load_users",
    "may",
    "named_user",
    "refusal",
    "remove_user",
    "signed_in",
]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class Role(enum.StrEnum):
    """What a person may do; each role may do everything the ones before it may."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)


class Action(enum.StrEnum):
    """Everything a request can ask of the service, as the role table knows it."""

    VIEW = "see jobs and download"
    UPLOAD = "upload a file"
    FIX = "change a job's options or rows"
    PLAN = "plan a job"
    START = "start a job"
    CANCEL = "cancel a job"
    APPROVE = "approve a plan"
    UNDO = "undo an import"
    AUDIT = "read the audit records"


@dataclass(frozen=True, slots=True)
class Rule:
    """The least role an action needs, and whether below admin it is only for one's own job."""

    role: Role
    own_only: bool = False


RULES: Mapping[Action, Rule] = {
    Action.VIEW: Rule(Role.VIEWER),
    Action.UPLOAD: Rule(Role.OPERATOR),
    Action.FIX: Rule(Role.OPERATOR),
    Action.PLAN: Rule(Role.OPERATOR),
    Action.START: Rule(Role.OPERATOR, own_only=True),
    Action.CANCEL: Rule(Role.OPERATOR, own_only=True),
    Action.APPROVE: Rule(Role.APPROVER),
    Action.UNDO: Rule(Role.OPERATOR),  # a new job, like an upload: its own start is its maker's
    Action.AUDIT: Rule(Role.APPROVER),
}
"""The role table: the one answer to "who may do this"."""


@dataclass(frozen=True, slots=True)
class User:
    """A person known to the server (never their token: only its hash)."""

    name: str
    role: Role
    token_sha256: str = ""


SOLE_ADMIN = User("admin", Role.ADMIN)
"""Who the single server token stands for when no users file is given."""


def can(user: User, action: Action, owner: str | None = None) -> str | None:
    """Why ``user`` may not do ``action`` (to the job uploaded by ``owner``), or None when they may.

    Args:
        user: Who asks.
        action: What they ask.
        owner: The uploader of the job the action is on (None: no job, or not known).

    Returns:
        The reason in words for a 403 answer, or None.
    """
    rule = RULES[action]
    if user.role.rank < rule.role.rank:
        return (
            f"your role {user.role.value} cannot {action.value}; "
            f"ask someone with the {rule.role.value} role or above"
        )
    if rule.own_only and user.role is not Role.ADMIN and owner is not None and owner != user.name:
        return f"this job was uploaded by {owner or '(not given)'}; only they or an admin can {action.value}"
    return None


signed_in: ContextVar[User] = ContextVar("signed_in", default=SOLE_ADMIN)
"""Who the request being answered is from (set by the Guard), for the page's templates."""


def refusal(action: str, owner: str | None = None) -> str:
    """Why the signed-in user may not do ``action`` (an ``Action`` name); "" when they may."""
    return can(signed_in.get(), Action[action], owner) or ""


def may(action: str, owner: str | None = None) -> bool:
    """Whether the signed-in user may do ``action`` (templates hide what they may not)."""
    return not refusal(action, owner)


def named_user() -> User | None:
    """The signed-in user when the server has a users file (None: the single token's admin)."""
    user = signed_in.get()
    return None if user is SOLE_ADMIN else user


def hash_token(token: str) -> str:
    """The stored form of a token (see the module docstring for why SHA-256 suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class People:
    """The users of a server, found by name or by their token's hash."""

    by_name: Mapping[str, User]
    by_hash: Mapping[str, User]

    def by_token(self, token: str) -> User | None:
        return self.by_hash.get(hash_token(token)) if token else None


def _read(path: Path) -> dict[str, dict[str, object]]:
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the users file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"the users file {path} is not valid TOML: {exc}") from None
    users = data.get("users", {})
    if not isinstance(users, dict) or not all(isinstance(v, dict) for v in users.values()):
        raise InputError(f"the users file {path} must hold [users.NAME] tables")
    return users


def load_users(path: Path) -> People:
    """Read a users file.

    Raises:
        InputError: the file is missing, unreadable, or names a bad role, name or hash.
    """
    if not path.is_file():
        raise InputError(
            f"no users file at {path}: make one with: voicelink-import users add NAME --role ROLE"
        )
    by_name: dict[str, User] = {}
    for name, entry in _read(path).items():
        role, digest = entry.get("role"), entry.get("token_sha256")
        if not NAME.fullmatch(name):
            raise InputError(f"the users file {path}: {name!r} is not a usable user name")
        if role not in set(Role):
            choices = ", ".join(r.value for r in Role)
            raise InputError(f"the users file {path}: user {name} has role {role!r}; use one of {choices}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise InputError(f"the users file {path}: user {name} has no token_sha256 (64 hex digits)")
        by_name[name] = User(name, Role(str(role)), digest)
    if not by_name:
        raise InputError(f"the users file {path} names nobody: add one with voicelink-import users add")
    return People(by_name, {u.token_sha256: u for u in by_name.values()})


def _write(path: Path, users: Mapping[str, dict[str, object]]) -> None:
    lines = ["# voicelink-import users: tokens are kept only as their SHA-256", ""]
    for name, entry in users.items():
        lines += [
            f"[users.{name}]",
            f'role = "{entry["role"]}"',
            f'token_sha256 = "{entry["token_sha256"]}"',
            "",
        ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)


def add_user(path: Path, name: str, role: Role) -> str:
    """Add (or give a new token to) ``name`` with ``role``; returns the new token, shown only once.

    Raises:
        InputError: a bad name, or the file cannot be read or written.
    """
    if not NAME.fullmatch(name):
        raise InputError(f"{name!r} is not a usable user name: letters, digits and . _ @ - (up to 64)")
    users = _read(path)
    token = secrets.token_urlsafe(32)
    users[name] = {"role": role.value, "token_sha256": hash_token(token)}
    try:
        _write(path, users)
    except OSError as exc:
        raise InputError(f"cannot write the users file {path}: {exc.strerror or exc}") from None
    return token


def remove_user(path: Path, name: str) -> None:
    """Remove ``name`` from the users file.

    Raises:
        InputError: no such user, or the file cannot be written.
    """
    users = _read(path)
    if name not in users:
        raise InputError(f"no user {name} in {path}")
    del users[name]
    try:
        _write(path, users)
    except OSError as exc:
        raise InputError(f"cannot write the users file {path}: {exc.strerror or exc}") from None


_JOB_PATH = re.compile(r"/(?:api/)?jobs/(?P<job>[^/]+)(?:/(?P<verb>[^/]+)(?:/[^/]*)?)?")
_VERBS: Mapping[str | None, Action] = {
    None: Action.FIX,  # PATCH /api/jobs/{id}: the options
    "columns": Action.FIX,
    "rows": Action.FIX,
    "plan": Action.PLAN,
    "start": Action.START,
    "send": Action.START,  # the page's Send button
    "cancel": Action.CANCEL,
    "approve": Action.APPROVE,
    "rollback": Action.UNDO,
}
UNLISTED = Action.START
"""A state-changing request this table does not know: held to the strictest operator rule
(own job only, below admin) rather than let through."""


def action_of(method: str, path: str) -> tuple[Action | None, str | None]:
    """The action a request asks for, and the job it is on (None: not about one job).

    ``None`` as the action: a request anyone signed in may make (signing out).
    """
    if method in ("GET", "HEAD", "OPTIONS"):
        return (Action.AUDIT if path == "/api/audit" else Action.VIEW), None
    if path == "/logout":
        return None, None
    if path in ("/api/jobs", "/upload"):
        return Action.UPLOAD, None
    if path in ("/api/exports", "/exports"):  # "Download current routing" only reads: a view
        return Action.VIEW, None
    match = _JOB_PATH.fullmatch(path)
    if match is None:
        return UNLISTED, None
    return _VERBS.get(match["verb"], UNLISTED), match["job"]
