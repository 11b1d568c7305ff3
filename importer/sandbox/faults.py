"""Decide the sandbox's injected faults deterministically, one request at a time.

Every decision is a hash of (seed, fault kind, method, path, the request's DID/routing key,
how many times this same request has been seen), never a draw from a shared random stream,
so the same seed gives the same faults however concurrent requests interleave. Only the
requests that fall inside a 429 burst depend on arrival order, since a burst is by definition
"the next N requests".
"""

from __future__ import annotations

import enum
import hashlib
from collections import Counter
from dataclasses import dataclass

from importer.sandbox.state import SandboxConfig

__all__ = ["FaultInjector", "FaultKind", "FaultPlan"]


class FaultKind(enum.StrEnum):
    """One kind of injected fault, as it appears in the sandbox state."""

    LATENCY_SPIKE = "latency_spike"
    BURST_429 = "burst_429"
    FAIL = "fail"
    AMBIGUOUS_500 = "ambiguous_500"
    AMBIGUOUS_DROP = "ambiguous_drop"
    HANG = "hang"


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The faults chosen for one request before it is handled."""

    key: str
    """The request's DID/routing key (or query string for reads) the decision hashed."""
    occurrence: int
    """1 for the first time this method + path + key is seen, 2 for the second, ..."""
    spike: bool = False
    burst: bool = False
    fail_status: int | None = None
    """500 or 503 when the request fails before anything is applied."""
    ambiguous: FaultKind | None = None
    """AMBIGUOUS_500 or AMBIGUOUS_DROP: apply a successful write, then lose the answer."""
    hang: bool = False


class FaultInjector:
    """Plan faults for requests and keep the log of the ones that fired.

    Not thread-safe by itself: the sandbox calls it under its own lock.
    """

    def __init__(self, config: SandboxConfig) -> None:
        self._config = config
        self._seen: Counter[str] = Counter()
        self._burst_left = 0
        self.fired: list[dict[str, str | int]] = []

    def plan(self, method: str, path: str, key: str, *, write: bool) -> FaultPlan:
        """Choose the faults for one request.

        Args:
            method: The HTTP method.
            path: The request path (not the route template: two routing ids are two requests).
            key: The DID or routing id the body names, or the sorted query string of a read.
            write: Whether the request creates or updates routing (only writes can be ambiguous).

        Returns:
            The plan; the caller records each fault with ``record`` when it actually fires.
        """
        c = self._config
        seen_key = f"{method} {path} {key}"
        self._seen[seen_key] += 1
        n = self._seen[seen_key]

        def hit(kind: FaultKind, rate: float) -> bool:
            return rate > 0 and self._draw(kind, method, path, key, n) < rate

        spike = hit(FaultKind.LATENCY_SPIKE, c.spike_rate)
        if self._burst_left > 0:
            self._burst_left -= 1
            return FaultPlan(key, n, spike=spike, burst=True)
        if hit(FaultKind.BURST_429, c.burst_rate):
            self._burst_left = c.burst_length - 1
            return FaultPlan(key, n, spike=spike, burst=True)
        if hit(FaultKind.FAIL, c.fail_rate):
            # Clients should treat every 5xx alike; 503 catches the ones that only check for 500.
            status = 503 if self._draw(FaultKind.FAIL, method, path, key, -n) < 0.25 else 500
            return FaultPlan(key, n, spike=spike, fail_status=status)
        ambiguous: FaultKind | None = None
        if write and hit(FaultKind.AMBIGUOUS_500, c.ambiguous_rate):
            drop = self._draw(FaultKind.AMBIGUOUS_DROP, method, path, key, n) < 0.5
            ambiguous = FaultKind.AMBIGUOUS_DROP if drop else FaultKind.AMBIGUOUS_500
        hang = ambiguous is None and hit(FaultKind.HANG, c.hang_rate)
        return FaultPlan(key, n, spike=spike, ambiguous=ambiguous, hang=hang)

    def record(self, kind: FaultKind, method: str, path: str, plan: FaultPlan) -> None:
        """Log a fault that fired."""
        self.fired.append(
            {
                "kind": kind.value,
                "method": method,
                "path": path,
                "key": plan.key,
                "occurrence": plan.occurrence,
            }
        )

    def _draw(self, kind: FaultKind, method: str, path: str, key: str, n: int) -> float:
        """Return a number in [0, 1) fixed by the seed and the request's identity."""
        text = "\x1f".join((str(self._config.seed), kind.value, method, path, key, str(n)))
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64
