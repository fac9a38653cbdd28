"""What the local engine has already computed, and what a prompt would cost.

On a CPU the engine's prompt processing is the physical limit (about 60-90
tokens/s on 2 cores): a prompt costs the tokens that are *not* already in its
KV cache. llama-cpp-python keeps one sequence in its KV cache and, with
``--cache true --cache_type ram``, saves the state of every request that ran to
its end and restores the saved state with the longest common prefix when that
beats the live KV cache. :class:`EngineView` mirrors both from the requests we
send, so the prompt budget can ask "how many new tokens would this prompt
cost?" before sending it, and measures the engine's prompt throughput from the
requests themselves.

Pure bookkeeping: no I/O, no LSP or HTTP types.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qwen_lsp.context import CompletionContext, estimate_tokens
from qwen_lsp.prompts import fim_prompt

log = logging.getLogger("qwen_lsp")

# Bytes of engine state per token of Qwen2.5-Coder-0.5B (24 layers, 2 KV heads
# of 64, f16 K and V), and per logits row (151,936 floats) a saved state keeps
# (one: local_child trims the rest): what one state costs the engine's RAM cache.
STATE_BYTES_PER_TOKEN = 24 * 2 * 2 * 64 * 2
LOGITS_ROW_BYTES = 151_936 * 4
# A first guess until the engine has been measured (2 cores, AVX2, busy).
DEFAULT_TOKENS_PER_S = 50.0
# Throughput samples need enough new tokens to say something.
MIN_SAMPLE_TOKENS = 24
# Time per request besides prompt processing: HTTP, state restore, the first
# sampled token. Subtracted from the time to the first token before dividing.
REQUEST_OVERHEAD_S = 0.08
EWMA_WEIGHT = 0.3
MAX_SPEEDUP = 1.5  # a sample counts for at most this times the current speed
# The engine's RAM cache of saved states (its --cache_size), counted honestly:
# see providers/local_child.py. Each state of a place costs its KV cells
# (12 kB a token for the 0.5B model) plus the logits row of its last token.
STATE_CACHE_BYTES = 1 << 30
SAVED_LOGITS_ROWS = 1
# Prompt tokens per decode call. Two runs of bench/engine_settings.py on this
# CPU (2026-12-01/02) disagree: 64 was the fastest for 1,400 tokens in one (86
# tokens/s against 72-86), 256 and 512 with flash attention in the other (85-89
# against 76); no setting wins by more than the noise between runs, and 64
# keeps llama-cpp-python's logits buffer per context small (BENCHMARKS.md,
# "Engine settings").
N_BATCH = 64


def common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix, by bisection over C-level slice compares."""
    hi = min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    lo = 0  # a[:lo] == b[:lo] holds; a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True, slots=True)
class Cost:
    """What one prompt would cost the engine now."""

    prompt_tokens: int
    cached_tokens: int
    source: str  # "kv", "saved" or "none": where the reused prefix would come from
    cached_chars: int = 0
    # The reused prefix comes from a request's answer (not only a warm-up pre-fill).
    answered: bool = False

    @property
    def new_tokens(self) -> int:
        return max(0, self.prompt_tokens - self.cached_tokens)


