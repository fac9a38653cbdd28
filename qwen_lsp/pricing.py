"""What a request costs: per-model prices with input-length tiers, cache rates.

DashScope bills input and output tokens per request. The qwen3-coder models
have tiered prices: the tier is chosen by the request's input tokens, and all
of its input and output tokens are billed at that tier's prices. Input served
by the implicit cache is billed at 20% of the input price, by the explicit
cache at 10%, and input written to a new explicit cache at 125%.

The defaults are the international (Singapore) list prices in USD per
million tokens of the models the project targets; prices change, and the
Beijing region bills in CNY, so the setting ``prices`` replaces them per
model (see :func:`parse_prices`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # settings imports this module; the providers package imports settings
    from qwen_lsp.providers.base import Usage

IMPLICIT_RATE = 0.20
EXPLICIT_RATE = 0.10
CREATION_RATE = 1.25
PER = 1_000_000


@dataclass(frozen=True, slots=True)
class Tier:
    up_to: int | None  # largest input-token count of the tier (None: no limit)
    input: float  # price per million input tokens
    output: float  # price per million output tokens


@dataclass(frozen=True, slots=True)
class Price:
    tiers: tuple[Tier, ...]
    currency: str = "USD"

    def tier(self, input_tokens: int) -> Tier:
        for tier in self.tiers:
            if tier.up_to is None or input_tokens <= tier.up_to:
                return tier
        return self.tiers[-1]


def _tiers(*rows: tuple[int | None, float, float]) -> tuple[Tier, ...]:
    return tuple(Tier(up, i, o) for up, i, o in rows)


DEFAULT_PRICES: dict[str, Price] = {
    "qwen3-coder-plus": Price(_tiers(
        (32_000, 1.0, 5.0), (128_000, 1.8, 9.0), (256_000, 3.0, 15.0), (None, 6.0, 60.0))),
    "qwen3-coder-flash": Price(_tiers(
        (32_000, 0.3, 1.5), (128_000, 0.5, 2.5), (256_000, 0.8, 4.0), (None, 1.6, 9.6))),
}


def price_for(model: str, overrides: tuple[tuple[str, Price], ...] = ()) -> Price | None:
    """The price of ``model``: an override, else a default; a dated snapshot
    (``qwen3-coder-plus-2025-07-22``) takes its family's price."""
    table = {**DEFAULT_PRICES, **dict(overrides)}
    name = model.strip().lower()
    if name in table:
        return table[name]
    family = [k for k in table if name.startswith(k + "-")]
    return table[max(family, key=len)] if family else None


def input_equivalents(usage: Usage) -> float:
    """Input tokens weighted by their billing class (standard input = 1)."""
    return (usage.standard_tokens + IMPLICIT_RATE * usage.cached_tokens
            + EXPLICIT_RATE * usage.explicit_cached_tokens
            + CREATION_RATE * usage.cache_creation_tokens)


def cost(usage: Usage, price: Price) -> float:
    """The estimated bill of one request."""
    tier = price.tier(usage.prompt_tokens)
    return (input_equivalents(usage) * tier.input + usage.completion_tokens * tier.output) / PER


class PriceError(ValueError):
    """A ``prices`` entry that does not fit the expected shape."""


def _number(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw < 0:
        raise PriceError
    return float(raw)


def _parse_price(raw: Any) -> Price:
    if not isinstance(raw, Mapping):
        raise PriceError
    currency = raw.get("currency", "USD")
    if not isinstance(currency, str) or not currency.strip():
        raise PriceError
    rows = raw.get("tiers")
    if rows is None:
        return Price((Tier(None, _number(raw.get("input")), _number(raw.get("output"))),),
                     currency.strip())
    if not isinstance(rows, list) or not rows:
        raise PriceError
    tiers: list[Tier] = []
    for row in rows:
        if not isinstance(row, Mapping):
            raise PriceError
        up = row.get("upTo", row.get("up_to"))
        if up is not None and (isinstance(up, bool) or not isinstance(up, int) or up <= 0):
            raise PriceError
        tiers.append(Tier(up, _number(row.get("input")), _number(row.get("output"))))
    ordered = sorted(tiers, key=lambda t: float("inf") if t.up_to is None else t.up_to)
    if any(t.up_to is None for t in ordered[:-1]):
        raise PriceError
    return Price(tuple(ordered), currency.strip())


def parse_prices(raw: Any) -> tuple[tuple[str, Price], ...]:
    """``{"model": {"input": 1.0, "output": 5.0}}`` or, with tiers by input
    tokens, ``{"model": {"tiers": [{"upTo": 32000, "input": 1.0, "output": 5.0},
    {"input": 1.8, "output": 9.0}], "currency": "USD"}}``: prices per million
    tokens. Raises :class:`PriceError` for anything else."""
    if not isinstance(raw, Mapping) or not raw:
        raise PriceError
    out = []
    for model, entry in raw.items():
        if not isinstance(model, str) or not model.strip():
            raise PriceError
        out.append((model.strip().lower(), _parse_price(entry)))
    return tuple(sorted(out))


def price_dict(price: Price) -> dict[str, Any]:
    """The JSON form :func:`parse_prices` reads."""
    return {
        "currency": price.currency,
        "tiers": [{"upTo": t.up_to, "input": t.input, "output": t.output} for t in price.tiers],
    }
