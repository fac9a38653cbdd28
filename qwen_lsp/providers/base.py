"""The one small interface every wire protocol implements.

A provider turns an :class:`UpstreamRequest` (a FIM prompt or a list of chat
messages) into a stream of :class:`TextDelta` events followed by at most one
:class:`Usage` event. Closing the async iterator early (``aclose()`` or task
cancellation) closes the HTTP response, which stops the upstream from
generating and billing further tokens.

Failures are raised as :class:`UpstreamError` with a ``kind`` that the engine
uses for retry/backoff decisions and user messages. Messages never contain the
API key.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

# Qwen special tokens that end a completion. The FIM request sends them as
# stop sequences; post-processing also cuts at them in case a server ignores
# ``stop``.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<|im_start|>",
    "<|im_end|>",
)


@dataclass(slots=True)
class UpstreamRequest:
    """What to ask the model. Exactly one of ``prompt`` / ``messages`` is set."""

    prompt: str | None = None  # raw FIM prompt -> /completions
    messages: list[dict[str, Any]] | None = None  # partial mode -> chat
    max_tokens: int = 64
    temperature: float = 0.1
    stop: list[str] = field(default_factory=list)
    # Extra, provider-specific body fields (e.g. ``cache_prompt`` for llama.cpp).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_fim(self) -> bool:
        return self.prompt is not None


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class Usage:
    """Token counts of one request, split the way DashScope bills them.

    ``prompt_tokens`` is all input; ``cached_tokens`` (implicit cache hits),
    ``explicit_cached_tokens`` (explicit cache hits) and
    ``cache_creation_tokens`` (written to a new explicit cache) are parts of it.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    explicit_cached_tokens: int = 0
    cache_creation_tokens: int = 0

    @property
    def standard_tokens(self) -> int:
        """Input billed at the full price."""
        cached = self.cached_tokens + self.explicit_cached_tokens + self.cache_creation_tokens
        return max(0, self.prompt_tokens - cached)


StreamEvent = TextDelta | Usage

# ``prompt_tokens_details.cache_type`` of a request that used the explicit cache.
EXPLICIT_CACHE_TYPE = "ephemeral"


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return max(0, int(value))


def usage_from_counts(prompt: Any, completion: Any, details: Any) -> Usage:
    """Usage from the input/output counts and ``prompt_tokens_details``.

    Both DashScope wire formats carry the same details object. With the
    explicit cache (``cache_type`` "ephemeral") ``cached_tokens`` are explicit
    hits and ``cache_creation_input_tokens`` (also broken down as
    ``cache_creation.ephemeral_5m_input_tokens``) were written to a new cache;
    otherwise ``cached_tokens`` are implicit hits.
    """
    usage = Usage(prompt_tokens=_count(prompt), completion_tokens=_count(completion))
    if not isinstance(details, dict):
        return usage
    cached = _count(details.get("cached_tokens"))
    creation = _count(details.get("cache_creation_input_tokens"))
    if not creation and isinstance(details.get("cache_creation"), dict):
        creation = _count(details["cache_creation"].get("ephemeral_5m_input_tokens"))
    if details.get("cache_type") == EXPLICIT_CACHE_TYPE or creation:
        usage.explicit_cached_tokens = cached
        usage.cache_creation_tokens = creation
    else:
        usage.cached_tokens = cached
    return usage


class UpstreamError(Exception):
    """An upstream failure, classified.

    kind is one of: ``bad_request`` (400), ``auth`` (401/403), ``not_found``
    (404), ``rate_limited`` (429), ``server`` (5xx), ``connect`` (refused, DNS,
    TLS), ``timeout``, ``protocol`` (malformed SSE/JSON, wrong content type,
    stream cut mid-way, oversized response), ``config`` (nothing to call).
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.code = code

    def __str__(self) -> str:
        return self.message


class Provider(Protocol):
    """One wire protocol. Implementations hold one shared httpx.AsyncClient."""

    name: str

    def supports_fim(self) -> bool: ...

    def stream(self, request: UpstreamRequest) -> AsyncIterator[StreamEvent]: ...

    async def aclose(self) -> None: ...

    async def aclose_when_idle(self, grace: float) -> None: ...
