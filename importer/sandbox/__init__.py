"""Emulate the documented Vocobase VoiceLink API v2 on loopback, with deterministic fault injection.

The sandbox is the fake every apply-path test talks to, the engine of ``voicelink-import sandbox``
and the target of ``voicelink-import demo``. Its modules, in import order (each imports only the
ones before it):

- ``rules``: which routing bodies the API accepts and its error answers (derived from ``importer.fields``);
- ``state``: the options (``SandboxConfig``), the inventory and the in-memory account;
- ``faults``: the deterministic fault decisions;
- ``app``: the Starlette app, the request pipeline and the endpoint handlers (``Sandbox``);
- ``server``: uvicorn on loopback, in a thread (``running_sandbox``) or until a signal (``serve``).
"""

from __future__ import annotations

from importer.sandbox.app import Sandbox, SandboxConnectionDropped, create_sandbox
from importer.sandbox.rules import check_routing
from importer.sandbox.server import running_sandbox, serve
from importer.sandbox.state import SANDBOX_API_KEY, SandboxConfig, load_inventory

__all__ = [
    "SANDBOX_API_KEY",
    "Sandbox",
    "SandboxConfig",
    "SandboxConnectionDropped",
    "check_routing",
    "create_sandbox",
    "load_inventory",
    "running_sandbox",
    "serve",
]
