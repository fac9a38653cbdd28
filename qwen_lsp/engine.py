"""Scheduling of completion requests: the part that decides latency and cost.

Per document there is at most one *flight*: a task that waits out the
debounce, then streams one upstream completion, stops it early, and
post-processes the text. Requests relate to the current flight like this:

* the cache answers first (exact or typed-through), without debounce;
* a request with the same context shares the flight (coalescing);
* a request whose newly typed characters the flight has already streamed
  attaches to it and gets the rest;
* any other request supersedes it: the flight is cancelled, which closes the
  HTTP stream so the upstream stops generating, and its waiters answer empty;
* a waiter cancelled by ``$/cancelRequest`` releases the flight, and the last
  waiter to leave cancels it.

This module knows no LSP and no HTTP types.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from qwen_lsp.cache import CompletionCache
from qwen_lsp.context import CompletionContext, ends_finished_line, estimate_tokens
from qwen_lsp.context_cache import NO_MARKS, CachePlan, ExplicitCache
from qwen_lsp.health import UpstreamHealth
from qwen_lsp.postprocess import (
    PostContext,
    Suggestion,
    fits_as_rewrite,
    next_line_copy_split,
    postprocess,
    stream_should_stop,
    swaps_one_word,
)
from qwen_lsp.pricing import Price
from qwen_lsp.prompt_cache import Cost, EngineView, prompt_tail_tokens, ready_at_seam
from qwen_lsp.prompts import (
    SINGLE_LINE_MAX_TOKENS,
    PartialBlocks,
    build_request,
    fim_prompt,
    partial_blocks,
)
from qwen_lsp.providers.base import (
    QWEN_SPECIAL_TOKENS,
    Provider,
    TextDelta,
    UpstreamError,
    UpstreamRequest,
    Usage,
)
from qwen_lsp.ratelimit import TokenBudget
from qwen_lsp.stats import Stats

ProviderSource = Callable[[], Awaitable[Provider]]
# Cached for a context where the model produced nothing worth showing.
NOTHING = Suggestion("")
log = logging.getLogger("qwen_lsp")

GAP_QUANTILE = 0.9
# A multi-line flight answers its waiters with the complete lines it has this
# long after its first token, then keeps streaming to fill the cache with the
# whole block. Counted from the first token, not from the request: the wait
# for it is prompt processing, which no early answer can shorten, and a block
# that arrives at once must not be cut to its complete lines.
EARLY_ANSWER_S = 0.25
# Local engine: a prompt with at most this many tokens left to compute is sent
# after the shortest debounce.
QUICK_NEW_TOKENS = 24
# A request that comes this long after the previous one in its document ends
# a pause (a jump, Enter after reading, a revisit), not a keystroke in a burst.
PAUSE_S = 0.5
# Longest wait for the end of a typing burst before a request goes to the
# local engine (a little more than the gap between the keys of steady typing).
LOCAL_MAX_DEBOUNCE_S = 0.25
# Longest a request waits for a state save in progress (one token from the KV cache).
KEEP_WAIT_S = 0.5
# Asked for by hand (the CLI, an invoked completion), a dropped answer is
# followed by the model's next choice: at most this many more answers, and no
# new one once this long has passed since the first answer ended (each costs
# only its own tokens: the prompt is still in the engine's KV cache).
MANUAL_TRIES = 4
MANUAL_RETRY_S = 2.0
# ... and a try started before that time may go on this much longer.
SECOND_TRY_GRACE_S = 0.5
# The first word of an answer, or its first mark when it starts with one.
_FIRST_WORD = re.compile(r"\w+|[^\w\s]+")


@dataclass
class EngineConfig:
    mode: str = "fim"  # effective mode: "fim" | "partial"
    max_tokens: int = 128
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    timeout_ms: int = 10000
    debounce_ms: int | None = None
    debounce_min_ms: int = 30
    debounce_max_ms: int = 600
    extra_body: dict[str, Any] = field(default_factory=dict)
    # Editors: show the complete lines of a multi-line answer early. The CLI
    # prints one answer and waits for the whole of it.
    early_answers: bool = True
    # When the time box ends mid-answer, editors still get the complete lines
    # that arrived; the CLI reports a time-out instead of a cut-off answer.
    partial_on_timeout: bool = True
    # Partial mode's context cache: "implicit" (plain layout, no markers),
    # "policy" (block layout, markers when they pay off) or "explicit"
    # (block layout, markers whenever the prefix is big enough).
    context_cache: str = "implicit"
    price: Price | None = None  # for the cost estimate in the stats
    max_tokens_per_minute: int | None = None
    # Offer the next line at the end of a finished line: the request there does
    # not stop at the line break, and the stream is closed after the next line
    # instead. Worth it where a new connection costs nothing (an upstream on this
    # machine); a remote one keeps its stop, and its connection.
    next_line: bool = False
    # The embedded engine (llama-cpp-python, which reads a "tokens" logit bias):
    # an answer dropped as a copy of the next line is asked for once more
    # without the token where it parts from the lines above (and, asked for by
    # hand, an answer of nothing without the end tokens), at no cost but the
    # answer's tokens.
    second_tries: bool = False
    # Asked for by hand: no further try starts, and none goes on, this many
    # seconds after the request (the CLI's promise of an answer in a few seconds).
    manual_budget_s: float | None = None


@dataclass
class Timing:
    """Server-side time spent on one request outside of any waiting."""

    busy: float = 0.0

    def add(self, since: float) -> float:
        now = time.perf_counter()
        self.busy += now - since
        return now


class _Flight:
    def __init__(self, ctx: CompletionContext, post: PostContext, lead: str = "") -> None:
        self.ctx = ctx
        self.post = post
        # What the model writes, from the cursor on. ``lead`` is the part of it
        # that the prompt already holds (CompletionContext.answer_lead).
        self.lead = lead
        self.text = lead
        self.sent = False  # upstream request started (debounce over)
        self.waiters = 0
        self.task: asyncio.Task[Suggestion | None] | None = None
        # What waiters get: the final suggestion, or complete lines early.
        self.answer: asyncio.Future[Suggestion | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.post_time = 0.0  # seconds spent post-processing this flight's text
        # Computed ahead (Tab, Tab, Tab) with no editor request waiting for it yet.
        self.prefetch = False
        self.delay = 0.0  # its debounce, seconds

    def release(self) -> None:
        self.waiters -= 1
        if self.waiters <= 0 and self.task is not None and not self.task.done():
            self.task.cancel()


@dataclass
class _DocState:
    last_request: float | None = None
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    after_pause: bool = True  # the latest request came after a pause
    accepted: bool = False  # a suggestion was accepted since the latest request
    flight: _Flight | None = None


def post_context(ctx: CompletionContext) -> PostContext:
    return PostContext(
        prefix=ctx.prefix,
        suffix=ctx.suffix,
        language=ctx.language,
        multiline=ctx.multiline,
        indent_unit=ctx.indent_unit,
        document=ctx.document,
    )


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        provider: ProviderSource,
        *,
        stats: Stats | None = None,
        cache: CompletionCache | None = None,
        health: UpstreamHealth | None = None,
        on_error: Callable[[UpstreamError], None] | None = None,
        on_success: Callable[[], None] | None = None,
        on_timeout: Callable[[int], None] | None = None,
        view: EngineView | None = None,
        on_paused: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._provider = provider
        self.stats = stats or Stats()
        self.cache = cache or CompletionCache()
        self.health = health or UpstreamHealth(clock=clock)
        self._on_error = on_error
        self._on_success = on_success
        self._on_timeout = on_timeout
        # The local engine's KV cache as we know it (None for remote upstreams).
        self.view = view
        self._debouncing = 0  # flights waiting out their debounce
        self._flights_up = 0  # upstream streams open now (prefills wait for none)
        self._on_paused = on_paused
        self._clock = clock
        self.explicit_cache = ExplicitCache()
        self.budget = TokenBudget(clock=clock)
        self._docs: dict[str, _DocState] = {}
        self._first_tokens: deque[float] = deque(maxlen=10)
        self._keeps: set[asyncio.Task[None]] = set()  # state saves after closed streams

    # -- public ----------------------------------------------------------------
    def forget(self, uri: str) -> None:
        """The document was closed: cancel its flight and drop its state."""
        state = self._docs.pop(uri, None)
        self.explicit_cache.forget(uri)
        if state and state.flight and state.flight.task and not state.flight.task.done():
            state.flight.task.cancel()

    def note_accept(self, uri: str) -> None:
        """The editor inserted a suggestion we showed (Tab, or a word of it)."""
        self._docs.setdefault(uri, _DocState()).accepted = True

    def drop_prefetches(self) -> int:
        """The user went elsewhere: stop computing ahead for where they were.

        A prefetch holds the engine for up to a second; the warm-up at the new
        place (and the first request there) would wait behind it. A flight an
        editor request has attached to is left alone. Returns how many stopped.
        """
        dropped = 0
        for state in self._docs.values():
            flight = state.flight
            if (flight is not None and flight.prefetch and flight.task is not None
                    and not flight.task.done()):
                flight.task.cancel()
                dropped += 1
        self.stats.prefetches_dropped += dropped
        return dropped

    async def aclose(self) -> None:
        tasks = [
            s.flight.task
            for s in self._docs.values()
            if s.flight and s.flight.task and not s.flight.task.done()
        ] + [t for t in self._keeps if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._docs.clear()

    async def complete(
        self,
        ctx: CompletionContext,
        *,
        is_current: Callable[[], bool] = lambda: True,
        timing: Timing | None = None,
        prefetch: bool = False,
    ) -> Suggestion | None:
        """Answer one completion request (None = nothing to show).

        ``prefetch``: computed ahead for a state the user may reach next; it
        fills the cache like any request but does not count as user activity.
        """
        timing = timing or Timing()
        t = time.perf_counter()
        started = self._clock()
        if not prefetch:  # prefetches are counted by the caller, not as editor requests
            self.stats.requests += 1
        state = self._docs.setdefault(ctx.uri, _DocState())
        if not prefetch:
            if state.last_request is not None:
                gap = started - state.last_request
                # An accepted suggestion is not a key of a burst: the user
                # reads what came in, and the next request goes out at once.
                if gap < 1.0 and not state.accepted:
                    state.gaps.append(gap)
                state.after_pause = gap >= PAUSE_S or state.accepted
            state.accepted = False
            state.last_request = started

        hit = self.cache.get(*_cache_key(ctx))
        if hit is not None and hit.suggestion is NOTHING and ctx.manual and self.config.second_tries:
            hit = None  # asked for by hand: the second try may find something
        if hit is not None and hit.suggestion is NOTHING:
            self.stats.cache_hits += 1
            timing.add(t)
            return None
        if hit is not None:
            self.stats.cache_hits += 1
            if hit.typed:
                self.stats.typed_through_hits += 1
            t = timing.add(t)
            self.stats.record_answer(self._clock() - started, hit=True)
            return hit.suggestion

        if not self.health.allow(manual=ctx.manual):
            self.stats.skipped_backoff += 1
            self._paused(self.health.message())
            timing.add(t)
            return None

        flight = state.flight
        typed = ""
        if flight is not None and flight.task is not None and not flight.task.done():
            typed = self._attachable(flight, ctx)
            if typed is None:
                self.stats.superseded += 1
                flight.task.cancel()
                flight = None
            elif typed:
                self.stats.attached += 1
            else:
                self.stats.coalesced += 1
        else:
            flight = None
        if flight is None:
            flight = self._launch(state, ctx, prefetch=prefetch)
            typed = ""
        elif not prefetch:
            flight.prefetch = False  # the editor waits for it now

        flight.waiters += 1
        t = timing.add(t)
        try:
            result = await asyncio.shield(flight.answer)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Our own request was cancelled ($/cancelRequest or shutdown).
                self.stats.cancelled += 1
                flight.release()
                raise
            return None  # the flight was superseded by a newer request
        flight.waiters -= 1
        # Each answer is charged the flight's post-processing time as well.
        timing.busy += flight.post_time
        t = time.perf_counter()
        if result is None:
            timing.add(t)
            return None
        if typed:
            if not result.text.startswith(typed) or len(result.text) <= len(typed):
                timing.add(t)
                return None
            result = Suggestion(result.text[len(typed):], result.replace_suffix_chars)
        if not is_current():
            self.stats.stale += 1
            timing.add(t)
            return None
        timing.add(t)
        self.stats.record_answer(self._clock() - started, hit=False)
        return result

    @property
    def idle(self) -> bool:
        """No upstream stream is open and none is about to be (the local engine is free)."""
        return self._flights_up == 0 and self._debouncing == 0

    async def prefill(self, prompt: str, *, answered: bool = False) -> bool:
        """Have the local engine process ``prompt`` and keep its state: no real output.

        One token is generated (the engine needs a sampling step to finish
        the request and save its state). Returns True when the engine got
        through it. Never raises for upstream trouble: warm-up is optional.
        ``answered``: the prompt is one a request was answered with (see
        :meth:`_keep_soon`), not a warm-up window.
        """
        if self.view is None:
            return False
        cfg = self.config
        request = UpstreamRequest(prompt=prompt, max_tokens=1, temperature=0.0, stop=[],
                                  extra=dict(cfg.extra_body))
        cost = self.view.cost(prompt)
        self.stats.prefills += 1
        sent_at = self._clock()
        first: float | None = None
        text = ""
        ready_at = sent_at
        ended = False
        self._flights_up += 1
        stream = None
        try:
            provider = await self._provider()
            ready_at = self._clock()  # an engine start is not prompt processing
            stream = provider.stream(request)
            async with asyncio.timeout(cfg.timeout_ms / 1000.0):
                async for event in stream:
                    if isinstance(event, TextDelta):
                        first = first if first is not None else self._clock()
                        text += event.text
            ended = True
        except (UpstreamError, TimeoutError) as exc:
            log.debug("prefill failed: %s", exc)
        finally:
            self._flights_up -= 1
            if stream is not None:
                await _close(stream)
            # The one token comes right after the prompt: the whole request
            # is prompt processing (plus the engine saving its state).
            self.view.record(prompt, text, completed=ended,
                             first_token_s=(first or self._clock()) - ready_at if ended else None,
                             cost=cost, answered=answered)
        return ended

    def _keep_soon(self, prompt: str) -> None:
        """After a stream we closed early, have the engine save the prompt's state.

        The engine saves a state only when a request runs to its end, and
        most completions are closed early (the line or the block is there).
        Without a saved state, coming back to the place recomputes it. The
        prompt is still in the engine's KV cache right after the stream, so
        a one-token request for it costs a few tens of milliseconds; it is
        skipped when a newer request already waits for the engine (that one
        replaces the KV cache anyway). A request that comes while it runs
        waits for it (:meth:`_after_keep`): the engine would interrupt the keep
        for it, and then save nothing.
        """
        async def keep() -> None:
            if self._flights_up:
                return
            self.stats.kept_states += 1
            await self.prefill(prompt, answered=True)

        task = asyncio.get_running_loop().create_task(keep())
        self._keeps.add(task)
        task.add_done_callback(self._keeps.discard)

    async def _after_keep(self) -> None:
        """Wait (briefly) for state saves in progress before sending a request."""
        pending = [t for t in self._keeps if not t.done()]
        if pending:
            await asyncio.wait([asyncio.shield(t) for t in pending], timeout=KEEP_WAIT_S)

    # -- internals ---------------------------------------------------------------
    def _attachable(self, flight: _Flight, ctx: CompletionContext) -> str | None:
        """Characters typed since the flight's context, if ``ctx`` may share it."""
        old = flight.ctx
        # A multi-line flight also serves a single-line request (its first
        # line is what that request would have produced), not the reverse.
        if ctx.multiline and not old.multiline:
            return None
        if (ctx.before and (ctx.before, ctx.after) == (old.before, old.after)
                and (old.prefix.endswith(ctx.prefix) or ctx.prefix.endswith(old.prefix))
                and (old.suffix.startswith(ctx.suffix) or ctx.suffix.startswith(old.suffix))):
            # The same place in the same text: a window of another size (the
            # local engine's budget, e.g. a prefetch made a moment earlier)
            # asks the same question, and its suggestions are cached alike.
            return ""
        if ctx.suffix != old.suffix:
            return None
        if ctx.prefix == old.prefix:
            return ""
        if not flight.sent or not ctx.prefix.startswith(old.prefix):
            return None
        typed = ctx.prefix[len(old.prefix):]
        if flight.text.startswith(typed) and len(flight.text) > len(typed):
            return typed
        return None

    def debounce_delay(self, state: _DocState, ctx: CompletionContext) -> float:
        cfg = self.config
        if ctx.manual:
            return 0.0
        if cfg.debounce_ms is not None:
            return cfg.debounce_ms / 1000.0
        lo, hi = cfg.debounce_min_ms / 1000.0, cfg.debounce_max_ms / 1000.0
        if self.view is not None and ready_at_seam(
                self.view.cost(fim_prompt(ctx)), prompt_tail_tokens(ctx), QUICK_NEW_TOKENS):
            # The local engine has this prompt computed up to the cursor (typing
            # appends to it, or recomputes only the suffix after a key typed in
            # a word): a request that the next key supersedes costs a fraction
            # of a second and no money, so there is no pause to wait for.
            return lo
        if self.view is not None and state.after_pause:
            # The local engine, after a pause: a key that follows soon makes a
            # request that extends this prompt (typing appends to it, see
            # build_context), so what this one computes is reused, and waiting
            # for more keys would only add to the answer's latency.
            return lo
        if not state.gaps:
            return lo  # no typing burst seen: the user has paused
        # Fire only at a real pause: wait a little longer than almost every
        # recent gap between keystrokes (a high quantile, not the median, or
        # a third of ordinary gaps would trigger a request that the next key
        # cancels before its first token).
        recent = sorted(list(state.gaps)[-12:])
        slow_gap = recent[int(GAP_QUANTILE * (len(recent) - 1))]
        last = ctx.prefix[-1:] if ctx.prefix else ""
        # Mid-word the user is likely to keep typing; after punctuation, a
        # space or at a blank line a suggestion is most useful.
        factor = 1.3 if last.isalnum() or last == "_" else 1.1
        if self.view is not None:
            # The local engine: what a request that the next key supersedes has
            # computed is reused by that key's request (the prompt grows at
            # the cursor), so a long wait costs the last key more than a
            # wasted request does. Gaps of reading (a Tab, an answer) must not
            # turn into a 0.6 s wait after every burst (navigation runs).
            return max(lo, min(hi, LOCAL_MAX_DEBOUNCE_S, slow_gap * factor))
        # A slow upstream makes a request that the next key supersedes more
        # wasteful (it is usually cancelled before its first token): wait a
        # little longer for a real pause the slower the first token comes.
        first_token = (
            sum(self._first_tokens) / len(self._first_tokens) if self._first_tokens else 0.0
        )
        factor += min(0.3, 0.25 * first_token)
        delay = slow_gap * factor
        return max(lo, min(hi, delay))

    def _launch(self, state: _DocState, ctx: CompletionContext, *,
                prefetch: bool = False) -> _Flight:
        flight = _Flight(ctx, post_context(ctx),
                         ctx.answer_lead if self.config.mode == "fim" else "")
        flight.prefetch = prefetch
        # A prefetch runs when the warm-up finds the engine idle: no key to wait for
        # (debounced like the typing before it, Tab waited up to 0.6 s for it).
        delay = flight.delay = (self.config.debounce_min_ms / 1000.0 if prefetch
                                else self.debounce_delay(state, ctx))
        flight.task = asyncio.get_running_loop().create_task(self._fly(flight, delay))
        state.flight = flight
        return flight

    async def _fly(self, flight: _Flight, delay: float) -> Suggestion | None:
        try:
            result = await self._fly_inner(flight, delay)
        except asyncio.CancelledError:
            if not flight.answer.done():
                flight.answer.cancel()
            raise
        except Exception:  # a bug here must cost one suggestion, not the server
            log.exception("completion flight failed")
            result = None
        if not flight.answer.done():
            flight.answer.set_result(result)
        return result

    def _maybe_answer_early(self, flight: _Flight, first_token_at: float) -> None:
        if (
            flight.answer.done()
            or not self.config.early_answers
            or not flight.post.multiline
            or self._clock() - first_token_at < EARLY_ANSWER_S
        ):
            return
        text = flight.text
        cut = text.rfind("\n")
        if cut <= 0 or not text[:cut].strip():
            return
        t = time.perf_counter()
        early = postprocess(text[:cut], flight.post, echo_prefix=self.config.mode == "partial")
        flight.post_time += time.perf_counter() - t
        if early is not None and not _ends_open(early.text):
            self.stats.early_answers += 1
            flight.answer.set_result(early)

    async def _fly_inner(self, flight: _Flight, delay: float) -> Suggestion | None:
        if delay > 0:
            # A request waiting out its debounce keeps the engine from being
            # idle: warm-up started now would be in its way when it fires.
            self._debouncing += 1
            try:
                await asyncio.sleep(delay)
            finally:
                self._debouncing -= 1
        if not self.health.acquire(manual=flight.ctx.manual):
            self.stats.skipped_backoff += 1
            self._paused(self.health.message())
            return None
        cfg = self.config
        blocks = (partial_blocks(flight.ctx)
                  if cfg.mode == "partial" and cfg.context_cache != "implicit" else None)
        if blocks is not None and not self.explicit_cache.use_blocks(
                flight.ctx.uri, flight.ctx.prefix_start_line, blocks):
            blocks = None
        request = self._request(flight.ctx, blocks, NO_MARKS)
        self.budget.per_minute = cfg.max_tokens_per_minute or None
        need = _prompt_estimate(request) + request.max_tokens
        reservation = self.budget.reserve(need)
        if reservation is None:
            self.health.release()
            self.stats.skipped_budget += 1
            self._paused(self.budget.message(need))
            return None
        plan = NO_MARKS
        if blocks is not None:
            self.explicit_cache.force = cfg.context_cache == "explicit"
            plan = self.explicit_cache.plan(flight.ctx.uri, blocks, self._clock(),
                                            flight.ctx.prefix_start_line)
            request = self._request(flight.ctx, blocks, plan)
        await self._after_keep()
        flight.sent = True
        self.stats.upstream_requests += 1
        usage: Usage | None = None
        sent_at = self._clock()
        first_token: float | None = None
        ready_at = sent_at
        error: UpstreamError | None = None
        timed_out = False
        ended = False  # the stream ran to its end (the local engine then saves its state)
        stream = None
        cost = self.view.cost(request.prompt) if self.view and request.prompt else None
        self._flights_up += 1
        try:
            provider = await self._provider()
            ready_at = self._clock()  # an engine start is not prompt processing
            stream = provider.stream(request)
            async with asyncio.timeout(cfg.timeout_ms / 1000.0):
                async for event in stream:
                    if isinstance(event, TextDelta):
                        if first_token is None:
                            first_token = self._clock()
                        flight.text += event.text
                        if stream_should_stop(flight.text, flight.post):
                            self.stats.early_stops += 1
                            break
                        self._maybe_answer_early(flight, first_token)
                    elif isinstance(event, Usage):
                        usage = event
                else:
                    ended = True
        except TimeoutError:
            self.stats.timeboxed += 1
            timed_out = True
            if first_token is None:
                # Not a single token in the whole time box: the upstream is
                # hanging, which the user and the breaker must hear about.
                error = UpstreamError(
                    "timeout", f"No answer from the upstream within {cfg.timeout_ms} ms "
                    "(qwen.timeoutMs).")
            else:
                self.stats.record_error("timeout")
                if self._on_timeout:
                    self._on_timeout(cfg.timeout_ms)
                if not cfg.partial_on_timeout:
                    flight.text = ""
                    error = UpstreamError(
                        "timeout", f"The answer was not complete within {cfg.timeout_ms} ms "
                        "(qwen.timeoutMs); nothing was printed.")
                flight.text = _complete_lines(flight.text, flight.post.multiline)
        except UpstreamError as exc:
            error = exc
        finally:
            self._flights_up -= 1
            if stream is not None:
                await _close(stream)
            if flight.text == flight.lead:
                flight.text = ""  # the model wrote nothing
            written = flight.text[len(flight.lead):] if flight.text else ""
            if cost is not None and self.view is not None and request.prompt:
                self.view.record(request.prompt, written, completed=ended,
                                 first_token_s=None if first_token is None
                                 else first_token - ready_at, cost=cost)
                if not ended and first_token is not None and not timed_out:
                    self._keep_soon(request.prompt)
            self.health.release()
            self._account(request, written, usage, plan, reservation)
        if error is not None:
            if not (timed_out and first_token is not None):  # counted above
                self.stats.record_error(error.kind)
            if first_token is None:
                self.health.failure(error)
            if self._on_error:
                self._on_error(error)
            if error.kind != "protocol" or not flight.text:
                return None
        elif timed_out:
            pass  # a slow answer is not a broken upstream: no breaker, no "healthy" either
        else:
            self.health.success()
            if self._on_success:
                self._on_success()
        elapsed = self._clock() - sent_at
        if first_token is not None:
            self._first_tokens.append(first_token - sent_at)
        self.stats.record_upstream(
            elapsed, None if first_token is None else first_token - sent_at
        )
        t = time.perf_counter()
        suggestion = postprocess(
            flight.text, flight.post, echo_prefix=self.config.mode == "partial"
        )
        flight.post_time += time.perf_counter() - t
        if suggestion is None and error is None and not timed_out and cfg.second_tries:
            # Counted as a stream from here: a warm-up step started while the
            # tokenizer is asked would take the KV cache from the second try.
            self._flights_up += 1
            try:
                suggestion = await self._maybe_second_try(flight, request, sent_at)
            finally:
                self._flights_up -= 1
        t = time.perf_counter()
        if timed_out:
            pass  # a cut-off answer is neither the model's suggestion nor "nothing"
        elif suggestion is not None:
            self.cache.put(*_cache_key(flight.ctx), suggestion)
        elif error is None:
            # The model had nothing useful here: remember that, so asking
            # again at the same place (editors re-ask on cursor moves and
            # focus) costs no upstream call.
            self.cache.put(*_cache_key(flight.ctx), NOTHING)
        flight.post_time += time.perf_counter() - t
        if log.isEnabledFor(logging.DEBUG):
            log.debug("flight: %s", _trace(flight, cost, delay, sent_at, first_token,
                                           self._clock(), suggestion))
        return suggestion

    async def _maybe_second_try(self, flight: _Flight, request: UpstreamRequest,
                                sent_at: float) -> Suggestion | None:
        """Ask again for an answer that was dropped, when another is worth having.

        While typing: once, at a blank line where the model copied the line
        below. Asked for by hand (the CLI, an invoked completion) the user wants
        a suggestion where the cursor is, so each dropped answer's first token of
        its own is forbidden in turn: the model's next choice each time, up to
        MANUAL_TRIES answers in MANUAL_RETRY_S. In the middle of a line of
        code an answer forced out of the model would be glued into that code
        ("b.denominator.numerator"): there the rest of the line is rewritten
        instead (:meth:`_rewrite_rest_of_line`).
        """
        manual = flight.ctx.manual and _room_for_a_line(flight.post)
        deadline = self._clock() + MANUAL_RETRY_S
        if self.config.manual_budget_s is not None:
            deadline = min(deadline, sent_at + self.config.manual_budget_s)
        written = flight.text[len(flight.lead):]
        rewrite = flight.ctx.manual and not manual
        if not manual and not rewrite and next_line_copy_split(written, flight.post) is None:
            return None
        provider = await self._provider_or_none()
        as_words = provider is None or await _token_ids(provider, "\n") is None
        if rewrite:
            return await self._rewrite_rest_of_line(flight, request, provider, as_words,
                                                    sent_at, deadline)
        bias: dict[str, float] = {}
        enter = ""
        for _ in range(MANUAL_TRIES if manual else 1):
            more = await self._forbidden(provider, written, flight, manual, as_words)
            if (not enter and manual and request.prompt and written.strip()
                    and written[:1] not in ("\n", "\r") and _enter_lead(flight.post)):
                # At the end of a finished line the model went on with the line
                # (a trailing comment, then the line below): ask for a line of
                # its own.
                enter = _enter_lead(flight.post)
            elif not more or more.keys() <= bias.keys():
                return None  # nothing new to forbid: the same answer would come
            bias.update(more)
            if manual and self._clock() >= deadline:
                return None
            suggestion, answer = await self._second_try(flight, request, bias, as_words,
                                                        sent_at, enter, deadline)
            if suggestion is not None or answer is None or self._clock() >= deadline:
                return suggestion
            written = answer
        return None

    async def _rewrite_rest_of_line(self, flight: _Flight, request: UpstreamRequest,
                                    provider: Any, as_words: bool, sent_at: float,
                                    deadline: float) -> Suggestion | None:
        """Asked for by hand in the middle of a line of code, where nothing
        was to be added (the line is complete as it stands): the model's next
        choice for the rest of the line, as a suggestion that replaces it.

        The prompt loses the rest of the line, so the model writes a whole
        rest of its own instead of text glued in front of the code that stays
        ("b.denominator.numerator"). Its first choice would be the code that
        is there: the token that code starts with is forbidden from the start,
        then each dropped answer's first token in turn, as at a line end.
        """
        ctx = flight.ctx
        nl = ctx.suffix.find("\n")
        cut = len(ctx.suffix) if nl < 0 else nl
        rest = ctx.suffix[:cut]
        if (provider is None or self.config.mode != "fim" or not request.prompt
                or not rest.strip() or not ctx.fim_suffix.startswith(rest)):
            return None
        shorter = dataclasses.replace(ctx, suffix=ctx.suffix[cut:],
                                      fim_suffix=ctx.fim_suffix[cut:], multiline=False)
        retry = self._request(shorter, None, NO_MARKS)
        alone = _Flight(shorter, post_context(shorter), flight.lead)
        there = rest.rstrip("\r")
        written = there
        bias: dict[str, float] = {}
        for _ in range(MANUAL_TRIES):
            more = await self._forbidden(provider, written, alone, True, as_words)
            if not more or more.keys() <= bias.keys() or self._clock() >= deadline:
                return None
            bias.update(more)
            suggestion, answer = await self._second_try(alone, retry, bias, as_words,
                                                        sent_at, "", deadline)
            if answer is None:
                return None
            if (suggestion is not None and suggestion.text.strip() != there.strip()
                    and fits_as_rewrite(suggestion.text, flight.post)):
                return Suggestion(suggestion.text, len(there))
            written = answer
        return None

    async def _provider_or_none(self) -> Any:
        try:
            return await self._provider()
        except UpstreamError:
            return None

    async def _forbidden(self, provider: Any, written: str, flight: _Flight, manual: bool,
                         as_words: bool) -> dict[str, float]:
        """What a retry forbids after the dropped answer ``written``: token ids
        (or, ``as_words``, strings the engine tokenizes itself). ``manual``:
        asked for by hand where a line can be written in."""
        split = next_line_copy_split(written, flight.post, anywhere=manual)
        if split is not None:
            # A copy of the code below: the token where it parts from the lines above.
            line, at, word = split
            if as_words:
                return dict.fromkeys((word, " " + word), -100.0)
            token = await _token_covering(provider, line, at)
            return {} if token is None else {str(token): -100.0}
        if not manual:
            return {}
        if not written.strip():
            # The model ended at once: its best answer that is not "nothing".
            if as_words:
                return dict.fromkeys(QWEN_SPECIAL_TOKENS, -100.0)
            ids = [await _token_ids(provider, name) for name in QWEN_SPECIAL_TOKENS]
            return {str(t[0]): -100.0 for t in ids if t is not None and len(t) == 1}
        # Dropped for another reason (a copy bent out of shape, a header with
        # no body, text that breaks the line): the answer's first own token.
        at = len(written) - len(written.lstrip())
        if as_words:
            word = _FIRST_WORD.match(written, at)
            return {} if word is None else dict.fromkeys(
                (word.group(), " " + word.group()), -100.0)
        token = await _token_covering(provider, written, at)
        if token is None:
            return {}
        # The answer may have ended with a token that held the line break the
        # engine's stop then took away (":" was ":\n"): that one as well.
        joined = await _token_covering(provider, written + "\n", at)
        return {str(t): -100.0 for t in (token, joined) if t is not None}

    async def _second_try(self, flight: _Flight, request: UpstreamRequest,
                          bias: dict[str, float], as_words: bool,
                          sent_at: float, enter: str = "",
                          deadline: float | None = None) -> tuple[Suggestion | None, str | None]:
        """Ask the local engine once more with ``bias`` (see
        :meth:`_forbidden`): token ids, or ``as_words`` strings that
        llama-cpp-python's server tokenizes itself. Returns the suggestion, and
        what the model wrote (for the next try when it is dropped; None when
        the try failed). ``enter``: a line break and indentation that the
        answer starts with (the prompt is extended by it)."""
        cfg = self.config
        left = cfg.timeout_ms / 1000.0 - (self._clock() - sent_at)
        if left <= 0.5:
            return None, None
        if deadline is not None and flight.ctx.manual:
            left = min(left, deadline + SECOND_TRY_GRACE_S - self._clock())
        # One line: the missing one. (A block here once streamed for 4.5 s.)
        post = dataclasses.replace(flight.post, multiline=False)
        retry = UpstreamRequest(
            prompt=request.prompt + enter, messages=request.messages,
            max_tokens=min(request.max_tokens, SINGLE_LINE_MAX_TOKENS),
            temperature=request.temperature, stop=list(request.stop),
            extra={**request.extra, "logit_bias": bias,
                   **({"logit_bias_type": "tokens"} if as_words else {})})
        self.stats.second_tries += 1
        self.stats.upstream_requests += 1
        lead = flight.lead + enter
        text = lead
        first: float | None = None
        ended = False
        cost = self.view.cost(retry.prompt) if self.view and retry.prompt else None
        started = self._clock()
        stream = None
        self._flights_up += 1
        try:
            provider = await self._provider()
            started = self._clock()
            stream = provider.stream(retry)
            async with asyncio.timeout(left):
                async for event in stream:
                    if isinstance(event, TextDelta):
                        first = first if first is not None else self._clock()
                        text += event.text
                        if stream_should_stop(text, post):
                            break
                else:
                    ended = True
        except (UpstreamError, TimeoutError) as exc:
            log.debug("second try failed: %s", exc)
            return None, None
        finally:
            self._flights_up -= 1
            if stream is not None:
                await _close(stream)
            if cost is not None and self.view is not None and retry.prompt:
                self.view.record(retry.prompt, text[len(lead):], completed=ended,
                                 first_token_s=None if first is None else first - started,
                                 cost=cost)
        t = time.perf_counter()
        suggestion = postprocess(text, post, echo_prefix=cfg.mode == "partial")
        if suggestion is not None and (swaps_one_word(suggestion.text, flight.text)
                                       or swaps_one_word(suggestion.text, flight.post.suffix)):
            suggestion = None  # the code below bent out of shape
        flight.post_time += time.perf_counter() - t
        if suggestion is not None:
            self.stats.second_try_answers += 1
        log.debug("second try without %r: %r -> %r", list(bias), text[:80],
                  None if suggestion is None else suggestion.text[:80])
        return suggestion, text[len(lead):]

    def _request(
        self, ctx: CompletionContext, blocks: PartialBlocks | None, plan: CachePlan
    ) -> UpstreamRequest:
        cfg = self.config
        return build_request(
            ctx,
            mode=cfg.mode,
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            extra_stop=cfg.stop,
            extra_body=cfg.extra_body,
            blocks=blocks,
            marks=plan.marks,
            next_line=cfg.next_line,
        )

    def _paused(self, message: str) -> None:
        """Tell the editor why nothing comes (its status, not a message)."""
        if message and self._on_paused is not None:
            self._on_paused(message)

    def _account(
        self, request: UpstreamRequest, text: str, usage: Usage | None, plan: CachePlan,
        reservation: Any,
    ) -> None:
        now = self._clock()
        self.explicit_cache.finished(plan, usage, now)
        estimated = usage is None
        if usage is None:
            # The stream was closed before the usage frame, or the server sends
            # none: count with the calibrated estimate and say so in the stats.
            usage = Usage(_prompt_estimate(request), estimate_tokens(text))
            self.stats.estimated_usage += 1
        self.stats.prompt_tokens += usage.prompt_tokens
        self.stats.completion_tokens += usage.completion_tokens
        if not estimated:
            self.stats.cached_tokens += usage.cached_tokens
        self.stats.record_usage(usage, self.config.price, now)
        TokenBudget.settle(reservation, usage.prompt_tokens + usage.completion_tokens)


