"""The shared sliding-window rate limiter: slots, FIFO order, pauses, the ETA, and no 429s."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque

import httpx
import pytest
from helpers import wait_until_async

from importer.account.limiter import RateLimiter


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _acquired_within(limiter: RateLimiter, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await limiter.acquire()
    except TimeoutError:
        return False
    return True


def test_limiter_grants_limit_slots_at_once_then_blocks() -> None:
    async def main() -> tuple[list[bool], bool]:
        limiter = RateLimiter(3, window=60.0, clock=FakeClock())
        first = [await _acquired_within(limiter, 0.05) for _ in range(3)]
        return first, await _acquired_within(limiter, 0.05)

    first, fourth = asyncio.run(main())
    assert first == [True, True, True]
    assert fourth is False


def test_limiter_in_flight_and_finished_requests_both_hold_a_slot() -> None:
    """A released slot stays taken for a window after its completion."""

    async def main() -> list[bool]:
        clock = FakeClock()
        limiter = RateLimiter(2, window=60.0, clock=clock)
        a = await limiter.acquire()
        await limiter.acquire()
        limiter.release(a)  # stamped at 1000.0
        blocked_after_release = await _acquired_within(limiter, 0.05)
        clock.now = 1000.0 + 60.0  # exactly at the edge: still counted
        blocked_at_edge = await _acquired_within(limiter, 0.05)
        clock.now = 1000.0 + 60.01
        return [blocked_after_release, blocked_at_edge, await _acquired_within(limiter, 0.05)]

    assert asyncio.run(main()) == [False, False, True]


def test_limiter_release_twice_is_ignored() -> None:
    async def main() -> float:
        limiter = RateLimiter(5, clock=FakeClock())
        slot = await limiter.acquire()
        limiter.release(slot)
        limiter.release(slot)
        return limiter.eta(5)

    # One stamp only: four slots free now, the fifth frees a window later.
    assert asyncio.run(main()) == pytest.approx(60.0)


def test_limiter_waits_for_the_window_with_a_real_clock() -> None:
    async def main() -> float:
        limiter = RateLimiter(3, window=0.3)
        for _ in range(3):
            async with limiter.slot():
                pass
        start = time.monotonic()
        # Bounded, not timed: a loaded machine may wake the waiter late, never early.
        if not await _acquired_within(limiter, 30):
            raise AssertionError("no slot 30 s after a 0.3 s window")
        return time.monotonic() - start

    assert asyncio.run(main()) >= 0.25


def test_limiter_serves_waiters_first_come_first_served() -> None:
    async def main() -> list[int]:
        limiter = RateLimiter(1, window=0.05)
        order: list[int] = []

        async def worker(i: int) -> None:
            async with limiter.slot():
                order.append(i)

        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(worker(i)))
            await asyncio.sleep(0)  # let each one queue before the next
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(main()) == [0, 1, 2, 3, 4, 5]


def test_limiter_cancelled_waiter_takes_no_slot() -> None:
    async def main() -> bool:
        clock = FakeClock()
        limiter = RateLimiter(1, clock=clock)
        slot = await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await wait_until_async(lambda: limiter.is_waiting(waiter), "the second acquire waiting")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        limiter.release(slot)
        clock.now += 61
        return await _acquired_within(limiter, 0.05)

    assert asyncio.run(main()) is True


@pytest.mark.parametrize(
    ("seconds", "expected_min"),
    [
        (0.3, 0.28),  # Retry-After given
        (None, 0.0),  # until the oldest stamp leaves the window (measured against it below)
    ],
)
def test_limiter_pause_holds_every_worker(seconds: float | None, expected_min: float) -> None:
    async def main() -> tuple[list[float], float]:
        limiter = RateLimiter(100, window=0.4)
        async with limiter.slot():
            pass
        oldest = time.monotonic()
        limiter.pause(seconds)
        paused_at = time.monotonic()
        times: list[float] = []

        async def worker() -> None:
            async with limiter.slot():
                times.append(time.monotonic() - paused_at)

        await asyncio.gather(*(worker() for _ in range(5)))
        return times, oldest + 0.4 - paused_at

    times, window_left = asyncio.run(main())
    floor = expected_min if seconds is not None else window_left - 0.02
    assert len(times) == 5
    assert min(times) >= floor


def test_limiter_pause_during_wait_extends_the_wait() -> None:
    async def main() -> float:
        limiter = RateLimiter(1, window=0.1)
        async with limiter.slot():
            pass
        start = time.monotonic()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0.02)
        limiter.pause(0.4)
        await waiter
        return time.monotonic() - start

    assert asyncio.run(main()) >= 0.4


@pytest.mark.parametrize(
    ("limit", "finished", "in_flight", "pause", "remaining", "expected"),
    [
        (60, 0, 0, 0.0, 0, 0.0),
        (60, 0, 0, 0.0, 60, 0.0),  # one window's worth goes out at once
        (60, 0, 0, 0.0, 61, 60.0),
        (60, 0, 0, 0.0, 600, 540.0),  # ten windows; the first starts now
        (60, 30, 0, 0.0, 30, 0.0),  # 30 slots still free
        (60, 30, 0, 0.0, 31, 60.0),  # then wait for the oldest stamp
        (60, 0, 60, 0.0, 1, 60.0),  # all in flight: counted as finishing now
        (60, 0, 0, 10.0, 1, 10.0),  # a pause delays everything
        (10, 0, 0, 0.0, 25, 120.0),
    ],
)
def test_limiter_eta_table(
    limit: int, finished: int, in_flight: int, pause: float, remaining: int, expected: float
) -> None:
    async def main() -> float:
        clock = FakeClock()
        limiter = RateLimiter(limit, clock=clock)
        for _ in range(finished):
            limiter.release(await limiter.acquire())
        for _ in range(in_flight):
            await limiter.acquire()
        if pause:
            limiter.pause(pause)
        return limiter.eta(remaining)

    assert asyncio.run(main()) == pytest.approx(expected)


@pytest.mark.parametrize("bad", [{"requests_per_minute": 0}, {"requests_per_minute": 5, "window": 0}])
def test_limiter_rejects_nonsense_settings(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(int(bad["requests_per_minute"]), window=bad.get("window", 60.0))


class SlidingWindowServer:
    """A strict server: counts arrivals in a sliding window (edge included), 429 above the limit.

    Each request spends a random time on the way in and on the way back, so arrival sits
    anywhere between the client's send and its completion.
    """

    def __init__(self, limit: int, window: float, seed: int) -> None:
        self.limit = limit
        self.window = window
        self.arrivals: deque[float] = deque()
        self.rejected = 0
        self.served = 0
        self.rng = random.Random(seed)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(self.rng.uniform(0, 0.03))
        now = time.monotonic()
        while self.arrivals and self.arrivals[0] < now - self.window:
            self.arrivals.popleft()
        self.arrivals.append(now)
        busy = len(self.arrivals) > self.limit
        await asyncio.sleep(self.rng.uniform(0, 0.03))
        if busy:
            self.rejected += 1
            return httpx.Response(429, json={"success": False, "error": {"code": "LIMIT_REACHED"}})
        self.served += 1
        return httpx.Response(200, json={"success": True, "data": {}})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_limiter_at_the_servers_limit_meets_no_429(seed: int) -> None:
    """60 requests with 12 workers at 20 per 0.25 s against a server counting arrivals the same way."""

    async def main() -> SlidingWindowServer:
        server = SlidingWindowServer(limit=20, window=0.25, seed=seed)
        limiter = RateLimiter(20, window=0.25)
        queue = list(range(60))
        async with httpx.AsyncClient(transport=httpx.MockTransport(server.handle)) as http:

            async def worker() -> None:
                while queue:
                    queue.pop()
                    async with limiter.slot():
                        await http.get("http://api.test/x")

            await asyncio.gather(*(worker() for _ in range(12)))
        return server

    server = asyncio.run(main())
    assert server.served == 60
    assert server.rejected == 0
