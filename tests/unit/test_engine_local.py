"""Scheduling rules of the engine that apply to the local engine only (a view is set)."""

from __future__ import annotations

import asyncio
import time

from qwen_lsp.context import build_context
from qwen_lsp.engine import Engine, EngineConfig, _DocState
from qwen_lsp.prompt_cache import EngineView
from qwen_lsp.prompts import fim_prompt

TEXT = "".join(f"value_{i} = compute({i})\n" for i in range(60)) + "total = \n"


def _ctx(text: str = TEXT):
    return build_context(text, len(text) - 1, uri="file:///a.py", path="a.py",
                         language="python", version=1, context_tokens=256)


def _engine(view: EngineView | None) -> Engine:
    async def no_provider():
        # No upstream: a flight that outlives its debounce fails here, and the
        # engine turns that into "no suggestion" (these tests look at timing only).
        raise AssertionError("no upstream here")

    return Engine(EngineConfig(), no_provider, view=view)


def _typing() -> _DocState:
    state = _DocState()
    state.gaps.extend([0.15] * 12)  # a burst of keys 150 ms apart
    state.after_pause = False  # ... and this request is one of them
    return state


def test_a_prompt_the_local_engine_has_computed_is_sent_without_waiting_for_a_pause() -> None:
    ctx = _ctx()
    view = EngineView(1 << 30)
    engine = _engine(view)
    cfg = engine.config
    waited = engine.debounce_delay(_typing(), ctx)
    assert waited > cfg.debounce_min_ms / 1000.0  # nothing computed: wait for the pause
    view.record(fim_prompt(ctx)[:-3], "", completed=True, first_token_s=None)
    assert engine.debounce_delay(_typing(), ctx) == cfg.debounce_min_ms / 1000.0
    # A remote upstream (no view) always waits for the pause.
    assert _engine(None).debounce_delay(_typing(), ctx) == waited


def test_after_a_pause_the_local_engine_gets_the_request_at_once() -> None:
    ctx = _ctx()  # nothing of it computed
    cfg = EngineConfig()
    paused = _typing()
    paused.after_pause = True  # Enter after reading: earlier bursts are in the gaps
    burst = _typing()
    local = _engine(EngineView(1 << 30))
    assert local.debounce_delay(paused, ctx) == cfg.debounce_min_ms / 1000.0
    assert local.debounce_delay(burst, ctx) > cfg.debounce_min_ms / 1000.0
    # A remote upstream waits for the burst's pattern either way.
    assert _engine(None).debounce_delay(paused, ctx) == local.debounce_delay(burst, ctx)


async def test_the_gap_before_a_request_tells_a_pause_from_a_burst() -> None:
    clock = [100.0]
    engine = Engine(EngineConfig(), _engine(None)._provider, clock=lambda: clock[0])
    ctx = _ctx()
    states = []
    for gap in (0.0, 0.15, 0.8):
        clock[0] += gap
        task = asyncio.ensure_future(engine.complete(ctx))
        await asyncio.sleep(0)
        states.append(engine._docs[ctx.uri].after_pause)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert states == [True, False, True]


async def test_a_request_waiting_out_its_debounce_keeps_the_engine_busy() -> None:
    engine = _engine(EngineView(1 << 30))
    assert engine.idle
    task = asyncio.ensure_future(engine.complete(_ctx()))
    for _ in range(50):
        if not engine.idle:
            break
        await asyncio.sleep(0.001)
    assert not engine.idle  # the warm-up must not start a pre-fill now
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert engine.idle


class _Hanging:
    """An upstream that accepts a request and never answers (the engine is busy)."""

    def __init__(self) -> None:
        self.streams = 0

    async def stream(self, request):
        self.streams += 1
        await asyncio.Event().wait()
        yield  # pragma: no cover - never reached


async def _in_flight(engine: Engine, ctx, *, prefetch: bool) -> asyncio.Task:
    task = asyncio.ensure_future(engine.complete(ctx, prefetch=prefetch))
    for _ in range(200):  # past the debounce, into the stream
        await asyncio.sleep(0.01)
        if engine._flights_up:
            break
    assert engine._flights_up == 1
    return task


