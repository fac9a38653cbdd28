"""Prices with input-length tiers, the cache billing rates, the prices setting."""

from __future__ import annotations

import pytest

from qwen_lsp.pricing import (
    DEFAULT_PRICES,
    Price,
    PriceError,
    Tier,
    cost,
    input_equivalents,
    parse_prices,
    price_dict,
    price_for,
)
from qwen_lsp.providers.base import Usage

PRICE = Price((Tier(32_000, 1.0, 5.0), Tier(128_000, 2.0, 10.0), Tier(None, 4.0, 20.0)))


def test_billing_classes_are_weighted() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=0, cached_tokens=100,
                  explicit_cached_tokens=200, cache_creation_tokens=400)
    assert usage.standard_tokens == 300
    assert input_equivalents(usage) == pytest.approx(300 + 0.2 * 100 + 0.1 * 200 + 1.25 * 400)


@pytest.mark.parametrize(("prompt", "output", "expected"), [
    (1000, 0, 1000 * 1.0 / 1e6),  # 1,000 tokens in the first tier
    (32_000, 1000, (32_000 * 1.0 + 1000 * 5.0) / 1e6),  # the tier's upper bound
    (32_001, 1000, (32_001 * 2.0 + 1000 * 10.0) / 1e6),  # one more: all of it at tier 2
    (500_000, 0, 500_000 * 4.0 / 1e6),
])
def test_the_tier_follows_the_request_input(prompt: int, output: int, expected: float) -> None:
    assert cost(Usage(prompt, output), PRICE) == pytest.approx(expected)


def test_defaults_and_snapshots() -> None:
    assert price_for("qwen3-coder-plus") is DEFAULT_PRICES["qwen3-coder-plus"]
    assert price_for("qwen3-coder-plus-2025-07-22") is DEFAULT_PRICES["qwen3-coder-plus"]
    assert price_for("Qwen3-Coder-Flash") is DEFAULT_PRICES["qwen3-coder-flash"]
    assert price_for("qwen2.5-coder-7b-instruct") is None
    override = parse_prices({"qwen3-coder-flash": {"input": 2, "output": 3, "currency": "CNY"}})
    got = price_for("qwen3-coder-flash", override)
    assert got == Price((Tier(None, 2.0, 3.0),), "CNY")


def test_tiers_are_sorted_and_round_trip() -> None:
    raw = {"m": {"tiers": [{"input": 4, "output": 20}, {"upTo": 32000, "input": 1, "output": 5}]}}
    parsed = parse_prices(raw)
    assert parsed == (("m", Price((Tier(32000, 1.0, 5.0), Tier(None, 4.0, 20.0)))),)
    assert parse_prices({"m": price_dict(parsed[0][1])}) == parsed


@pytest.mark.parametrize("raw", [
    {}, [], "x", {"m": 1}, {"m": {"input": -1, "output": 1}}, {"m": {"input": 1}},
    {"m": {"input": True, "output": 1}}, {"m": {"tiers": []}},
    {"m": {"tiers": [{"upTo": 0, "input": 1, "output": 1}]}},
    {"m": {"tiers": [{"input": 1, "output": 1}, {"input": 2, "output": 2}]}},
    {"": {"input": 1, "output": 1}}, {"m": {"input": 1, "output": 1, "currency": ""}},
    {"m": {"input": float("nan"), "output": 1}},
])
def test_bad_prices_are_refused(raw: object) -> None:
    with pytest.raises(PriceError):
        parse_prices(raw)
