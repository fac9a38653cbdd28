"""Wire-protocol providers and the factory that picks one from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qwen_lsp.providers.base import (
    QWEN_SPECIAL_TOKENS,
    Provider,
    StreamEvent,
    TextDelta,
    UpstreamError,
    UpstreamRequest,
    Usage,
)
from qwen_lsp.settings import READ_TIMEOUT_MARGIN_MS

if TYPE_CHECKING:
    from qwen_lsp.providers.dashscope import DashScopeNativeProvider
    from qwen_lsp.providers.openai import OpenAICompatProvider
    from qwen_lsp.settings import Settings

__all__ = [
    "QWEN_SPECIAL_TOKENS",
    "DashScopeNativeProvider",
    "OpenAICompatProvider",
    "Provider",
    "StreamEvent",
    "TextDelta",
    "UpstreamError",
    "UpstreamRequest",
    "Usage",
    "make_provider",
]


def __getattr__(name: str) -> object:
    # The HTTP providers pull in httpx, which the server's start-up does not
    # need: they are imported when first asked for.
    if name == "DashScopeNativeProvider":
        from qwen_lsp.providers.dashscope import DashScopeNativeProvider

        return DashScopeNativeProvider
    if name == "OpenAICompatProvider":
        from qwen_lsp.providers.openai import OpenAICompatProvider

        return OpenAICompatProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_provider(
    settings: Settings,
    *,
    base_url_override: str | None = None,
    api_key_override: str | None = None,
) -> Provider:
    """Build the provider the settings ask for.

    The DashScope native protocol is used for ``api="dashscope"`` unless the
    provider is "openai" or "local" (those servers only speak the OpenAI
    protocol), matching ``Settings.effective_mode``. Everything else speaks the
    OpenAI-compatible protocol. The overrides let the local-engine manager
    point at its own loopback server.
    """
    base_url = base_url_override or settings.resolved_base_url()
    if not base_url:
        raise UpstreamError(
            "config", f"No base URL for provider {settings.provider!r}: set `baseUrl`."
        )
    api_key = api_key_override if api_key_override is not None else settings.api_key
    timeouts = {
        "connect_timeout": settings.connect_timeout_ms / 1000.0,
        # Never below the engine's time box (a local cold prompt may take 20 s
        # before its first byte); the box itself is enforced by the engine.
        "read_timeout": (settings.time_box_ms() + READ_TIMEOUT_MARGIN_MS) / 1000.0,
    }
    if settings.api == "dashscope" and settings.provider not in ("openai", "local"):
        from qwen_lsp.providers.dashscope import DashScopeNativeProvider

        return DashScopeNativeProvider(base_url, api_key, settings.model, **timeouts)
    from qwen_lsp.providers.openai import OpenAICompatProvider

    name = settings.provider or "openai"
    return OpenAICompatProvider(base_url, api_key, settings.model, name=name, **timeouts)