async def test_a_prefetch_is_dropped_when_the_user_goes_elsewhere() -> None:
    upstream = _Hanging()

    async def provider():
        return upstream

    engine = Engine(EngineConfig(), provider, view=EngineView(1 << 30))
    task = await _in_flight(engine, _ctx(), prefetch=True)
    assert engine.drop_prefetches() == 1
    assert await asyncio.wait_for(task, 1.0) is None
    assert engine.stats.prefetches_dropped == 1
    assert engine.idle  # the engine is free for the new place


async def test_a_prefetch_an_editor_request_waits_for_is_kept() -> None:
    upstream = _Hanging()

    async def provider():
        return upstream

    engine = Engine(EngineConfig(), provider, view=EngineView(1 << 30))
    ctx = _ctx()
    ahead = await _in_flight(engine, ctx, prefetch=True)
    asked = asyncio.ensure_future(engine.complete(ctx))  # Tab: the same state
    await asyncio.sleep(0.05)
    assert engine.drop_prefetches() == 0
    assert not asked.done() and upstream.streams == 1  # still the one flight
    for t in (ahead, asked):
        t.cancel()
    await asyncio.gather(ahead, asked, return_exceptions=True)
    await engine.aclose()


async def test_a_prefetch_after_typing_and_the_request_after_an_accept_are_not_debounced() -> None:
    upstream = _Hanging()

    async def provider():
        return upstream

    engine = Engine(EngineConfig(), provider, view=EngineView(1 << 30))
    lo = engine.config.debounce_min_ms / 1000.0
    ctx = _ctx()
    engine._docs[ctx.uri] = _typing()
    # The typing pattern alone would hold a request back for the pause.
    assert engine.debounce_delay(engine._docs[ctx.uri], ctx) > lo
    ahead = asyncio.ensure_future(engine.complete(ctx, prefetch=True))
    await asyncio.sleep(0)
    assert engine._docs[ctx.uri].flight.delay == lo
    ahead.cancel()
    await asyncio.gather(ahead, return_exceptions=True)
    # The editor inserted the suggestion: the next request is no key of a burst.
    other = _ctx(TEXT.replace("total = ", "result = "))
    engine._docs[ctx.uri].last_request = time.monotonic()
    engine.note_accept(ctx.uri)
    asked = asyncio.ensure_future(engine.complete(other))
    await asyncio.sleep(0)
    assert engine._docs[ctx.uri].flight.delay == lo
    asked.cancel()
    await asyncio.gather(asked, return_exceptions=True)
    await engine.aclose()


def _blank_line_ctx():
    text = ("class Reader:\n    def open(self, name):\n        self.name = name\n"
            "        self.mode = 'r'\n        \n        self.crc = zlib.crc32(b'')\n"
            "        return self\n")
    at = text.index("        \n") + 8
    return build_context(text, at, uri="file:///r.py", path="r.py", language="python",
                         version=1, context_tokens=256)


async def test_a_copy_of_the_next_line_is_asked_again_without_its_word(fake_upstream) -> None:
    from qwen_lsp.providers.openai import OpenAICompatProvider
    from tests.fake_upstream import Reply

    def reply(rec):
        if "logit_bias" in rec.json:
            return Reply(text="\n        self.zlib = zlib\n        self.pos = 0\n")
        return Reply(text="\n        self.crc = zlib.crc32(b'')\n")  # the line below

    fake_upstream.reply = reply
    provider = OpenAICompatProvider(fake_upstream.openai_base, None, "m",
                                    connect_timeout=5, read_timeout=5)

    async def source():
        return provider

    engine = Engine(EngineConfig(second_tries=True), source, view=EngineView(1 << 30))
    try:
        got = await engine.complete(_blank_line_ctx())
    finally:
        await engine.aclose()
        await provider.aclose()
    assert got is not None and got.text == "self.zlib = zlib"
    second = fake_upstream.requests[-1].json
    # The word where the copy parts from the lines above ("self." is shared).
    assert second["logit_bias"] == {"crc": -100.0, " crc": -100.0}
    assert second["logit_bias_type"] == "tokens"
    assert second["max_tokens"] <= 48  # one line is asked for, and one is shown
    assert second["prompt"] == fake_upstream.requests[0].json["prompt"]
    assert engine.stats.second_tries == 1 and engine.stats.second_try_answers == 1


