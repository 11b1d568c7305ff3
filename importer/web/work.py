"""Background table work with a fixed number of workers, and the thread it runs in.

Reading and checking an upload, checking it again after an edit, planning and building a
workbook hold a whole table in memory and keep a core busy. ``WorkQueue`` lets ``workers`` of them
run at once; the others wait in order, each job knowing its place (``queue_position``), so memory
grows with the workers, not with the number of uploads (a restart with many unfinished jobs
queues them the same way).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

__all__ = ["DEFAULT_WORKERS", "WorkQueue", "in_background"]

DEFAULT_WORKERS = 2
T = TypeVar("T")


class Waiter(Protocol):
    """What waits in the queue: a job, told its place (1 = next) and woken on a change."""

    queue_position: int | None

    def touch(self) -> None: ...


async def in_background(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work (reading, validating, writing a workbook) in a daemon thread.

    Not ``asyncio.to_thread``: the loop's executor is joined when the server exits, so a
    shutdown would wait for a long validation. Work abandoned this way is safe to drop: the
    job is validated again on the next start, and workbooks are replaced atomically.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        try:
            result: Any = fn(*args, **kwargs)
            ok = True
        except BaseException as exc:  # handed to the awaiting task, which decides
            result, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=work, name="voicelink-web-work", daemon=True).start()
    return await future


class WorkQueue:
    """At most ``workers`` pieces of table work at a time; the rest wait first come, first served."""

    def __init__(self, workers: int = DEFAULT_WORKERS) -> None:
        if workers < 1:
            raise ValueError("workers must be 1 or more")
        self.workers = workers
        self.running = 0
        self.waiting: collections.deque[tuple[Waiter | None, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def turn(self, waiter: Waiter | None = None) -> AsyncIterator[None]:
        """Wait for a worker (``waiter`` told its place meanwhile), hold it for the ``with``."""
        if self.running < self.workers and not self.waiting:
            self.running += 1
        else:
            entry = (waiter, asyncio.get_running_loop().create_future())
            self.waiting.append(entry)
            self._positions()
            try:
                await entry[1]  # the worker is handed over: ``running`` already counts it
            except BaseException:
                if entry in self.waiting:
                    self.waiting.remove(entry)
                    self._positions()
                elif entry[1].done() and not entry[1].cancelled():
                    self._release()  # handed over just as the waiter gave up: pass it on
                raise
            finally:
                if waiter is not None and waiter.queue_position is not None:
                    waiter.queue_position = None
                    waiter.touch()
        try:
            yield
        finally:
            self._release()

    async def run(self, waiter: Waiter | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in a thread once a worker is free."""
        async with self.turn(waiter):
            return await in_background(fn, *args, **kwargs)

    def _release(self) -> None:
        while self.waiting:
            _, future = self.waiting.popleft()
            if not future.done():
                future.set_result(None)  # the worker passes straight to the next in line
                self._positions()
                return
        self.running -= 1

    def _positions(self) -> None:
        for place, (waiter, _) in enumerate(self.waiting, start=1):
            if waiter is not None and waiter.queue_position != place:
                waiter.queue_position = place
                waiter.touch()
