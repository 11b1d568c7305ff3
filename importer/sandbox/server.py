"""Serve a sandbox over loopback TCP with uvicorn: in a background thread (tests) or until a signal.

``serve`` is what ``voicelink-import sandbox`` runs: it listens (127.0.0.1 by default), reports
the base URL once it accepts connections, stops on Ctrl-C or SIGTERM without re-raising the
signal, and then writes the final state (``--state-out``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import uvicorn

from importer.sandbox.app import API_PREFIX, Sandbox, SandboxConnectionDropped, create_sandbox
from importer.sandbox.state import SandboxConfig
from importer.serving import base_url, listen, serving_in_thread

__all__ = ["running_sandbox", "serve"]


class _QuietDrops(logging.Filter):
    """Keep uvicorn from logging a traceback for every deliberately dropped connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SandboxConnectionDropped)


class _Server(uvicorn.Server):
    """uvicorn, with Ctrl-C/SIGTERM ending ``serve`` normally and cutting hanging requests short."""

    def __init__(self, config: uvicorn.Config, sandbox: Sandbox) -> None:
        super().__init__(config)
        self._sandbox = sandbox

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the captured signal after shutdown, which would kill the process on
        # SIGTERM before serve() writes the state file; handle the signals without re-raising.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._sandbox.release_hangs()
        super().handle_exit(sig, frame)


def _server(sandbox: Sandbox) -> _Server:
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["filters"] = {"sandbox_drops": {"()": _QuietDrops}}
    for handler in log_config["handlers"].values():
        handler["filters"] = ["sandbox_drops"]
    config = uvicorn.Config(
        sandbox.app, lifespan="off", ws="none", access_log=False, log_level="warning", log_config=log_config
    )
    return _Server(config, sandbox)


def _base_url(sock: socket.socket) -> str:
    return base_url(sock) + API_PREFIX


@contextlib.contextmanager
def running_sandbox(
    config: SandboxConfig, host: str = "127.0.0.1", port: int = 0
) -> Iterator[tuple[str, Sandbox]]:
    """Serve a sandbox over real TCP in a background thread for the duration of a ``with``.

    Args:
        config: The options.
        host: The address to listen on (loopback by default).
        port: The port; 0 picks a free one.

    Yields:
        The base URL (ending in /api/v2) and the sandbox, for state inspection.
    """
    sandbox = create_sandbox(config)
    sock = listen(host, port)
    with serving_in_thread(_server(sandbox), sock, name="sandbox", before_stop=sandbox.release_hangs):
        yield _base_url(sock), sandbox


def serve(
    config: SandboxConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    state_out: Path | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve a sandbox until Ctrl-C or SIGTERM, then write its state.

    Args:
        config: The options.
        host: The address to listen on.
        port: The port (0 picks a free one; ``on_ready`` tells which).
        state_out: Where to write the final state as JSON on shutdown, if anywhere.
        on_ready: Called once with the base URL (ending in /api/v2) when it accepts connections.

    Raises:
        InputError: The inventory cannot be used or the address cannot be listened on.
    """
    sandbox = create_sandbox(config)
    sock = listen(host, port)
    server = _server(sandbox)
    try:
        if on_ready is not None:
            on_ready(_base_url(sock))  # the socket already listens: early clients wait in the backlog
        server.run(sockets=[sock])
    finally:
        sock.close()
        if state_out is not None:
            sandbox.write_state(state_out)