async def test_a_remote_upstream_gets_no_second_try(fake_upstream) -> None:
    from qwen_lsp.providers.openai import OpenAICompatProvider
    from tests.fake_upstream import Reply

    fake_upstream.reply = Reply(text="\n        self.crc = zlib.crc32(b'')\n")
    provider = OpenAICompatProvider(fake_upstream.openai_base, None, "m",
                                    connect_timeout=5, read_timeout=5)

    async def source():
        return provider

    engine = Engine(EngineConfig(), source)  # a remote API bills every try
    try:
        assert await engine.complete(_blank_line_ctx()) is None
    finally:
        await engine.aclose()
        await provider.aclose()
    assert len(fake_upstream.requests) == 1 and engine.stats.second_tries == 0


def test_a_prompt_computed_up_to_the_cursor_seam_is_sent_without_waiting() -> None:
    # The suffix after the cursor is recomputed whenever the seam moves; what
    # comes before it is what a pause would be waited for.
    before = "".join(f"value_{i} = compute({i})\n" for i in range(60)) + "total = "
    after = "".join(f"\nprint(value_{i}, total, 'and some more text')" for i in range(12))
    ctx = build_context(before + after, len(before), uri="file:///a.py", path="a.py",
                        language="python", version=1, context_tokens=256)
    other = build_context(before + after.replace("print", "show"), len(before),
                          uri="file:///a.py", path="a.py", language="python", version=1,
                          context_tokens=256)
    assert fim_prompt(ctx) != fim_prompt(other) and ctx.fim_prefix == other.fim_prefix
    view = EngineView(1 << 30)
    engine = _engine(view)
    lo = engine.config.debounce_min_ms / 1000.0
    assert engine.debounce_delay(_typing(), ctx) > lo
    view.record(fim_prompt(other), "", completed=True, first_token_s=None)
    assert view.cost(fim_prompt(ctx)).new_tokens > 24  # the whole suffix is new
    assert engine.debounce_delay(_typing(), ctx) == lo


def test_the_local_engine_waits_at_most_a_quarter_second_for_the_end_of_a_burst() -> None:
    from qwen_lsp.engine import LOCAL_MAX_DEBOUNCE_S

    ctx = _ctx()  # nothing of it computed
    state = _typing()
    state.gaps.extend([0.45, 0.5, 0.4, 0.6])  # reading a suggestion, then Tab
    remote = _engine(None).debounce_delay(state, ctx)
    local = _engine(EngineView(1 << 30)).debounce_delay(state, ctx)
    assert remote > LOCAL_MAX_DEBOUNCE_S
    assert EngineConfig().debounce_min_ms / 1000.0 < local <= LOCAL_MAX_DEBOUNCE_S


async def test_asked_by_hand_an_answer_of_nothing_is_asked_again_without_the_end(
        fake_upstream) -> None:
    from qwen_lsp.providers.base import QWEN_SPECIAL_TOKENS
    from qwen_lsp.providers.openai import OpenAICompatProvider
    from tests.fake_upstream import Reply

    fake_upstream.reply = lambda rec: Reply(
        text=" + offset\n" if "logit_bias" in rec.json else "")
    provider = OpenAICompatProvider(fake_upstream.openai_base, None, "m",
                                    connect_timeout=5, read_timeout=5)

    async def source():
        return provider

    text = "def shift(x, offset):\n    return x\n"
    engine = Engine(EngineConfig(second_tries=True), source)
    try:
        auto = build_context(text, text.index("x\n") + 1, uri="file:///s.py", path="s.py",
                             language="python", version=1, context_tokens=256)
        assert await engine.complete(auto) is None  # typing: nothing is an answer
        manual = build_context(text, text.index("x\n") + 1, uri="file:///s.py",
                               path="s.py", language="python", version=2,
                               context_tokens=256, manual=True)
        got = await engine.complete(manual)
    finally:
        await engine.aclose()
        await provider.aclose()
    assert got is not None and got.text == " + offset"
    # (The engine's tokenizer was asked too: this server has none, so words are sent.)
    assert len(_completions(fake_upstream)) == 3
    assert fake_upstream.requests[-1].json["logit_bias"] == dict.fromkeys(
        QWEN_SPECIAL_TOKENS, -100.0)


