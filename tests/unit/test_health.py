"""UpstreamHealth with an injected clock: backoff, Retry-After, breaker, recovery."""

from __future__ import annotations

import random

from qwen_lsp.health import (
    AUTH_PAUSE,
    BREAKER_THRESHOLD,
    MAX_BACKOFF,
    UpstreamHealth,
)
from qwen_lsp.providers.base import UpstreamError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _health(seed: int = 0) -> tuple[UpstreamHealth, Clock]:
    clock = Clock()
    return UpstreamHealth(clock=clock, rng=random.Random(seed)), clock


def _rate_limited(retry_after: float | None = None) -> UpstreamError:
    return UpstreamError("rate_limited", "HTTP 429", status=429, retry_after=retry_after)


def test_retry_after_sets_the_pause_exactly() -> None:
    h, clock = _health()
    h.failure(_rate_limited(7.5))
    assert not h.allow()
    assert h.remaining() == 7.5
    clock.now += 7.4
    assert not h.allow()
    clock.now += 0.1
    assert h.allow()


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    h, _ = _health(seed=1)
    pauses = []
    for _ in range(10):
        h.failure(_rate_limited())
        pauses.append(h.remaining())
        h.blocked_until = 0.0  # look at each pause on its own
    for attempt, pause in enumerate(pauses, start=1):
        ceiling = min(MAX_BACKOFF, 2.0 ** (attempt - 1))
        assert ceiling / 2 <= pause <= ceiling, (attempt, pause)
    assert pauses[5] > pauses[0] * 8
    assert max(pauses) <= MAX_BACKOFF


def test_jitter_spreads_clients_apart() -> None:
    # Many clients hitting the same limit must not all come back at once.
    pauses = set()
    for seed in range(20):
        h, _ = _health(seed)
        for _ in range(4):
            h.failure(_rate_limited())
        pauses.add(round(h.remaining(), 6))
    assert len(pauses) > 15


def test_breaker_opens_after_threshold_and_half_opens_after_the_pause() -> None:
    h, clock = _health()
    err = UpstreamError("server", "HTTP 503", status=503)
    for _ in range(BREAKER_THRESHOLD - 1):
        h.failure(err)
        assert h.allow()  # a couple of failures do not pause anything
    h.failure(err)
    assert not h.allow()
    assert h.state == "open"
    assert h.describe()["state"] == "open"
    clock.now += h.remaining()
    assert h.allow()  # half-open: one request may try
    assert h.describe()["state"] == "recovering"
    # It fails again: a longer pause.
    first = h.remaining()
    h.failure(err)
    assert h.remaining() > first
    clock.now += h.remaining()
    h.success()
    assert h.allow() and h.state == "healthy" and h.consecutive == 0
    assert h.describe() == {"state": "healthy", "pausedForSeconds": 0.0,
                            "consecutiveFailures": 0, "message": ""}


def test_success_resets_the_failure_count() -> None:
    h, _ = _health()
    err = UpstreamError("connect", "refused")
    for _ in range(BREAKER_THRESHOLD - 1):
        h.failure(err)
    h.success()
    h.failure(err)
    assert h.allow()


def test_auth_failure_pauses_automatic_requests() -> None:
    h, clock = _health()
    h.failure(UpstreamError("auth", "HTTP 401", status=401))
    assert not h.allow()
    assert h.remaining() == AUTH_PAUSE
    clock.now += AUTH_PAUSE
    assert h.allow()


def test_request_errors_do_not_open_the_breaker() -> None:
    # A 400 or 404 says this request (or the model) is wrong, not that the
    # upstream is down; pausing would not help.
    h, _ = _health()
    for kind in ("bad_request", "not_found") * 5:
        h.failure(UpstreamError(kind, "no"))
    assert h.allow()


def test_manual_requests_honour_a_rate_limit() -> None:
    h, clock = _health()
    h.failure(_rate_limited(4.0))
    for _ in range(10):
        assert not h.allow(manual=True) and not h.acquire(manual=True)
    assert h.message() == "rate-limited, retrying in 4 s"
    clock.now += 4.0
    # After the pause exactly one call finds out whether the limit is over.
    assert h.acquire(manual=True)
    assert not h.allow(manual=True) and not h.allow()
    h.failure(_rate_limited(4.0))
    assert not h.allow(manual=True)
    clock.now += 4.0
    assert h.acquire()
    h.success()
    assert h.allow() and h.acquire() and h.acquire()  # healthy: no single-call rule


def test_manual_requests_may_try_while_the_breaker_is_open() -> None:
    h, clock = _health()
    err = UpstreamError("server", "HTTP 503", status=503)
    for _ in range(BREAKER_THRESHOLD):
        h.failure(err)
    assert h.state == "open" and not h.allow() and not h.acquire()
    assert h.message().startswith("upstream failing, retrying in ")
    # The user asked: asking does not make a failing upstream worse.
    assert h.acquire(manual=True) and h.acquire(manual=True)
    h.failure(UpstreamError("auth", "HTTP 401", status=401))
    assert not h.allow() and h.allow(manual=True)
    clock.now += 10 * MAX_BACKOFF
    assert h.acquire() and not h.allow()  # half-open: one automatic call at a time
    h.release()
    assert h.allow()