class EngineView:
    """Our copy of the engine's KV cache, its saved states, and its speed.

    ``capacity_bytes`` mirrors the engine's ``--cache_size``; saved states are
    forgotten in the engine's order (least recently used first).
    """

    def __init__(self, capacity_bytes: int, *, logits_rows: int = SAVED_LOGITS_ROWS,
                 max_states: int = 256) -> None:
        self.capacity_bytes = capacity_bytes
        self.logits_rows = logits_rows
        self.max_states = max_states
        self.kv = ""  # the sequence in the live KV cache: last prompt + what it generated
        self.kv_answered = False  # ... left there by a request (not a pre-fill)
        self._answered: set[str] = set()  # saved states left by requests
        self._saved: OrderedDict[str, int] = OrderedDict()  # text -> estimated bytes
        self.tokens_per_s = DEFAULT_TOKENS_PER_S
        self.measured = False
        self.samples = 0
        self.reused_tokens = 0  # estimated prompt tokens served from KV or saved states
        self.computed_tokens = 0  # estimated prompt tokens the engine had to process
        self.restores = 0  # requests expected to restore a saved state

    # -- questions -------------------------------------------------------------
    def cost(self, prompt: str) -> Cost:
        kv = common_prefix_len(prompt, self.kv)
        best, source, answered = kv, "kv" if kv else "none", self.kv_answered
        head = prompt[:64]
        for text in self._saved:
            if not text.startswith(head[: min(len(head), len(text))]):
                continue
            n = common_prefix_len(prompt, text)
            if n > best:
                best, source, answered = n, "saved", text in self._answered
        # A partial token at the seam is recomputed: count whole tokens only.
        total = estimate_tokens(prompt)
        cached = min(total, max(0, estimate_tokens(prompt[:best]) - (0 < best < len(prompt))))
        return Cost(total, cached, source, best, answered and best > 0)

    def seconds(self, new_tokens: int) -> float:
        return new_tokens / max(1.0, self.tokens_per_s)

    def budget_tokens(self, seconds: float) -> int:
        """New prompt tokens that fit in ``seconds`` of prompt processing."""
        return int(seconds * self.tokens_per_s)

    @property
    def saved_states(self) -> int:
        return len(self._saved)

    @property
    def saved_bytes(self) -> int:
        return sum(self._saved.values())

    # -- what happened -----------------------------------------------------------
    def record(self, prompt: str, output: str, *, completed: bool,
               first_token_s: float | None, cost: Cost | None = None,
               answered: bool = True) -> None:
        """A request ran: update the KV copy, the saved states and the throughput.

        ``completed``: the stream ended by itself, so the engine saved its state
        (it does not when the client closes the stream early).
        ``cost``: what :meth:`cost` said before it was sent (for the throughput).
        ``answered``: a completion request (False: a warm-up pre-fill).
        """
        cost = cost or self.cost(prompt)
        if cost.source == "saved":
            self.restores += 1
            self._touch(prompt)
        self.reused_tokens += cost.cached_tokens
        self.computed_tokens += cost.new_tokens
        self.kv = prompt + output
        self.kv_answered = answered
        if completed:
            self._save(self.kv, answered)
        if first_token_s is not None and cost.new_tokens >= MIN_SAMPLE_TOKENS:
            busy = max(0.01, first_token_s - REQUEST_OVERHEAD_S)
            self.observe(cost.new_tokens, busy)

    def observe(self, tokens: int, seconds: float) -> None:
        """One throughput sample: ``tokens`` prompt tokens processed in ``seconds``.

        A sample far above the current speed is much more likely a prompt the
        engine had cached beyond what this view knows (a state it saved from a
        stream we closed early, say) than a faster CPU: it moves the average
        by at most MAX_SPEEDUP per sample. One such sample (1,441 tokens/s
        against 300) once made the next request take a 764-token window and
        5.6 s. Slow samples count in full: a busy machine is slow for real.
        """
        rate = tokens / max(0.01, seconds)
        if not self.measured:
            self.tokens_per_s = rate
            self.measured = True
        else:
            rate = min(rate, self.tokens_per_s * MAX_SPEEDUP)
            self.tokens_per_s += EWMA_WEIGHT * (rate - self.tokens_per_s)
        self.samples += 1

    def forget(self) -> None:
        """The engine restarted: nothing is cached any more (speed is kept)."""
        self.kv = ""
        self.kv_answered = False
        self._saved.clear()
        self._answered.clear()

    def state_bytes(self, text: str) -> int:
        tokens = estimate_tokens(text)
        return tokens * STATE_BYTES_PER_TOKEN + min(tokens, self.logits_rows) * LOGITS_ROW_BYTES

    def _save(self, text: str, answered: bool = True) -> None:
        # As the engine's cache does (local_child): states that the new one
        # extends are dropped.
        for old in [t for t in self._saved if text.startswith(t)]:
            del self._saved[old]
            self._answered.discard(old)
        self._saved[text] = self.state_bytes(text)
        if answered:
            self._answered.add(text)
        while self._saved and (
            sum(self._saved.values()) > self.capacity_bytes or len(self._saved) > self.max_states
        ):
            self._answered.discard(self._saved.popitem(last=False)[0])

    def _touch(self, prompt: str) -> None:
        """The engine restores the saved state with the longest common prefix and
        moves it to the recent end; mirror that so evictions stay in step."""
        best, key = 0, None
        for text in self._saved:
            n = common_prefix_len(prompt, text)
            if n > best:
                best, key = n, text
        if key is not None and best > common_prefix_len(prompt, self.kv):
            self._saved.move_to_end(key)

    def describe(self) -> dict[str, object]:
        return {
            "promptTokensPerSecond": round(self.tokens_per_s, 1),
            "throughputMeasured": self.measured,
            "throughputSamples": self.samples,
            "kvCacheTokens": estimate_tokens(self.kv),
            "savedStates": self.saved_states,
            "savedStateBytes": self.saved_bytes,
            "reusedPromptTokens": self.reused_tokens,
            "computedPromptTokens": self.computed_tokens,
            "stateRestores": self.restores,
        }