async def test_the_engine_start_is_not_counted_as_prompt_processing(fake_upstream) -> None:
    # The first request of `qwen-lsp complete` starts the engine. Counted in,
    # the 3-4 s start made a 30-token prompt look like 7 tokens/s, and that
    # figure was remembered for the next runs.
    from qwen_lsp.providers.openai import OpenAICompatProvider
    from tests.fake_upstream import Reply

    fake_upstream.reply = Reply(text="sum(values)\n")
    provider = OpenAICompatProvider(fake_upstream.openai_base, None, "m",
                                    connect_timeout=5, read_timeout=5)
    clock = [100.0]

    async def source():
        clock[0] += 30.0  # the engine takes 30 s (of this clock) to start
        return provider

    view = EngineView(1 << 30)
    engine = Engine(EngineConfig(), source, view=view, clock=lambda: clock[0])
    try:
        assert await engine.complete(_ctx()) is not None
    finally:
        await engine.aclose()
        await provider.aclose()
    assert view.measured
    # Counted in, 30 s for a ~250-token prompt: under 10 tokens/s.
    assert view.tokens_per_s > 1000


def _completions(fake_upstream) -> list:
    """The completion requests the fake server got (not the tokenizer probes)."""
    return [r for r in fake_upstream.requests if r.path.endswith("/completions")]


async def _ask_by_hand(fake_upstream, reply, text: str, at: int):
    from qwen_lsp.providers.openai import OpenAICompatProvider

    fake_upstream.reply = reply
    provider = OpenAICompatProvider(fake_upstream.openai_base, None, "m",
                                    connect_timeout=5, read_timeout=5)

    async def source():
        return provider

    engine = Engine(EngineConfig(second_tries=True, next_line=True), source)
    try:
        ctx = build_context(text, at, uri="file:///f.py", path="f.py", language="python",
                            version=1, context_tokens=256, manual=True)
        return await engine.complete(ctx), engine
    finally:
        await engine.aclose()
        await provider.aclose()


async def test_asked_by_hand_at_a_line_end_the_model_is_asked_for_a_line_of_its_own(
        fake_upstream) -> None:
    """A trailing comment followed by the line below is dropped; the next try
    starts a new line, and its copy of the line below is forbidden in turn."""
    from tests.fake_upstream import Reply

    text = "def f(x):\n    y = x + 1\n    return y\n"

    def reply(rec):
        bias = rec.json.get("logit_bias") or {}
        if not bias:
            return Reply(text="  # add one\n    return y\n")
        if not rec.json["prompt"].endswith("\n"):
            return Reply(text="  # one more\n")
        return Reply(text="    print(y)\n" if "return" in bias else "    return y\n")

    got, engine = await _ask_by_hand(fake_upstream, reply, text, text.index(" + 1") + 4)
    sent = _completions(fake_upstream)
    assert got is not None and got.text == "\n    print(y)"
    assert len(sent) == 3
    assert sent[1].json["prompt"] == sent[0].json["prompt"] + "\n"
    assert sent[2].json["prompt"] == sent[1].json["prompt"]
    # Each try keeps what the earlier ones forbade.
    assert set(sent[1].json["logit_bias"]) == {"#", " #"}
    assert set(sent[2].json["logit_bias"]) == {"#", " #", "return", " return"}
    assert engine.stats.second_tries == 2 and engine.stats.second_try_answers == 1


