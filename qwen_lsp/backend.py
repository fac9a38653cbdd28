"""The provider behind the engine, and the embedded engine when it is local.

Shared by the language server and the CLI so both reach the upstream the
same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from qwen_lsp.providers import make_provider
from qwen_lsp.providers.base import Provider, UpstreamError
from qwen_lsp.settings import NO_BACKEND_MESSAGE, Settings

Progress = Callable[[str, float | None], None]
# After a settings change, how long completions streaming from the old
# endpoint may take before its client (and a replaced local engine) is closed.
SWITCH_GRACE_S = 10.0


class Backend:
    def __init__(
        self,
        settings: Settings,
        *,
        progress: Progress | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._progress = progress
        self._log = log
        self._provider: Provider | None = None
        self._lock = asyncio.Lock()
        self.local_engine: Any = None

    def extra_body(self) -> dict[str, Any]:
        # llama.cpp keeps the previous prompt's KV cache when asked to.
        return {"cache_prompt": True} if self.settings.provider == "local" else {}

    async def provider(self) -> Provider:
        async with self._lock:
            if self._provider is not None:
                return self._provider
            s = self.settings
            if s.provider is None:
                raise UpstreamError("config", NO_BACKEND_MESSAGE)
            if s.provider == "local":
                base, key = await self._start_local()
                self._provider = make_provider(s, base_url_override=base, api_key_override=key)
            else:
                self._provider = make_provider(s)
            return self._provider

    async def _start_local(self) -> tuple[str, str]:
        from qwen_lsp.providers.local import LocalEngine, LocalEngineError

        if self.local_engine is None:
            s = self.settings
            self.local_engine = LocalEngine(
                model_path=s.model_path,
                threads=s.threads,
                context_size=s.context_size,
                progress=self._progress,
                log=self._log,
            )
        try:
            return await self.local_engine.ensure_started()
        except LocalEngineError as exc:
            raise UpstreamError("config", str(exc)) from None

    async def reset_provider(self, *, grace: float = SWITCH_GRACE_S) -> None:
        """Drop the HTTP client (settings changed).

        The local engine keeps running (and keeps its warm KV cache) unless
        the settings no longer describe it: another provider, ``modelPath``,
        ``threads`` or ``contextSize``. Then it is stopped, and the next
        request starts one that matches. Streams still open on the old
        client get ``grace`` seconds to finish first.
        """
        async with self._lock:
            old, self._provider = self._provider, None
            engine = self.local_engine
            s = self.settings
            if engine is not None and s.provider == "local" and engine.runs_with(
                model_path=s.model_path, threads=s.threads, context_size=s.context_size
            ):
                engine = None
            else:
                self.local_engine = None
        if old is not None:
            await old.aclose_when_idle(grace)
        if engine is not None:
            await engine.stop()

    def describe(self) -> dict[str, Any] | None:
        return self.local_engine.describe() if self.local_engine is not None else None

    async def aclose(self) -> None:
        await self.reset_provider(grace=0)
        if self.local_engine is not None:
            await self.local_engine.stop()
