"""Counters and latency percentiles reported by ``qwen.stats``."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from qwen_lsp.pricing import Price, cost, input_equivalents
from qwen_lsp.providers.base import Usage

HOUR_S = 3600.0


def percentile(values: list[float] | deque[float], q: float) -> float | None:
    if not values:
        return None
    data = sorted(values)
    idx = min(len(data) - 1, max(0, round(q * (len(data) - 1))))
    return data[idx]


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 3)


@dataclass
class Billing:
    """Tokens by billing class and the estimated cost of a set of requests."""

    requests: int = 0
    standard: int = 0  # input at the full price
    implicit: int = 0  # input hit in the implicit cache (20%)
    explicit: int = 0  # input hit in the explicit cache (10%)
    creation: int = 0  # input written to a new explicit cache (125%)
    output: int = 0
    equivalents: float = 0.0  # input tokens weighted by class
    cost: float = 0.0
    unpriced: int = 0  # requests of a model without a price

    def add(self, usage: Usage, price: Price | None) -> float:
        self.requests += 1
        self.standard += usage.standard_tokens
        self.implicit += usage.cached_tokens
        self.explicit += usage.explicit_cached_tokens
        self.creation += usage.cache_creation_tokens
        self.output += usage.completion_tokens
        self.equivalents += input_equivalents(usage)
        if price is None:
            self.unpriced += 1
            return 0.0
        spent = cost(usage, price)
        self.cost += spent
        return spent

    def snapshot(self, currency: str | None) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "inputStandard": self.standard,
            "inputImplicitCached": self.implicit,
            "inputExplicitCached": self.explicit,
            "inputCacheCreation": self.creation,
            "output": self.output,
            "inputEquivalents": round(self.equivalents, 1),
            "estimatedCost": round(self.cost, 6),
            "currency": currency,
            "unpricedRequests": self.unpriced,
        }


@dataclass
class Stats:
    requests: int = 0
    upstream_requests: int = 0
    cache_hits: int = 0
    typed_through_hits: int = 0
    attached: int = 0
    coalesced: int = 0
    superseded: int = 0
    cancelled: int = 0
    stale: int = 0
    skipped: int = 0
    skipped_backoff: int = 0
    early_stops: int = 0
    early_answers: int = 0
    timeboxed: int = 0
    prefills: int = 0  # local engine: prompt-only warm-up requests
    kept_states: int = 0  # ... of them: state saves after a stream we closed early
    prefetches: int = 0  # suggestions computed ahead for the state "as if accepted"
    prefetches_dropped: int = 0  # ... of them given up: the user went elsewhere first
    second_tries: int = 0  # local engine: asked again without the copy of the next line
    second_try_answers: int = 0  # ... and got a suggestion
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    estimated_usage: int = 0
    skipped_budget: int = 0  # over maxTokensPerMinute
    errors: dict[str, int] = field(default_factory=dict)
    billing: Billing = field(default_factory=Billing)
    currency: str | None = None
    # (time, usage, price) of the requests of the last hour.
    _recent: deque[tuple[float, Usage, Price | None]] = field(default_factory=deque)
    answer_latency: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    hit_latency: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    upstream_latency: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    first_token_latency: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    overhead: deque[float] = field(default_factory=lambda: deque(maxlen=5000))

    def record_answer(self, seconds: float, *, hit: bool) -> None:
        (self.hit_latency if hit else self.answer_latency).append(seconds)

    def record_upstream(self, total: float, first_token: float | None) -> None:
        self.upstream_latency.append(total)
        if first_token is not None:
            self.first_token_latency.append(first_token)

    def record_usage(self, usage: Usage, price: Price | None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.billing.add(usage, price)
        if price is not None:
            self.currency = price.currency
        self._recent.append((now, usage, price))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > HOUR_S:
            self._recent.popleft()

    def last_hour(self, now: float | None = None) -> Billing:
        now = time.monotonic() if now is None else now
        self._trim(now)
        hour = Billing()
        for _, usage, price in self._recent:
            hour.add(usage, price)
        return hour

    def record_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def record_overhead(self, seconds: float) -> None:
        self.overhead.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        def pct(d: deque[float]) -> dict[str, float | None]:
            return {"p50": _ms(percentile(d, 0.5)), "p95": _ms(percentile(d, 0.95)),
                    "p99": _ms(percentile(d, 0.99)), "count": len(d)}

        return {
            "requests": self.requests,
            "upstreamRequests": self.upstream_requests,
            "cacheHits": self.cache_hits,
            "typedThroughHits": self.typed_through_hits,
            "attached": self.attached,
            "coalesced": self.coalesced,
            "superseded": self.superseded,
            "cancelled": self.cancelled,
            "stale": self.stale,
            "skipped": self.skipped,
            "skippedBackoff": self.skipped_backoff,
            "earlyStops": self.early_stops,
            "earlyAnswers": self.early_answers,
            "timeboxed": self.timeboxed,
            "prefills": self.prefills,
            "keptStates": self.kept_states,
            "prefetches": self.prefetches,
            "prefetchesDropped": self.prefetches_dropped,
            "secondTries": self.second_tries,
            "secondTryAnswers": self.second_try_answers,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "cachedTokens": self.cached_tokens,
            "estimatedUsage": self.estimated_usage,
            "skippedBudget": self.skipped_budget,
            "usage": {
                "session": self.billing.snapshot(self.currency),
                "lastHour": self.last_hour().snapshot(self.currency),
            },
            "errors": dict(self.errors),
            "latencyMs": pct(self.answer_latency),
            "cacheHitLatencyMs": pct(self.hit_latency),
            "upstreamLatencyMs": pct(self.upstream_latency),
            "firstTokenLatencyMs": pct(self.first_token_latency),
            "serverOverheadMs": pct(self.overhead),
        }
