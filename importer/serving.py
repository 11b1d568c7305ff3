"""uvicorn on one loopback socket, for the sandbox and the web service alike.

Both listen before they start (so a port of 0 can be reported, and early clients wait in the
backlog), and both run in a background thread for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import uvicorn

from importer.errors import InputError

__all__ = ["base_url", "listen", "serving_in_thread"]


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one).

    Raises:
        InputError: the address cannot be listened on.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on an accepted connection only when its
    # socket says TCP, and accepted sockets inherit the listener's proto. Without it Nagle and
    # delayed ACK hold every keep-alive answer for about 40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def base_url(sock: socket.socket) -> str:
    """http://host:port of a listening socket (an IPv6 host in brackets)."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


@contextlib.contextmanager
def serving_in_thread(
    server: uvicorn.Server,
    sock: socket.socket,
    *,
    name: str,
    grace: float = 5.0,
    before_stop: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Serve on ``sock`` in a daemon thread for the duration of a ``with``; the socket is closed after.

    Args:
        server: The uvicorn server.
        sock: The listening socket.
        name: What an error calls the server ("sandbox", "web"); its thread is voicelink-<name>.
        grace: Seconds to wait for a clean stop before forcing it (then as long again).
        before_stop: Called first on the way out (the sandbox releases requests it holds).

    Raises:
        RuntimeError: the server did not start within 10 seconds.
    """
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"voicelink-{name}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        if not server.started:
            raise RuntimeError(f"the {name} server did not start")
        yield
    finally:
        if before_stop is not None:
            before_stop()
        server.should_exit = True
        thread.join(grace)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        sock.close()
