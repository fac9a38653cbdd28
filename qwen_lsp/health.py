"""Upstream health: rate-limit backoff and a circuit breaker.

While the upstream is backing off or the circuit is open, automatic
completions answer empty at once instead of queueing calls that would fail.
Both states end by themselves: the first request after the pause goes
through (half-open) and its outcome decides what happens next.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from qwen_lsp.providers.base import UpstreamError

# Failures that say the upstream (or the way to it) is unwell.
_TRANSIENT = {"server", "connect", "timeout", "protocol"}
BREAKER_THRESHOLD = 3
BASE_BACKOFF = 1.0
MAX_BACKOFF = 60.0
AUTH_PAUSE = 30.0


class UpstreamHealth:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self.blocked_until = 0.0
        self.consecutive = 0
        self.rate_limited = 0
        self.state = "healthy"  # healthy | backoff | open | auth
        self.last_error: UpstreamError | None = None

    def allow(self) -> bool:
        return self._clock() >= self.blocked_until

    def remaining(self) -> float:
        return max(0.0, self.blocked_until - self._clock())

    def _backoff(self, attempt: int) -> float:
        ceiling = min(MAX_BACKOFF, BASE_BACKOFF * 2 ** max(0, attempt - 1))
        # Full jitter keeps many clients from retrying in lock step.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def failure(self, err: UpstreamError) -> None:
        self.last_error = err
        now = self._clock()
        if err.kind == "rate_limited":
            self.rate_limited += 1
            pause = err.retry_after if err.retry_after is not None else self._backoff(
                self.rate_limited
            )
            self.blocked_until = max(self.blocked_until, now + min(pause, MAX_BACKOFF * 5))
            self.state = "backoff"
        elif err.kind == "auth":
            self.blocked_until = now + AUTH_PAUSE
            self.state = "auth"
        elif err.kind in _TRANSIENT:
            self.consecutive += 1
            if self.consecutive >= BREAKER_THRESHOLD:
                self.blocked_until = now + self._backoff(self.consecutive - BREAKER_THRESHOLD + 1)
                self.state = "open"

    def success(self) -> None:
        self.consecutive = 0
        self.rate_limited = 0
        self.blocked_until = 0.0
        self.state = "healthy"
        self.last_error = None

    def describe(self) -> dict[str, object]:
        return {
            "state": self.state if not self.allow() or self.state == "healthy" else "recovering",
            "pausedForSeconds": round(self.remaining(), 3),
            "consecutiveFailures": self.consecutive,
        }