def _room_for_a_line(post: PostContext) -> bool:
    """The cursor is where a suggestion can be written in: before the code of
    its line, or after it with at most closers and punctuation to its right."""
    return not post.line_prefix.strip() or not post.line_suffix.strip(" \t\r)]};:,'\"")


def _enter_lead(post: PostContext) -> str:
    """At the end of a finished line: a line break ("" elsewhere). The model
    writes the indentation: spaces glue to the word after them in its tokens,
    so a prompt that ended with them would get one space too many."""
    if not ends_finished_line(post.line_prefix, post.line_suffix):
        return ""
    return "\n"


async def _token_ids(provider: Any, text: str) -> list[int] | None:
    """``text`` in the engine's tokens, where its server can say (llama-cpp-python)."""
    ask = getattr(provider, "token_ids", None)
    return None if ask is None else await ask(text)


async def _token_covering(provider: Any, text: str, at: int) -> int | None:
    """The engine's token that covers ``text[at]``, where its server can say."""
    ask = getattr(provider, "token_covering", None)
    return None if ask is None else await ask(text, at)


def _prompt_estimate(request: UpstreamRequest) -> int:
    """Estimated input tokens of ``request`` (text of every content block)."""
    if request.prompt is not None:
        return estimate_tokens(request.prompt)
    total = 0
    for message in request.messages or []:
        content = message.get("content")
        if isinstance(content, str):
            total += estimate_tokens(content)
        elif isinstance(content, list):
            total += sum(estimate_tokens(str(b.get("text", ""))) for b in content
                         if isinstance(b, dict))
    return total


