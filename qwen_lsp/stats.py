"""Counters and latency percentiles reported by ``qwen.stats``."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float] | deque[float], q: float) -> float | None:
    if not values:
        return None
    data = sorted(values)
    idx = min(len(data) - 1, max(0, round(q * (len(data) - 1))))
    return data[idx]


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 3)


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
    prefetches: int = 0  # suggestions computed ahead for the state "as if accepted"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    estimated_usage: int = 0
    errors: dict[str, int] = field(default_factory=dict)
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
            "prefetches": self.prefetches,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "cachedTokens": self.cached_tokens,
            "estimatedUsage": self.estimated_usage,
            "errors": dict(self.errors),
            "latencyMs": pct(self.answer_latency),
            "cacheHitLatencyMs": pct(self.hit_latency),
            "upstreamLatencyMs": pct(self.upstream_latency),
            "firstTokenLatencyMs": pct(self.first_token_latency),
            "serverOverheadMs": pct(self.overhead),
        }