async def test_asked_by_hand_the_tries_end_after_a_few_answers(fake_upstream) -> None:
    from qwen_lsp.engine import MANUAL_TRIES
    from tests.fake_upstream import Reply

    text = "def f(x):\n    \n    return x\n"
    words = iter(f"word{i}" for i in range(20))

    # The line below, then that line with its first word changed: all dropped,
    # and each try forbids a word of its own.
    got, engine = await _ask_by_hand(
        fake_upstream, lambda rec: Reply(text=f"    {next(words)} x\n" if rec.json.get(
            "logit_bias") else "    return x\n"),
        text, text.index("    \n") + 4)
    assert got is None
    assert len(_completions(fake_upstream)) == 1 + MANUAL_TRIES
    assert engine.stats.second_tries == MANUAL_TRIES


async def test_asked_by_hand_in_the_middle_of_code_the_rest_of_the_line_is_rewritten(
        fake_upstream) -> None:
    """A copy of the code right of the cursor, mid-line, says the line is
    complete. A forced answer would be glued in front of that code
    ("b.denominator.numerator"): the model writes the rest of the line anew
    instead, without it in the prompt, and the suggestion replaces it."""
    from tests.fake_upstream import Reply

    text = "def f(b):\n    nb, db = b.numerator, b.denominator\n    return nb\n"
    from qwen_lsp.providers.base import QWEN_SPECIAL_TOKENS

    rest = ".numerator, b.denominator"

    def reply(rec):
        bias = rec.json.get("logit_bias") or {}
        if not bias:
            return Reply(text=rest + "\n" if rest in rec.json["prompt"] else rest)
        if len(bias) == 2:
            return Reply(text="")  # nothing: the end tokens are forbidden next
        return Reply(text=".real, b.imag\n")

    got, engine = await _ask_by_hand(fake_upstream, reply, text, text.index(rest))
    sent = _completions(fake_upstream)
    assert got is not None
    assert (got.text, got.replace_suffix_chars) == (".real, b.imag", len(rest))
    assert len(sent) == 3
    # The tries' prompt: the same, without the rest of the line.
    assert sent[1].json["prompt"] == sent[2].json["prompt"]
    assert sent[1].json["prompt"] == sent[0].json["prompt"].replace(rest, "", 1)
    # The start of the code that is there is forbidden from the first try on.
    assert set(sent[1].json["logit_bias"]) == {".", " ."}
    assert set(sent[2].json["logit_bias"]) == {".", " .", *QWEN_SPECIAL_TOKENS}
    assert engine.stats.second_tries == 2 and engine.stats.second_try_answers == 1


async def test_asked_by_hand_a_rewrite_that_is_the_code_there_is_no_suggestion(
        fake_upstream) -> None:
    from qwen_lsp.engine import MANUAL_TRIES
    from tests.fake_upstream import Reply

    text = "def f(b):\n    nb, db = b.numerator, b.denominator\n"
    rest = ".numerator, b.denominator"
    got, _ = await _ask_by_hand(fake_upstream, Reply(text=rest), text, text.index(rest))
    assert got is None
    # The first answer, one rewrite (the same code again), and no further try:
    # it would forbid nothing new.
    assert len(_completions(fake_upstream)) == 2 < 1 + MANUAL_TRIES


async def test_asked_by_hand_the_same_try_is_not_sent_twice(fake_upstream) -> None:
    """After the new line was asked for, an answer that leaves nothing new to
    forbid ends the tries (the same request would get the same answer)."""
    from tests.fake_upstream import Reply

    text = "def f(x):\n    y = x + 1\n    return y\n"

    def reply(rec):
        if not rec.json.get("logit_bias"):
            return Reply(text="  # add one\n    return y\n")
        return Reply(text="  # again\n")  # a comment: its "#" is forbidden already

    got, _ = await _ask_by_hand(fake_upstream, reply, text, text.index(" + 1") + 4)
    assert got is None
    assert len(_completions(fake_upstream)) == 2
