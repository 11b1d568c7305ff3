"""The lock on the door: Host check, token or session cookie, Origin check, safe response headers.

In the order a request meets them:

1. ``Host`` must name the address the server is bound to (or ``localhost`` when that is a
   loopback address): a page on another site that re-points its own name at 127.0.0.1 (DNS
   rebinding) sends its own name as Host and is refused (403).
2. The token: ``Authorization: Bearer <token>``, or the session cookie (named with the port, so
   two servers on one host keep apart). Opening any page with ``?token=<token>`` sets the cookie
   (HttpOnly, SameSite=Strict) and redirects to the same page without the token, so it does not
   linger in the address bar or history. ``POST /logout`` clears it. Anything else is 401 with a
   one-word body; only ``/healthz`` is answered without the token.
3. A state-changing request (not GET/HEAD/OPTIONS) whose ``Origin`` is not this server, or that
   the browser marks ``Sec-Fetch-Site: cross-site``, is refused (403).
4. Who the caller is (``people``): the user whose token or session it is, or, from a trusted
   sign-on proxy's address only, the user its ``--user-header`` names; the role table then says
   whether that user may do what the request asks (403 with the reason otherwise), and every
   state-changing request is written to the audit records with its answer.
5. Every response carries a Content-Security-Policy without inline script, ``nosniff``, no
   framing, no referrer to other sites; all but the static files is ``Cache-Control: no-store``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, quote, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from importer.web.people import SOLE_ADMIN, Action, People, User, action_of, can, signed_in

__all__ = [
    "CSP",
    "MIN_TOKEN_LENGTH",
    "OPEN_PATHS",
    "Guard",
    "allowed_hosts",
    "check_token",
    "cookie_name",
    "is_loopback",
    "session_value",
    "trusted_networks",
    "user_of",
]

MIN_TOKEN_LENGTH = 32
OPEN_PATHS = frozenset({"/healthz"})
"""Answered without the token (still behind the Host check): they tell nothing about the jobs."""
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_WITH_PORT = re.compile(r"(?:\[[^\]]*\]|[^:\[\]]+):\d+")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # same-origin, not no-referrer: with no-referrer a browser's own form posts carry
    # "Origin: null", which the Origin check must refuse; other sites still get no referrer.
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def session_value(token: str) -> str:
    """The cookie's value: derived from the token, so the token itself is never stored in a browser."""
    return hmac.new(token.encode(), b"voicelink-web-session", hashlib.sha256).hexdigest()


def user_session(secret: str, user: User) -> str:
    """A user's cookie value: their name, signed with the server's secret (never their token)."""
    mac = hmac.new(secret.encode(), f"{user.name}\n{user.token_sha256}".encode(), hashlib.sha256)
    return f"{user.name}.{mac.hexdigest()}"


def user_of(scope: Scope) -> User:
    """The signed-in user of a request (set by the Guard); the sole admin when no users are configured."""
    user = scope.get("state", {}).get("user")
    return user if isinstance(user, User) else SOLE_ADMIN