# The first answer at a new place should need about this much prompt processing.
TARGET_PROMPT_S = 1.0
# At a place the engine has already computed (typing, Tab, a revisit, after the
# warm-up) an answer should need no more than this much.
QUICK_PROMPT_S = 0.15
# A window only the warm-up has filled gives way to one more than this many
# times larger that fits the first-answer budget.
GROWTH_WORTH_PAYING = 2
# Smallest window offered (a few lines around the cursor).
MIN_CONTEXT_TOKENS = 96


def candidate_budgets(full_tokens: int) -> list[int]:
    """Context budgets to try, largest first: the full budget, ¾ of it, ½, ⅜, ¼, …

    Halves alone were too coarse for the first window at a new place: with about
    330 new tokens a second, 384 tokens did not fit and 192 did, which cost 10-13
    points of exact match on the quality tasks (bench/quality.py, 30 whole lines,
    three runs each: 16.7 % with halves, 26.7-30.0 % with this ladder, 1.1 s
    instead of 0.8 s to the answer).
    """
    out: list[int] = []
    b = full_tokens
    while b > MIN_CONTEXT_TOKENS:
        out.append(b)
        if b * 3 // 4 > MIN_CONTEXT_TOKENS:
            out.append(b * 3 // 4)
        b //= 2
    out.append(min(full_tokens, MIN_CONTEXT_TOKENS))
    return out


def ready_at_seam(cost: Cost, tail: int | None, quick: int) -> bool:
    """The prompt is computed but for ``quick`` tokens, not counting its ``tail``
    (the tokens from ``<|fim_suffix|>`` on, which any keystroke at the cursor
    recomputes; see :func:`pick_budget`)."""
    if cost.new_tokens <= quick:
        return True
    if tail is None:
        return False
    head = max(0, cost.prompt_tokens - tail)
    return head - cost.cached_tokens <= quick and 2 * cost.cached_tokens >= head


def pick_budget(budgets: Sequence[int], costs: Sequence[Cost], *, quick: int,
                limit: int, tails: Sequence[int] | None = None) -> int:
    """Index of the window to send, ``budgets`` largest first with what each
    prompt would cost the engine.

    A window a request at this place was answered with, and that is (nearly)
    computed still, is sent as it is: typing, Tab and revisits are answered
    without waiting for more context, and the warm-up grows it while the user
    pauses. A window only the warm-up has filled is sent unless one more than
    GROWTH_WORTH_PAYING times its size fits ``limit`` new tokens (the first
    request after a short pause at a new place gets the context a second buys).
    With nothing computed, the largest window whose prompt fits ``limit``;
    with nothing fitting, the smallest.

    ``tails``: per window, the prompt tokens after the cursor's seam (the
    suffix and the middle). A key typed in a word or Enter moves the seam, so
    they are computed again at every keystroke in any window; a window whose
    prompt *before* them is (nearly) computed is as ready as a window can be.
    Without this a keystroke looked like a recompute, and the request took a
    larger window that really was one (0.6 s instead of 0.35 s, navigation
    run of 2026-12-02).
    """
    fits = next((i for i, c in enumerate(costs) if c.new_tokens <= limit), len(costs) - 1)

    ready = next((i for i, c in enumerate(costs)
                  if ready_at_seam(c, None if tails is None else tails[i], quick)), None)
    if ready is None:
        return fits
    if costs[ready].answered or budgets[fits] <= GROWTH_WORTH_PAYING * budgets[ready]:
        return ready
    return fits


def prompt_tail_tokens(ctx: CompletionContext) -> int:
    """Tokens of ``ctx``'s prompt from ``<|fim_suffix|>`` on (suffix, middle, markers)."""
    return estimate_tokens(ctx.fim_suffix) + estimate_tokens(ctx.fim_middle) + 2


def fit_context(build: Callable[[int], CompletionContext], view: EngineView,
                full_tokens: int, seconds: float = TARGET_PROMPT_S,
                quick_seconds: float = QUICK_PROMPT_S) -> CompletionContext:
    """The context to send at a place, chosen by :func:`pick_budget` from what
    the engine has computed and how fast it computes the rest."""
    budgets = candidate_budgets(full_tokens)
    contexts = [build(b) for b in budgets]
    costs = [view.cost(fim_prompt(c)) for c in contexts]
    # The quick limit never falls below a few tokens: typing a key or Enter
    # adds one or two, and a slow estimate must not turn them into a recompute.
    quick = max(8, view.budget_tokens(quick_seconds))
    limit = view.budget_tokens(seconds)
    tails = [prompt_tail_tokens(c) for c in contexts]
    chosen = pick_budget(budgets, costs, quick=quick, limit=limit, tails=tails)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("window: %s -> %d (quick %d, limit %d new tokens)", ", ".join(
            f"{b}: ~{c.new_tokens}/{c.prompt_tokens} new ({c.source}"
            f"{', answered' if c.answered else ''})" for b, c in zip(budgets, costs, strict=True)),
            budgets[chosen], quick, limit)
    return contexts[chosen]


class WindowStarts:
    """Where the windows sent to the engine started, per document, found again by text.

    A window's start moves with its budget's edge: a line or two lower (Enter,
    a revisit below the line left) can put it at the next anchor line, and then
    nothing of the window is cached. Remembering the starts sent lets a window
    begin where an earlier one began, if that is only a little above its own
    start. Starts are keyed by the text that follows them, so edits elsewhere
    need no bookkeeping.
    """

    KEY_CHARS = 160

    def __init__(self, per_document: int = 64) -> None:
        self.per_document = per_document
        self._starts: dict[str, OrderedDict[str, None]] = {}

    def remember(self, uri: str, text: str, start: int) -> None:
        key = text[start:start + self.KEY_CHARS]
        if not key:
            return
        starts = self._starts.setdefault(uri, OrderedDict())
        starts[key] = None
        starts.move_to_end(key)
        while len(starts) > self.per_document:
            starts.popitem(last=False)

    def near(self, uri: str, text: str, start: int, max_chars: int) -> int | None:
        """The nearest remembered line start above ``start`` (a line start) and at
        most ``max_chars`` before it; None when ``start`` itself was sent or
        nothing near was."""
        starts = self._starts.get(uri)
        if not starts:
            return None
        pos = start
        while True:
            if text[pos:pos + self.KEY_CHARS] in starts:
                return None if pos == start else pos
            if pos <= 0:
                return None
            pos = text.rfind("\n", 0, pos - 1) + 1
            if start - pos > max_chars:
                return None

    def forget(self, uri: str) -> None:
        self._starts.pop(uri, None)