_OPENERS = ":{([,\\=+-*/|&<>"
_PAIRS = {")": "(", "]": "[", "}": "{"}


def _ends_open(text: str) -> bool:
    """Would showing ``text`` alone leave a block or bracket open?

    An early answer that stops after ``for x in y:`` or inside a call breaks
    the code it lands in; those wait for the flight to finish instead.
    """
    last = text.rstrip().rsplit("\n", 1)[-1].rstrip()
    if last.endswith(tuple(_OPENERS)):
        return True
    depth = 0
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in _PAIRS:
            depth -= 1
    return depth > 0


def _cache_key(ctx: CompletionContext) -> tuple[str, str]:
    """The document text around the cursor (the window's, for hand-made contexts)."""
    return (ctx.before or ctx.prefix, ctx.after or ctx.suffix)


def _complete_lines(text: str, multiline: bool) -> str:
    """After a time box, keep only whole lines when there is at least one."""
    if "\n" not in text.strip("\n"):
        return text
    return text[: text.rfind("\n")] if multiline else text


async def _close(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        return
    with contextlib.suppress(Exception):  # closing must never mask the result
        await aclose()


def _trace(flight: _Flight, cost: Cost | None, delay: float, sent_at: float,
           first_token: float | None, done_at: float, suggestion: Suggestion | None) -> str:
    """One debug line per flight: the window, what it was expected to cost, what came.

    The place is given by line and column only; the texts are cut short.
    """
    ctx = flight.ctx
    line = ctx.prefix_start_line + ctx.prefix.count("\n")
    parts = [f"{ctx.path}:{line + 1}:{len(ctx.line_prefix) + 1}",
             f"prefix {len(ctx.prefix)} suffix {len(ctx.suffix)} chars"]
    if cost is not None:
        parts.append(f"prompt ~{cost.prompt_tokens} tok, ~{cost.new_tokens} new "
                     f"({cost.source}{', answered' if cost.answered else ''})")
    parts.append(f"debounce {delay:.2f}s")
    parts.append("first token " + ("-" if first_token is None
                                   else f"{first_token - sent_at:.2f}s"))
    parts.append(f"total {done_at - sent_at:.2f}s")
    parts.append(f"raw {flight.text[:80]!r}")
    parts.append(f"shown {None if suggestion is None else suggestion.text[:80]!r}")
    return "; ".join(parts)
