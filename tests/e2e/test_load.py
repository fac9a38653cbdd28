"""A smaller run of bench/load.py: overlapping, cancelled and superseded
completion requests against an upstream mixing slow, failing and good answers."""

from __future__ import annotations

from bench.load import run_load


async def test_load_every_request_answered_nothing_leaked() -> None:
    result = await run_load(documents=4, per_document=60, seed=11)
    assert result.unanswered == 0
    assert result.other_errors == []
    assert result.answered + result.cancelled == result.requests
    # The scenario really happened: cancellations, supersessions, failures.
    assert result.cancelled > 0
    assert result.stats["superseded"] > 0
    assert result.upstream_kinds.get("error500", 0) > 0
    assert result.with_items > 0
    # Nothing left behind: no tasks beyond the idle baseline, no stream open.
    assert result.tasks_after <= result.tasks_before
    assert result.upstream_in_flight_at_end == 0
    assert 0 <= result.upstream_connections_at_end <= result.documents
    # Memory stays bounded (a generous cap; the figure is in RELIABILITY.md).
    assert result.rss_after_mb - result.rss_before_mb < 100
    assert result.exit_code == 0
