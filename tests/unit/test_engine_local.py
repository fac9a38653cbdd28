"""Scheduling rules of the engine that apply to the local engine only (a view is set)."""

from __future__ import annotations

import asyncio

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