def trusted_networks(addresses: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The ``--trusted-proxy`` addresses (or networks, ``10.0.0.0/24``).

    Raises:
        ValueError: one is not an address or network.
    """
    return tuple(ipaddress.ip_network(a.strip(), strict=False) for a in addresses)


def cookie_name(port: int) -> str:
    """The session cookie's name: with the port, so two servers on one host keep their own sessions."""
    return f"voicelink_session_{port}"


def check_token(token: str) -> str | None:
    """Why a chosen token is refused (too short to resist guessing), or None when it will do."""
    if len(token) >= MIN_TOKEN_LENGTH:
        return None
    return (
        f"the access token must be at least {MIN_TOKEN_LENGTH} characters (this one has {len(token)}); "
        'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def allowed_hosts(host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host header values that name this server.

    ``extra``: the names given with ``--allowed-host``; one without a port is taken bare too, as
    a TLS-terminating proxy in front passes it (port 443 is left out of Host).
    """
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    names = {shown}
    if is_loopback(host):
        names |= {"localhost", "127.0.0.1", "[::1]"}
    out = {f"{name}:{port}" for name in names}
    if port == 80:
        out |= names
    for name in (n.strip() for n in extra):
        if _WITH_PORT.fullmatch(name):
            out.add(name)
        elif name:
            out |= {name, f"{name}:{port}"}
    return frozenset(n.lower() for n in out)


class Guard:
    """ASGI middleware: Host, token, Origin, and the security headers on every response."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str,
        hosts: Iterable[str],
        cookie: str,
        static_prefix: str = "/static/",
        people: People | None = None,
        user_header: str = "",
        trusted_proxies: Iterable[str] = (),
        owner: Callable[[str], str | None] = lambda job_id: None,
        on_action: Callable[[dict[str, object]], None] | None = None,
    ):
        """Args beyond the lock itself:

        people: The users file's users (None: the single ``token`` stands for one admin).
        user_header: The header a sign-on proxy names the user in, believed only from ``trusted_proxies``.
        owner: Who uploaded a job (for "only your own job" rules).
        on_action: Called with each state-changing request's record (the audit).
        """
        self.app = app
        self.token = token
        self.cookie = cookie
        self.session = session_value(token)
        self.people = people
        self.user_header = user_header.lower()
        self.proxies = trusted_networks(trusted_proxies)
        self.owner = owner
        self.on_action = on_action
        self.hosts = frozenset(hosts)
        # https too: behind a TLS-terminating proxy the browser's Origin is https://<allowed host>.
        self.origins = frozenset(f"{scheme}://{h}" for h in self.hosts for scheme in ("http", "https"))
        self.static_prefix = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets here: refuse rather than pass unchecked
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = _headers(scope)
        if headers.get("host", "").lower() not in self.hosts:
            await _plain(send, 403, "forbidden host")
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        given = query.get("token")
        if given is not None and scope["method"] == "GET":
            session = self._session_for_token(given)
            if session is None:
                await _plain(send, 401, "unauthorized")
                return
            rest = urlencode([(k, v) for k, v in query.items() if k != "token"])
            # Quoted and with one leading slash: no header injection, no redirect off this site.
            path = "/" + quote(scope["path"]).lstrip("/")
            await _redirect(send, path + (f"?{rest}" if rest else ""), f"{self.cookie}={session}")
            return
        open_path = scope["path"] in OPEN_PATHS and scope["method"] in SAFE_METHODS
        client = scope.get("client")
        address = str(client[0]) if client else ""
        user = None if open_path else self._user(headers, address)
        if isinstance(user, str):  # a proxy named someone the users file does not know
            await _plain(send, 403, user)
            return
        if not open_path and user is None:
            await _plain(send, 401, "unauthorized")
            return
        if scope["method"] not in SAFE_METHODS and not self._same_origin(headers):
            await _plain(send, 403, "cross-origin request refused")
            return
        record: dict[str, object] | None = None
        if user is not None and not scope["path"].startswith(self.static_prefix):
            scope.setdefault("state", {})["user"] = user
            signed_in.set(user)  # this request's own context: the page's templates read it
            action, job_id = action_of(scope["method"], scope["path"])
            if action is not None and action not in (Action.VIEW, Action.AUDIT):
                record = {
                    "action": action.name.lower(),
                    "job": job_id or "",
                    "user": user.name,
                    "role": user.role.value,
                    "client": address,
                    "path": scope["path"],
                }
            why = None if action is None else can(user, action, self.owner(job_id) if job_id else None)
            if why is not None:
                if record is not None and self.on_action is not None:
                    self.on_action({**record, "answer": 403, "reason": why})
                await _json(send, 403, {"error": why})
                return
        no_store = not scope["path"].startswith(self.static_prefix)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                if record is not None and self.on_action is not None:
                    # Written before the answer leaves, so the work it started sees who asked.
                    self.on_action({**record, "answer": int(message["status"])})
                extra = list(_HEADERS)
                if no_store:
                    extra.append((b"cache-control", b"no-store"))
                names = {name for name, _ in extra}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _by_token(self, token: str) -> User | None:
        if self.people is None:
            return SOLE_ADMIN if hmac.compare_digest(token.encode(), self.token.encode()) else None
        return self.people.by_token(token)

    def _session_for_token(self, token: str) -> str | None:
        user = self._by_token(token)
        if user is None:
            return None
        return self.session if self.people is None else user_session(self.token, user)

    def _user(self, headers: dict[str, str], address: str) -> User | str | None:
        """The caller: a user, None (not signed in), or why a proxy's named user is refused."""
        if self.people is not None and self.user_header and self._from_proxy(address):
            named = headers.get(self.user_header, "").strip()
            if named:
                found = self.people.by_name.get(named)
                return found or f"the sign-on proxy names {named!r}, who is not in the users file"
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return self._by_token(value.strip())
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is just no session
            return None
        morsel = cookie.get(self.cookie)
        if morsel is None:
            return None
        if self.people is None:
            return SOLE_ADMIN if hmac.compare_digest(morsel.value.encode(), self.session.encode()) else None
        found = self.people.by_name.get(morsel.value.rpartition(".")[0])
        if found is not None and hmac.compare_digest(
            morsel.value.encode(), user_session(self.token, found).encode()
        ):
            return found
        return None

    def _from_proxy(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.proxies)

    def _same_origin(self, headers: dict[str, str]) -> bool:
        if headers.get("sec-fetch-site", "") == "cross-site":
            return False
        origin = headers.get("origin")
        return origin is None or origin.lower() in self.origins


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in scope["headers"]:
        out.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
    return out


async def _plain(send: Send, status: int, text: str) -> None:
    await _answer(send, status, b"text/plain; charset=utf-8", text.encode())


async def _json(send: Send, status: int, data: object) -> None:
    await _answer(send, status, b"application/json", json.dumps(data).encode())


async def _answer(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    """Send a whole answer of the Guard's own, never cached, with the security headers."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, location: str, cookie_value: str) -> None:
    cookie = f"{cookie_value}; HttpOnly; SameSite=Strict; Path=/"
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode("latin-1", "replace")),
                (b"set-cookie", cookie.encode()),
                (b"content-length", b"0"),
                (b"cache-control", b"no-store"),
                *_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})
