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
