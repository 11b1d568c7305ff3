"""The one retry policy: how many tries, and how long to wait before the next one.

Used by the client's read retries (``client.py``; the re-reads of live state during the writes,
``inventory.LiveRouting``, go through them and add none of their own) and the engine's re-sends
after a settled unknown outcome (``apply.py``).

What is retried is decided where the answer is understood; this module only says when:
wait ``base * 2 ** (attempt - 1)`` seconds, capped at :data:`MAX_DELAY`, times a random factor
in [0.5, 1) so that workers which failed together do not come back together. ``base`` 0 turns
every wait off (tests). A 429 is not retried on this schedule: the rate limiter's pause (the
server's Retry-After, or until the window frees a slot) decides that wait.
"""

from __future__ import annotations

import random

__all__ = ["MAX_ATTEMPTS", "MAX_DELAY", "SETTLE_ATTEMPTS", "backoff_delay"]

MAX_ATTEMPTS = 3
"""Tries of one read, and unknown outcomes of one write, before giving up."""
SETTLE_ATTEMPTS = MAX_ATTEMPTS * MAX_ATTEMPTS
"""Tries of a re-read that settles an unknown outcome: when it fails the whole run stops, so it
gets three reads' worth of tries, in one loop (the client's), not rounds of retries around retries."""
MAX_DELAY = 8.0
"""The longest wait between two tries, in seconds."""


def backoff_delay(attempt: int, base: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``attempt``-th try failed (``attempt`` counts from 1).

    Args:
        attempt: How many tries have failed so far.
        base: The first wait in seconds (before jitter); 0 turns waiting off.
        rng: The random source for the jitter (a seeded one makes waits repeatable).

    Returns:
        ``min(MAX_DELAY, base * 2 ** (attempt - 1)) * uniform(0.5, 1)``.
    """
    if base <= 0:
        return 0.0
    jitter = 0.5 + (rng.random() if rng is not None else random.random()) / 2
    return min(MAX_DELAY, base * 2.0 ** max(0, attempt - 1)) * jitter
