"""The explicit-cache policy (a table) and the session's cache ledger."""

from __future__ import annotations

import pytest

from qwen_lsp.context import build_context
from qwen_lsp.context_cache import (
    PRIOR_REQUESTS_PER_REGION,
    TTL_S,
    ExplicitCache,
    explicit_pays_off,
)
from qwen_lsp.prompts import CACHE_CHUNK_LINES, PartialBlocks, partial_blocks
from qwen_lsp.providers.base import Usage

# stable, cached, implicit, expected hits -> mark?
POLICY = [
    # Below the minimum nothing is cached: never.
    (1000, 0, 0, 50.0, False),
    # A new prefix nobody has cached: the 25% surcharge pays from 2.5 hits on.
    (2000, 0, 0, 2.0, False),
    (2000, 0, 0, 2.5, True),
    (2000, 0, 0, 4.0, True),
    # The implicit cache already holds it (20% now): creating costs 1.05x more
    # now, and each hit saves only 0.1x, so it takes 10.5 hits.
    (2000, 0, 2000, 10.0, False),
    (2000, 0, 2000, 11.0, True),
    # An explicit cache holds it: a hit is cheaper than any implicit one.
    (2000, 2000, 2000, 0.0, True),
    # Mostly cached, a small new part (the next chunk of lines): pays at once.
    (2000, 1800, 1800, 0.0, True),
    # Half cached, implicit holds all of it, no hits expected: 0.1*1000 +
    # 1.25*1000 = 1350 > 400.
    (2000, 1000, 2000, 0.0, False),
    # Counts outside the prefix are clamped to it.
    (2000, 5000, 0, 0.0, True),
    (2000, 0, 5000, -3.0, False),
]


@pytest.mark.parametrize(("stable", "cached", "implicit", "hits", "mark"), POLICY)
def test_policy_table(stable: int, cached: int, implicit: int, hits: float, mark: bool) -> None:
    assert explicit_pays_off(stable_tokens=stable, cached_tokens=cached,
                             implicit_tokens=implicit, expected_hits=hits) is mark


def _doc(lines: int, extra: str = "") -> str:
    return "".join(f"value_number_{i} = compute_something({i}, other={i * 2})\n"
                   for i in range(lines)) + extra


def _blocks(text: str, *, budget: int = 4000) -> PartialBlocks:
    ctx = build_context(text, len(text), uri="file:///w/a.py", path="a.py", language="python",
                        version=1, context_tokens=budget)
    return partial_blocks(ctx)


def test_blocks_hold_the_prefix_in_chunks_and_the_tail() -> None:
    text = _doc(60, "x = ")
    ctx = build_context(text, len(text), uri="file:///w/a.py", path="a.py", language="python",
                        version=1, context_tokens=4000)
    blocks = partial_blocks(ctx)
    chunks = blocks.texts[2: blocks.stable_end + 1]
    assert all(c.count("\n") == CACHE_CHUNK_LINES for c in chunks)
    assert "".join(chunks) + blocks.tail == ctx.prefix
    assert blocks.tail.endswith("x = ") and blocks.tail.count("\n") < CACHE_CHUNK_LINES
    assert blocks.texts[blocks.instruction].endswith("Complete only the rest of the current line.")
    # At a line start the tail keeps one whole line: the assistant message is never empty.
    at_start = _blocks(_doc(60))
    assert 1 <= at_start.tail.count("\n") <= CACHE_CHUNK_LINES and at_start.tail.strip()


def test_first_big_request_marks_with_the_prior() -> None:
    cache = ExplicitCache()
    blocks = _blocks(_doc(120, "x = "))
    plan = cache.plan("file:///w/a.py", blocks, 0.0)
    assert PRIOR_REQUESTS_PER_REGION - 1 >= 2.5  # the prior alone makes a new prefix pay
    assert plan.marks == (blocks.stable_end, blocks.instruction)
    assert plan.hit_tokens == 0


def test_small_prefix_stays_implicit_even_when_forced() -> None:
    for force in (False, True):
        cache = ExplicitCache(force=force)
        assert cache.plan("file:///w/a.py", _blocks(_doc(10, "x = ")), 0.0).marks == ()


