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
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


StreamEvent = TextDelta | Usage


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
