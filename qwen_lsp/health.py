"""Upstream health: rate-limit backoff and a circuit breaker.

While the upstream is backing off or the circuit is open, completions
answer empty at once instead of queueing calls that would fail. Manual
requests (the user asked) may still try while the circuit is open or after
an authentication failure, but they honour a rate limit like any other
request: a client retrying on every invoked completion only turns the limit
into a longer one. Both states end by themselves: after the pause exactly
one request goes through (half-open) and its outcome decides what happens
next; under a rate limit that makes at most one call per window.
"""

from __future__ import annotations

import math
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
# States whose pause manual requests honour as well.
_LIMITED = {"backoff"}


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
        self._probing = False  # the one half-open call is under way

    def allow(self, *, manual: bool = False) -> bool:
        """May a request call the upstream now? (Does not reserve anything.)"""
        if manual and self.state not in _LIMITED:
            return True  # the user asked, and asking does not make it worse
        if self._probing:
            return False
        return self._clock() >= self.blocked_until

    def acquire(self, *, manual: bool = False) -> bool:
        """Like :meth:`allow`, and reserves the call: after a failure only one
        call at a time may find out whether the upstream is back. Pair every
        True with :meth:`release` (or an outcome)."""
        if not self.allow(manual=manual):
            return False
        if self.state != "healthy" and not (manual and self.state not in _LIMITED):
            self._probing = True
        return True

    def release(self) -> None:
        """The reserved call ended without an outcome (cancelled)."""
        self._probing = False

    def remaining(self) -> float:
        return max(0.0, self.blocked_until - self._clock())

    def _backoff(self, attempt: int) -> float:
        ceiling = min(MAX_BACKOFF, BASE_BACKOFF * 2 ** max(0, attempt - 1))
        # Full jitter keeps many clients from retrying in lock step.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def failure(self, err: UpstreamError) -> None:
        self.last_error = err
        self._probing = False
        now = self._clock()
        if err.kind == "rate_limited":
            self.rate_limited += 1
            pause = err.retry_after if err.retry_after is not None else self._backoff(
                self.rate_limited
            )
            until = now + min(pause, MAX_BACKOFF * 5)
            # Another rate limit never shortens the pause; the pause of an
            # earlier cause (auth, breaker) gives way to the server's word.
            self.blocked_until = max(self.blocked_until, until) if self.state == "backoff" else until
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
        self._probing = False
        self.consecutive = 0
        self.rate_limited = 0
        self.blocked_until = 0.0
        self.state = "healthy"
        self.last_error = None

    def message(self) -> str:
        """Why completions are paused, for the editor's status ("" when not)."""
        left = self.remaining()
        if left <= 0:
            return ""
        wait = f"retrying in {math.ceil(left)} s"
        if self.state == "backoff":
            return f"rate-limited, {wait}"
        if self.state == "auth":
            return f"authentication failed, {wait}"
        if self.state == "open":
            return f"upstream failing, {wait}"
        return ""

    def describe(self) -> dict[str, object]:
        paused = self._clock() < self.blocked_until
        return {
            "state": self.state if paused or self.state == "healthy" else "recovering",
            "pausedForSeconds": round(self.remaining(), 3),
            "consecutiveFailures": self.consecutive,
            "message": self.message(),
        }