def test_cache_is_usable_only_after_the_response_and_for_five_minutes() -> None:
    cache = ExplicitCache()
    uri = "file:///w/a.py"
    first = _blocks(_doc(120, "x = "))
    plan = cache.plan(uri, first, 0.0)
    # Sent before the first response ended: nothing to hit yet.
    assert cache.plan(uri, _blocks(_doc(120, "x = 1")), 0.5).hit_tokens == 0
    cache.finished(plan, None, 1.0)  # closed early: assumed created
    later = cache.plan(uri, _blocks(_doc(120, "x = 12")), 2.0)
    assert later.hit_tokens == plan.tokens[-1]  # the same blocks, only the tail differs
    assert later.marks
    assert cache.live(1.0 + TTL_S - 0.1) == len(plan.marks)
    assert cache.live(1.0 + TTL_S + 0.1) == 0


def test_a_new_chunk_hits_the_previous_prefix() -> None:
    cache = ExplicitCache()
    uri = "file:///w/a.py"
    old = _blocks(_doc(120, "x = 1\n"))
    plan = cache.plan(uri, old, 0.0)
    cache.finished(plan, Usage(3000, 10, explicit_cached_tokens=0, cache_creation_tokens=2900),
                   1.0)
    grown = _blocks(_doc(120 + CACHE_CHUNK_LINES, "x = 1\n"))  # one more chunk
    # The previous cache is one block back, well within the look-back.
    assert grown.stable_end == old.stable_end + 1
    plan2 = cache.plan(uri, grown, 2.0)
    assert plan2.marks and plan2.hit_tokens == plan.tokens[0]


def test_usage_without_hit_or_creation_forgets_the_caches() -> None:
    cache = ExplicitCache()
    uri = "file:///w/a.py"
    plan = cache.plan(uri, _blocks(_doc(120, "x = ")), 0.0)
    cache.finished(plan, Usage(3000, 10), 1.0)  # the service cached nothing
    assert cache.live(2.0) == 0


def test_implicit_cached_prefix_needs_many_expected_hits() -> None:
    cache = ExplicitCache()
    uri = "file:///w/a.py"
    blocks = _blocks(_doc(120, "x = "))
    cache._per_region = 1.0  # this session's regions get a single request each
    assert cache.plan(uri, blocks, 0.0).marks == ()  # nothing expected: stays implicit
    # The same prefix again and again: the implicit cache holds it, and only
    # a long run of requests makes the switch pay.
    marked_at = None
    for n in range(1, 20):
        if cache.plan(uri, blocks, float(n)).marks:
            marked_at = n
            break
    assert marked_at is not None and marked_at >= 10


def test_a_document_on_the_plain_layout_stays_there_until_its_window_moves() -> None:
    cache = ExplicitCache()
    uri = "file:///w/a.py"
    small, big = _blocks(_doc(10, "x = ")), _blocks(_doc(120, "x = "))
    assert cache.use_blocks(uri, 0, big)  # big enough from the start: blocks
    assert not cache.use_blocks(uri, 0, small)  # too small to cache: plain
    # It grew big enough, but the implicit cache holds its plain prompts.
    assert not cache.use_blocks(uri, 0, big)
    assert cache.use_blocks(uri, 16, big)  # the window moved on: a new start
    assert cache.use_blocks("file:///w/b.py", 0, big)  # per document


def test_a_cached_window_keeps_its_start_within_the_stretch() -> None:
    from qwen_lsp.context_cache import STRETCH, keep_window_start

    text = _doc(400, "x = ")
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    ctx = build_context(text, len(text), uri="file:///w/a.py", path="a.py", language="python",
                        version=1, context_tokens=1536)
    assert ctx.prefix_start_line > 16
    kept = keep_window_start(ctx, text, ctx.prefix_start_line - 16)
    assert kept.prefix_start_line == ctx.prefix_start_line - 16
    assert kept.prefix == text[starts[kept.prefix_start_line]:] and kept.prefix.endswith(ctx.prefix)
    assert kept.fim_prefix.endswith(ctx.fim_prefix) and kept.suffix == ctx.suffix
    # Too far back (beyond the stretch), no cached start, or a later one: unchanged.
    far = next(line for line in range(ctx.prefix_start_line, -1, -1)
               if len(text) - starts[line] > STRETCH * len(ctx.prefix))
    assert keep_window_start(ctx, text, far) is ctx
    assert keep_window_start(ctx, text, far + 1).prefix_start_line == far + 1
    assert keep_window_start(ctx, text, None) is ctx
    assert keep_window_start(ctx, text, ctx.prefix_start_line + 4) is ctx
    assert keep_window_start(ctx, text.replace("\n", "\r"), 0) is ctx  # other line breaks
