"""The engine-aware prompt budget: our copy of the local engine's prompt cache."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_lsp.context import estimate_tokens
from qwen_lsp.prompt_cache import (
    LOGITS_ROW_BYTES,
    MIN_CONTEXT_TOKENS,
    STATE_BYTES_PER_TOKEN,
    Cost,
    EngineView,
    candidate_budgets,
    common_prefix_len,
    pick_budget,
)
from qwen_lsp.warmup import Warmer


@given(st.text(max_size=300), st.text(max_size=300))
def test_common_prefix_len_matches_a_plain_scan(a: str, b: str) -> None:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    assert common_prefix_len(a, b) == n


def test_cost_counts_what_the_kv_cache_already_holds() -> None:
    view = EngineView(1 << 30)
    prompt = _lines("x", 1000)
    assert view.cost(prompt).new_tokens == estimate_tokens(prompt)  # nothing cached
    view.record(prompt, "out", completed=False, first_token_s=None)
    again = view.cost(prompt + _lines("y", 10))
    assert again.source == "kv"
    assert again.new_tokens <= 11  # only the 10 new tokens (and a seam token)


def test_a_saved_state_serves_a_revisit_after_another_place() -> None:
    view = EngineView(1 << 30)
    place_a, place_b = "a" * 2000, "b" * 2000
    view.record(place_a, "", completed=True, first_token_s=None)
    view.record(place_b, "", completed=True, first_token_s=None)
    back = view.cost(place_a + "more")
    assert back.source == "saved" and back.cached_chars == 2000
    # A stream we closed early is not saved by the engine.
    view.record("c" * 2000, "", completed=False, first_token_s=None)
    assert view.cost("c" * 2000).source == "kv"
    view.record("d" * 10, "", completed=False, first_token_s=None)
    assert view.cost("c" * 2000).new_tokens == estimate_tokens("c" * 2000)


def _lines(name: str, tokens: int) -> str:
    """Text of ``tokens`` estimated tokens: lines "name = 1" (4 tokens and a newline)."""
    text = f"{name} = 1\n" * (tokens // 5)
    assert estimate_tokens(text) == tokens
    return text


def test_states_extended_by_a_newer_one_are_dropped_and_capacity_is_kept() -> None:
    view = EngineView(1 << 30)
    view.record("p" * 100, "", completed=True, first_token_s=None)
    view.record("p" * 200, "", completed=True, first_token_s=None)  # the next pre-fill chunk
    assert view.saved_states == 1
    one = view.state_bytes(_lines("q", 1000))
    assert one == 1000 * STATE_BYTES_PER_TOKEN + LOGITS_ROW_BYTES  # one logits row
    small = EngineView(capacity_bytes=2 * one + 1)
    for ch in "qrs":
        small.record(_lines(ch, 1000), "", completed=True, first_token_s=None)
    assert small.saved_states == 2
    assert small.cost(_lines("q", 1000)).source == "none"  # the oldest went first
    assert small.cost(_lines("r", 1000)).source == "saved"


def test_throughput_is_measured_from_requests_with_enough_new_tokens() -> None:
    view = EngineView(1 << 30)
    assert not view.measured
    view.record(_lines("z", 10), "", completed=True, first_token_s=5.0)
    assert not view.measured  # 10 tokens say nothing about the speed
    prompt = _lines("w", 200)
    view.record(prompt, "", completed=True, first_token_s=2.08)
    assert view.measured and view.tokens_per_s == pytest.approx(100, rel=0.05)
    view.observe(100, 2.0)  # 50 tok/s: the average moves toward it
    assert 50 < view.tokens_per_s < 100
    assert view.budget_tokens(1.0) == int(view.tokens_per_s)


BUDGETS = [1536, 768, 384, 192, 96]


def _costs(new_tokens: list[int], answered: bool) -> list[Cost]:
    return [Cost(n + 10, 10, "saved", 38, answered) for n in new_tokens]


@pytest.mark.parametrize(("new_tokens", "answered", "expected", "case"), [
    # Nothing computed: the largest window that fits the limit (200 tokens).
    ([1536, 768, 384, 192, 96], False, 192, "new place"),
    ([1536, 768, 384, 300, 250], False, 96, "nothing fits: the smallest"),
    # A window a request was answered with is kept, although a larger one
    # would fit the limit: the answer comes without waiting.
    ([1536, 768, 150, 3, 2], True, 192, "revisit"),
    ([1536, 768, 180, 190, 4], True, 96, "typing"),
    # A window only the warm-up filled gives way to one more than twice as
    # large that fits; not to one only twice as large.
    ([1536, 768, 180, 190, 4], False, 384, "first answer after a short warm-up"),
    ([1536, 768, 384, 150, 3], False, 96, "growth of two is not worth a second"),
    ([1536, 5, 4, 3, 2], False, 768, "warmed up far"),
])
def test_pick_budget_takes_what_is_computed_else_what_fits(
    new_tokens: list[int], answered: bool, expected: int, case: str
) -> None:
    i = pick_budget(BUDGETS, _costs(new_tokens, answered), quick=20, limit=200)
    assert BUDGETS[i] == expected, case


def test_a_window_computed_up_to_the_cursor_seam_is_ready_for_a_keystroke() -> None:
    # A key typed in a word moves the seam: the suffix (tail) is computed again
    # in any window. The window answered before, computed up to there, is kept
    # instead of a larger one that fits the limit but is computed from scratch.
    budgets = [384, 192, 96]
    costs = [Cost(300, 3, "kv"), Cost(160, 100, "kv", 400, True), Cost(80, 3, "kv")]
    tails = [55, 55, 55]
    without = pick_budget(budgets, costs, quick=20, limit=320)
    assert budgets[without] == 384  # the seam looked like a recompute
    assert budgets[pick_budget(budgets, costs, quick=20, limit=320, tails=tails)] == 192
    # Computed short of the seam by more than the quick allowance: not ready.
    costs[1] = Cost(160, 70, "kv", 280, True)
    assert budgets[pick_budget(budgets, costs, quick=20, limit=320, tails=tails)] == 384


def test_a_small_window_of_mostly_suffix_is_not_ready_when_nothing_is_computed() -> None:
    # 80 tokens, 70 of them after the seam: only the shared "<|fim_prefix|>"
    # is cached. The tail allowance must not make it look computed.
    budgets = [192, 96]
    costs = [Cost(160, 3, "kv"), Cost(80, 3, "kv")]
    assert budgets[pick_budget(budgets, costs, quick=20, limit=200, tails=[70, 70])] == 192


def test_cost_says_whether_a_request_left_the_cached_prefix() -> None:
    view = EngineView(1 << 30)
    view.record("p" * 400, "", completed=True, first_token_s=None, answered=False)
    assert not view.cost("p" * 420).answered  # only the warm-up computed it
    view.record("q" * 400, "x", completed=True, first_token_s=None)
    assert view.cost("q" * 400 + "x").answered  # a request did, still in the KV cache
    view.record("r" * 400, "", completed=True, first_token_s=None, answered=False)
    assert view.cost("q" * 400 + "x").answered  # and among the saved states
    assert not view.cost("p" * 420).answered


def test_a_sample_far_above_the_speed_moves_it_only_a_little() -> None:
    view = EngineView(1 << 30)
    view.observe(300, 1.0)
    view.observe(1500, 1.0)  # a prompt the engine had cached unbeknown to us
    assert view.tokens_per_s < 400
    view.observe(100, 1.0)  # a busy machine counts in full
    assert view.tokens_per_s < 330


@pytest.mark.parametrize(("full", "expected"), [
    (1536, [1536, 1152, 768, 576, 384, 288, 192, 144, MIN_CONTEXT_TOKENS]),
    (512, [512, 384, 256, 192, 128, MIN_CONTEXT_TOKENS]),
    (64, [64]),
])
def test_candidate_budgets_step_down_by_three_quarters_and_halves(full: int,
                                                                  expected: list[int]) -> None:
    assert candidate_budgets(full) == expected


def test_forget_empties_the_cache_but_keeps_the_speed() -> None:
    view = EngineView(1 << 30)
    view.record("k" * 400, "", completed=True, first_token_s=1.0)
    speed = view.tokens_per_s
    view.forget()
    assert view.saved_states == 0 and view.kv == ""
    assert view.tokens_per_s == speed


def _steps(work: list[int], done: list[float]):
    """A warm-up step that does ``work[0]`` more units, logging when each ran."""
    loop = asyncio.get_running_loop()

    async def step() -> bool:
        if work[0] == 0:
            return False
        work[0] -= 1
        done.append(loop.time())
        return True

    return step


async def test_warmer_runs_steps_only_in_pauses_and_stops_when_done() -> None:
    done: list[float] = []
    work = [3]
    busy = [False]
    loop = asyncio.get_running_loop()
    step = _steps(work, done)
    w = Warmer(step, engine_idle=lambda: not busy[0], idle_s=0.05)
    w.poke()
    t0 = loop.time()
    for _ in range(100):
        if not w.running:
            break
        await asyncio.sleep(0.01)
    assert len(done) == 3 and not w.running
    assert done[0] - t0 >= 0.045  # it waited for the pause
    # A busy engine holds the next step back; a poke restarts the loop.
    work[0] = 1
    busy[0] = True
    w.poke()
    await asyncio.sleep(0.15)
    assert len(done) == 3
    busy[0] = False
    for _ in range(100):
        if len(done) == 4:
            break
        await asyncio.sleep(0.01)
    assert len(done) == 4
    await w.aclose()


async def test_an_urgent_poke_runs_the_next_step_without_waiting_for_a_pause() -> None:
    loop = asyncio.get_running_loop()
    done: list[float] = []
    w = Warmer(_steps([2], done), engine_idle=lambda: True, idle_s=5.0)
    t0 = loop.time()
    w.poke(now=True)
    for _ in range(100):
        if done:
            break
        await asyncio.sleep(0.01)
    assert done and done[0] - t0 < 1.0
    # Only that one step: the next waits for the pause again.
    w.poke()
    await asyncio.sleep(0.3)
    assert len(done) == 1
    await w.aclose()


def test_window_starts_are_found_again_by_their_text_a_little_above() -> None:
    from qwen_lsp.prompt_cache import WindowStarts

    lines = [f"line_{i} = {i} * factor\n" for i in range(40)]
    text = "".join(lines)
    at = [sum(len(x) for x in lines[:i]) for i in range(41)]
    starts = WindowStarts()
    starts.remember("u", text, at[10])
    assert starts.near("u", text, at[10], 200) is None  # the start itself: nothing to change
    assert starts.near("u", text, at[12], 200) == at[10]  # two lines below: stick to it
    assert starts.near("u", text, at[30], 200) is None  # too far below
    assert starts.near("u", text, at[8], 200) is None  # only starts above are taken
    assert starts.near("other", text, at[12], 200) is None
    # Lines added above move the start's offset; its text still finds it.
    moved = "".join(f"new_{i}()\n" for i in range(5)) + text
    shift = len(moved) - len(text)
    assert starts.near("u", moved, at[12] + shift, 200) == at[10] + shift
    starts.forget("u")
    assert starts.near("u", text, at[12], 200) is None
