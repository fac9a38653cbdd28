"""The local tokens-per-minute budget, with an injected clock."""

from __future__ import annotations

from qwen_lsp.ratelimit import WINDOW_S, TokenBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_budget_never_waits() -> None:
    budget = TokenBudget(None, clock=Clock())
    for _ in range(100):
        assert budget.reserve(10_000) is not None
    assert budget.used() == 0


def test_reservations_fill_the_minute_and_leave_it() -> None:
    clock = Clock()
    budget = TokenBudget(1000, clock=clock)
    assert budget.reserve(400) is not None
    clock.now += 10
    assert budget.reserve(400) is not None
    assert budget.reserve(400) is None  # 1200 > 1000
    # The first reservation leaves the window 60 s after it was made.
    assert budget.wait(400) == WINDOW_S - 10
    assert "maxTokensPerMinute (1000)" in budget.message(400)
    clock.now += WINDOW_S - 10
    assert budget.wait(400) == 0 and budget.reserve(400) is not None


def test_settle_corrects_the_estimate() -> None:
    clock = Clock()
    budget = TokenBudget(1000, clock=clock)
    first = budget.reserve(900)
    assert budget.reserve(200) is None
    TokenBudget.settle(first, 300)  # the real usage was smaller
    assert budget.used() == 300 and budget.reserve(200) is not None


def test_a_request_bigger_than_the_budget_goes_alone() -> None:
    clock = Clock()
    budget = TokenBudget(100, clock=clock)
    assert budget.reserve(500) is not None  # nothing else in the window
    assert budget.reserve(1) is None
    clock.now += WINDOW_S
    assert budget.reserve(500) is not None
