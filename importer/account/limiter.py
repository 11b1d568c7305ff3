"""A sliding-window rate limiter shared by every worker and every request to one API key.

The API counts request *arrivals* in a sliding window (60 requests per 60 s per key).
The client cannot see arrival times, only when it sent a request and when the answer
came back; the arrival lies between the two. So the limiter counts a request that is in
flight as occupying a slot, and once it has finished, stamps it with its *completion*
time and keeps the slot occupied for a full window after that. Any group of requests
the server sees inside one window was then counted by the limiter when the last of them
was sent, so a client at the real limit never meets a 429 from a correct server.

Waiters are served first come, first served. A 429 (someone else using the same key, a
server counting differently) calls :meth:`RateLimiter.pause`, which holds every waiter
until the pause ends.

The limiter uses asyncio primitives: create it inside the event loop that uses it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Slot:
    """A handle on one acquired slot; give it back with :meth:`RateLimiter.release`."""

    number: int
    acquired_at: float


class RateLimiter:
    """Let at most ``requests_per_minute`` requests into any sliding window of ``window`` seconds."""

    def __init__(
        self,
        requests_per_minute: int,
        *,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a limiter.

        Args:
            requests_per_minute: Requests allowed per window (the API's limit per key).
            window: The window length in seconds; tests scale it down.
            clock: A monotonic clock in seconds; tests may pass a fake one.
        """
        if requests_per_minute < 1:
            raise ValueError("requests_per_minute must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        self.limit = requests_per_minute
        self.window = window
        self._clock = clock
        self._stamps: deque[float] = deque()
        """Completion times of finished requests still inside the window, oldest first."""
        self._in_flight: set[int] = set()
        self._numbers = itertools.count(1)
        self._paused_until = float("-inf")
        self._queue = asyncio.Lock()  # asyncio.Lock wakes its waiters in FIFO order
        self._changed = asyncio.Event()
        self._waiting: set[asyncio.Task[object]] = set()
        self.requests = 0
        """Slots taken since this limiter was made (the web service's /metrics)."""
        self.throttled = 0
        """Pauses after a 429 since this limiter was made."""
        self.on_take: Callable[[RateLimiter], None] | None = None
        """Called each time a slot is taken, before the request leaves (the web service keeps the window)."""

    def __repr__(self) -> str:
        return (
            f"RateLimiter({self.limit}/{self.window:g}s, in_flight={len(self._in_flight)}, "
            f"recent={len(self._stamps)})"
        )

    @property
    def in_flight(self) -> int:
        """Requests acquired and not yet released."""
        return len(self._in_flight)

    def is_waiting(self, task: asyncio.Task[object]) -> bool:
        """Whether ``task`` is inside :meth:`acquire`: its request has not been sent yet.

        Cancelling such a task is safe: :meth:`acquire` takes no slot once cancelled, so the
        request it waited to send never leaves (``apply`` uses this to stop queued writes at once).
        """
        return task in self._waiting

    def _expire(self, now: float) -> None:
        # A stamp at exactly now - window still counts: that covers a server whose
        # window includes its left edge.
        while self._stamps and self._stamps[0] + self.window < now:
            self._stamps.popleft()

    def _wait_time(self, now: float) -> float:
        """Seconds until a slot may be free and no pause holds, 0 when one is free now."""
        self._expire(now)
        wait = max(0.0, self._paused_until - now)
        if len(self._in_flight) + len(self._stamps) >= self.limit:
            # With every slot in flight, only a release can free one. The floor keeps a
            # stamp sitting exactly on the window's edge counted.
            wait = max(wait, self._stamps[0] + self.window - now, 1e-3) if self._stamps else float("inf")
        return wait

    async def acquire(self) -> Slot:
        """Wait for a free slot and for any pause to end, then take the slot.

        Returns:
            The slot's handle, to pass to :meth:`release` once the response (or the failure) arrived.
        """
        task = asyncio.current_task()
        if task is not None:
            self._waiting.add(task)
        try:
            return await self._acquire()
        finally:
            self._waiting.discard(task)

    async def _acquire(self) -> Slot:
        async with self._queue:
            while True:
                self._changed.clear()
                now = self._clock()
                wait = self._wait_time(now)
                if wait <= 0:
                    slot = Slot(next(self._numbers), now)
                    self._in_flight.add(slot.number)
                    self.requests += 1
                    if self.on_take is not None:
                        self.on_take(self)
                    return slot
                # Wake early on a release or a new pause; the tiny extra sleep steps past
                # the inclusive window edge instead of spinning on it.
                timeout = None if wait == float("inf") else wait + 1e-3
                try:
                    async with asyncio.timeout(timeout):
                        await self._changed.wait()
                except TimeoutError:
                    pass

    def release(self, slot: Slot) -> None:
        """Give a slot back, stamping it with the current time; a second release is ignored."""
        if slot.number not in self._in_flight:
            return
        self._in_flight.discard(slot.number)
        self._stamps.append(self._clock())
        self._changed.set()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Hold a slot for the duration of a ``async with`` block."""
        slot = await self.acquire()
        try:
            yield slot
        finally:
            self.release(slot)

    def pause(self, seconds: float | None) -> None:
        """Hold every waiter after a 429.

        Args:
            seconds: The server's Retry-After, or None to wait until the oldest request
                leaves the window (a full window when none has finished yet).
        """
        now = self._clock()
        self._expire(now)
        self.throttled += 1
        if seconds is not None:
            until = now + max(0.0, seconds)
        elif self._stamps:
            until = self._stamps[0] + self.window
        else:
            until = now + self.window
        self._paused_until = max(self._paused_until, until)
        self._changed.set()

    def recent(self) -> list[float]:
        """How many seconds ago each request still inside the window finished (one in flight: 0).

        With :meth:`remember`, this is how a server keeps the window across a restart.
        """
        now = self._clock()
        self._expire(now)
        return [now - s for s in self._stamps] + [0.0] * len(self._in_flight)

    def remember(self, ages: list[float]) -> None:
        """Count requests an earlier run of the program finished ``ages`` seconds ago."""
        now = self._clock()
        kept = [now - max(0.0, a) for a in ages if a <= self.window]
        self._stamps = deque(sorted([*self._stamps, *kept]))
        self._changed.set()

    @property
    def paused_for(self) -> float:
        """Seconds left of the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def eta(self, remaining_requests: int) -> float:
        """Estimate the seconds needed to send ``remaining_requests`` more at this limit.

        Requests are assumed to complete instantly, so this is the time the limit alone
        imposes; in-flight requests are taken as finishing now.

        Args:
            remaining_requests: How many more requests will be sent.

        Returns:
            Seconds until the last of them can be sent.
        """
        if remaining_requests <= 0:
            return 0.0
        now = self._clock()
        self._expire(now)
        # When each of the `limit` slots is next available, soonest first; each reuse of a
        # slot then costs one more window.
        free_at = [now] * max(0, self.limit - len(self._stamps) - len(self._in_flight))
        free_at += [s + self.window for s in self._stamps]
        free_at += [now + self.window] * len(self._in_flight)
        free_at = sorted(max(t, self._paused_until) for t in free_at[: self.limit])
        last = remaining_requests - 1
        when = free_at[last % self.limit] + (last // self.limit) * self.window
        return max(0.0, when - now)
