"""A local tokens-per-minute budget (setting ``maxTokensPerMinute``).

DashScope limits a key by requests and tokens per minute. A team sharing a
key can give each editor a share: a request goes out only when the tokens of
the last 60 seconds plus its own (estimated: prompt and ``maxTokens``) fit
the budget. Once a request has its usage, its reservation is corrected to
the real count. A request larger than the whole budget may go when nothing
else was sent in the last minute, or it could never go.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 60.0


class Reservation:
    __slots__ = ("at", "tokens")

    def __init__(self, at: float, tokens: int) -> None:
        self.at = at
        self.tokens = tokens


class TokenBudget:
    def __init__(
        self, per_minute: int | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._spent: deque[Reservation] = deque()

    def _trim(self, now: float) -> None:
        while self._spent and now - self._spent[0].at >= WINDOW_S:
            self._spent.popleft()

    def used(self) -> int:
        self._trim(self._clock())
        return sum(r.tokens for r in self._spent)

    def wait(self, tokens: int) -> float:
        """Seconds until ``tokens`` fit (0: now)."""
        if not self.per_minute:
            return 0.0
        now = self._clock()
        self._trim(now)
        used = sum(r.tokens for r in self._spent)
        if not self._spent or used + tokens <= self.per_minute:
            return 0.0
        # Oldest reservations leave the window first.
        for r in self._spent:
            used -= r.tokens
            if used + tokens <= self.per_minute:
                return max(0.0, r.at + WINDOW_S - now)
        return max(0.0, self._spent[-1].at + WINDOW_S - now)

    def reserve(self, tokens: int) -> Reservation | None:
        """Take ``tokens`` from the budget, or None when they do not fit now."""
        if self.wait(tokens) > 0:
            return None
        reservation = Reservation(self._clock(), tokens)
        if self.per_minute:
            self._spent.append(reservation)
        return reservation

    @staticmethod
    def settle(reservation: Reservation | None, tokens: int) -> None:
        """The request's real token count is known."""
        if reservation is not None:
            reservation.tokens = tokens

    def message(self, tokens: int) -> str:
        wait = self.wait(tokens)
        return (f"maxTokensPerMinute ({self.per_minute}) reached, next request in "
                f"{math.ceil(wait)} s") if wait > 0 else ""
