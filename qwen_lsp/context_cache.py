"""DashScope's explicit context cache: when to mark blocks, and what is cached.

The vendor's rules (Model Studio, "Context cache"): a content block marked
``"cache_control": {"type": "ephemeral"}`` makes the service look back up to
20 blocks for the longest cached prefix ending at a block; a marker whose own
prefix is not cached creates a cache from the first block to it, once the
response has ended, when that prefix has at least 1,024 tokens. A cache lives
5 minutes and each hit resets that. Creation is billed at 125% of the input
price and hits at 10%; a request with markers gets no implicit-cache
discount, which bills its hits at 20%. At most 4 markers per request.

:func:`explicit_pays_off` is the decision, a pure function of token counts
and expected hits. :class:`ExplicitCache` feeds it: it remembers which
prefixes this session's requests cached and until when, which prefix the
implicit cache probably holds, and how many requests a region of a file
usually gets.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import deque
from dataclasses import dataclass, field

from qwen_lsp.context import CompletionContext, estimate_tokens
from qwen_lsp.prompts import PartialBlocks
from qwen_lsp.providers.base import Usage

MIN_TOKENS = 1024
# Our token count is an estimate; mark only prefixes clearly above the minimum.
MIN_TOKENS_MARGIN = 1.1
TTL_S = 300.0
LOOKBACK_BLOCKS = 20
MAX_MARKERS = 4
CREATION_RATE = 1.25
EXPLICIT_HIT_RATE = 0.10
IMPLICIT_HIT_RATE = 0.20
# Requests a region of a file gets, before this session has seen any: a pause
# in typing at one place usually brings several completions.
PRIOR_REQUESTS_PER_REGION = 4.0
EWMA_WEIGHT = 0.3
MAX_EXPECTED_HITS = 20.0
_MAX_ENTRIES = 512
# While its prefix is cached, a window keeps its start until the code before
# the cursor is this much longer than the budget gives it (cached input costs
# 10%, and a moved start would create the whole cache anew).
STRETCH = 1.5


def explicit_pays_off(
    *,
    stable_tokens: int,
    cached_tokens: int,
    implicit_tokens: int,
    expected_hits: float,
    min_tokens: int = MIN_TOKENS,
) -> bool:
    """Should this request mark its stable prefix (``stable_tokens`` long)?

    ``cached_tokens``: the part of it an explicit cache holds now (a hit);
    ``implicit_tokens``: the part the implicit cache would probably hit;
    ``expected_hits``: later requests expected to reuse the prefix within the
    cache's life. Marking costs ``0.1 * cached + 1.25 * new`` now instead of
    ``0.2 * implicit + 1.0 * rest``, and saves ``0.1 * stable`` (10% instead
    of 20%) on each later hit. Below the vendor's minimum size nothing is
    cached, so it never pays.
    """
    if stable_tokens < min_tokens:
        return False
    cached = max(0, min(cached_tokens, stable_tokens))
    implicit = max(0, min(implicit_tokens, stable_tokens))
    explicit_now = EXPLICIT_HIT_RATE * cached + CREATION_RATE * (stable_tokens - cached)
    implicit_now = IMPLICIT_HIT_RATE * implicit + (stable_tokens - implicit)
    gain = max(0.0, expected_hits) * (IMPLICIT_HIT_RATE - EXPLICIT_HIT_RATE) * stable_tokens
    return explicit_now - implicit_now <= gain


def keep_window_start(
    ctx: CompletionContext, text: str, start_line: int | None
) -> CompletionContext:
    """``ctx`` with its prefix window starting at ``start_line`` (the start of
    the window this document's explicit cache holds) instead of a later line,
    while the prefix stays within ``STRETCH`` times its length. Lines are
    counted by "\\n" as the context builder counts them."""
    here = ctx.prefix_start_line
    if start_line is None or not 0 <= start_line < here:
        return ctx
    old = ctx.offset - len(ctx.prefix)
    if old <= 0 or text[old - 1] != "\n" or text[old:ctx.offset] != ctx.prefix:
        return ctx  # not a window of whole lines of this text
    limit = ctx.offset - int(STRETCH * max(1, len(ctx.prefix)))
    begin = old
    for _ in range(here - start_line):
        if begin <= 0 or begin < limit:
            return ctx  # fewer lines above, or too long a prefix
        begin = text.rfind("\n", 0, begin - 1) + 1
    if begin < limit:
        return ctx
    extra = text[begin:old]
    return dataclasses.replace(ctx, prefix=extra + ctx.prefix, fim_prefix=extra + ctx.fim_prefix,
                               prefix_start_line=start_line)


def _prefix_keys(blocks: PartialBlocks) -> tuple[list[str], list[int]]:
    """A key and the estimated tokens of each prefix ``texts[:i + 1]``."""
    digest = hashlib.sha256()
    keys: list[str] = []
    totals: list[int] = []
    total = 0
    for text in blocks.texts:
        digest.update(len(text).to_bytes(8, "little"))
        digest.update(text.encode("utf-8", "surrogatepass"))
        keys.append(digest.hexdigest())
        total += estimate_tokens(text)
        totals.append(total)
    return keys, totals


@dataclass
class _Entry:
    tokens: int
    ready_at: float  # created after the response: usable from then on
    expires_at: float


@dataclass
class _Region:
    """Consecutive requests of one document sharing their first blocks."""

    key: str
    times: deque[float] = field(default_factory=lambda: deque(maxlen=64))


@dataclass(frozen=True)
class CachePlan:
    """What one request marks, and what it expects to be cached afterwards."""

    marks: tuple[int, ...]
    keys: tuple[str, ...]  # prefix keys of the marked blocks
    tokens: tuple[int, ...]  # their estimated tokens
    hit_tokens: int  # the prefix we expect to hit now


NO_MARKS = CachePlan((), (), (), 0)


class ExplicitCache:
    """The session's view of the explicit cache, and the per-request decision.

    ``force`` (setting ``contextCache = "explicit"``) marks every prefix big
    enough to be cached; otherwise :func:`explicit_pays_off` decides.
    """

    def __init__(self, *, force: bool = False) -> None:
        self.force = force
        self._entries: dict[str, _Entry] = {}
        self._regions: dict[str, _Region] = {}
        self._implicit: dict[str, list[str]] = {}  # uri -> keys of the last unmarked prompt
        self._plain_at: dict[str, int] = {}  # uri -> window start of its plain prompts
        self._window: dict[str, int] = {}  # uri -> window start of its marked prompts
        self._per_region = PRIOR_REQUESTS_PER_REGION
        self.marked = 0
        self.unmarked = 0

    # -- queries ---------------------------------------------------------------
    def live(self, now: float) -> int:
        self._prune(now)
        return sum(1 for e in self._entries.values() if e.ready_at <= now)

    def _prune(self, now: float) -> None:
        for key in [k for k, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[key]
        while len(self._entries) > _MAX_ENTRIES:
            oldest = min(self._entries, key=lambda k: self._entries[k].expires_at)
            del self._entries[oldest]

    def _hit(self, keys: list[str], totals: list[int], mark: int, now: float) -> int:
        """Tokens of the longest live prefix the service finds from ``mark``."""
        for j in range(mark, max(-1, mark - LOOKBACK_BLOCKS), -1):
            entry = self._entries.get(keys[j])
            if entry is not None and entry.ready_at <= now < entry.expires_at:
                return totals[j]
        return 0

    def _expected_hits(self, uri: str, region_key: str, now: float) -> float:
        region = self._regions.get(uri)
        if region is None or region.key != region_key:
            if region is not None:
                # The user left the old region: learn how long regions last.
                self._per_region += EWMA_WEIGHT * (len(region.times) - self._per_region)
            region = self._regions[uri] = _Region(region_key)
        while region.times and now - region.times[0] > TTL_S:
            region.times.popleft()
        seen = len(region.times)
        region.times.append(now)
        # A region worked on for a while is likely to be worked on as long again.
        return min(MAX_EXPECTED_HITS, max(self._per_region - seen - 1, float(seen)))

    # -- per request -----------------------------------------------------------
    @staticmethod
    def eligible(blocks: PartialBlocks) -> bool:
        """Is the stable prefix big enough to be cached at all?"""
        tokens = sum(estimate_tokens(t) for t in blocks.texts[: blocks.stable_end + 1])
        return tokens >= MIN_TOKENS * MIN_TOKENS_MARGIN

    def use_blocks(self, uri: str, window_start: int, blocks: PartialBlocks) -> bool:
        """The block layout, or the plain one (False)?

        Prompts too small to cache keep the plain layout. A document that
        sent plain prompts keeps doing so until its window's start moves: the
        implicit cache holds those prompts (hits at 20%), and switching to
        blocks would create a cache of all of it at 125%, which takes about
        ten hits to earn back.
        """
        plain_at = self._plain_at.get(uri)
        if not self.eligible(blocks) or plain_at == window_start:
            self._plain_at[uri] = window_start
            return False
        self._plain_at.pop(uri, None)
        self._window.pop(uri, None)
        return True

    def window_start(self, uri: str) -> int | None:
        """The window start of this document's cached prefix, if any."""
        return self._window.get(uri)

    def plan(self, uri: str, blocks: PartialBlocks, now: float, window_start: int = 0
             ) -> CachePlan:
        """Which blocks this request marks (none: it stays on the implicit cache)."""
        self._prune(now)
        keys, totals = _prefix_keys(blocks)
        stable = blocks.stable_end
        # The head block names the file and where the window starts.
        expected = self._expected_hits(uri, keys[1], now)
        cached = self._hit(keys, totals, stable, now)
        previous = self._implicit.get(uri, [])
        implicit = 0
        for i, key in enumerate(keys[: stable + 1]):
            if i >= len(previous) or previous[i] != key:
                break
            implicit = totals[i]
        min_tokens = int(MIN_TOKENS * MIN_TOKENS_MARGIN)
        if self.force:
            mark = totals[stable] >= min_tokens
        else:
            mark = explicit_pays_off(
                stable_tokens=totals[stable],
                cached_tokens=cached,
                implicit_tokens=implicit,
                expected_hits=expected,
                min_tokens=min_tokens,
            )
        if not mark:
            self.unmarked += 1
            self._implicit[uri] = keys
            self._window.pop(uri, None)
            return NO_MARKS
        self.marked += 1
        self._window[uri] = window_start
        self._implicit.pop(uri, None)  # a marked request does not feed the implicit cache
        # The stable prefix, and the instruction after it (which stays the
        # same while the user types at one place).
        marks = tuple(sorted({stable, blocks.instruction}))[:MAX_MARKERS]
        hit = max(self._hit(keys, totals, m, now) for m in marks)
        return CachePlan(marks, tuple(keys[m] for m in marks), tuple(totals[m] for m in marks),
                         hit)

    def finished(self, plan: CachePlan, usage: Usage | None, now: float) -> None:
        """The response ended: the marked prefixes are cached from now on.

        A usage that reports neither a hit nor a creation means the service
        cached nothing (too small by its count); without a usage (stream
        closed early) we assume the caches were made, as the prompt was read.
        """
        if not plan.marks:
            return
        if usage is not None and not usage.explicit_cached_tokens and not usage.cache_creation_tokens:
            for key in plan.keys:
                self._entries.pop(key, None)
            return
        for key, tokens in zip(plan.keys, plan.tokens, strict=True):
            entry = self._entries.get(key)
            ready = entry.ready_at if entry is not None and entry.ready_at <= now else now
            self._entries[key] = _Entry(tokens, ready, now + TTL_S)
        self._prune(now)

    def forget(self, uri: str) -> None:
        self._regions.pop(uri, None)
        self._implicit.pop(uri, None)
        self._plain_at.pop(uri, None)
        self._window.pop(uri, None)

    def describe(self, now: float) -> dict[str, object]:
        return {
            "liveCaches": self.live(now),
            "markedRequests": self.marked,
            "unmarkedRequests": self.unmarked,
            "requestsPerRegion": round(self._per_region, 2),
        }
