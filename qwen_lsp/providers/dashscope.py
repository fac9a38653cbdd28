"""DashScope native text-generation protocol (partial mode only, no FIM).

One POST to ``{base}/services/aigc/text-generation/generation`` with
``X-DashScope-SSE: enable``. Every ``event:result`` frame carries the new
text (``incremental_output``) and the cumulative usage so far; the frame whose
``finish_reason`` is not the string ``"null"`` ends the stream.

Failure semantics match the OpenAI-compatible provider: deltas are yielded as
they arrive and an :class:`UpstreamError` is raised after them if the stream
breaks, so callers can keep partial text.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx

from qwen_lsp.providers.base import (
    StreamEvent,
    TextDelta,
    UpstreamError,
    UpstreamRequest,
    Usage,
    usage_from_counts,
)
from qwen_lsp.providers.http import StreamingProvider

GENERATION_PATH = "/services/aigc/text-generation/generation"


def usage_from_native(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return usage_from_counts(
        raw.get("input_tokens"), raw.get("output_tokens"), raw.get("prompt_tokens_details")
    )


def output_text(output: dict[str, Any]) -> tuple[str, str | None]:
    """(text, finish_reason) of a native ``output``; "null" means not finished."""
    choices = output.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        text = message.get("content") if isinstance(message, dict) else None
        finish = choices[0].get("finish_reason")
    else:  # result_format "text"
        text, finish = output.get("text"), output.get("finish_reason")
    if finish in (None, "", "null"):
        finish = None
    return (text if isinstance(text, str) else ""), finish


class DashScopeNativeProvider(StreamingProvider):
    default_name = "dashscope"

    def supports_fim(self) -> bool:
        return False

    def build(self, request: UpstreamRequest) -> tuple[str, dict[str, Any]]:
        if request.is_fim:
            raise UpstreamError(
                "config",
                "The DashScope native API has no FIM endpoint: use mode=partial, or api=openai.",
            )
        parameters: dict[str, Any] = {
            "result_format": "message",
            "incremental_output": True,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.stop:
            parameters["stop"] = list(request.stop)
        body: dict[str, Any] = {
            "model": self.model,
            "input": {"messages": request.messages or []},
            "parameters": parameters,
        }
        body.update(request.extra)
        return f"{self.base_url}{GENERATION_PATH}", body

    async def _stream(self, request: UpstreamRequest) -> AsyncIterator[StreamEvent]:
        url, body = self.build(request)
        headers = {"Accept": "text/event-stream", "X-DashScope-SSE": "enable"}
        response = await self._open(url, body, headers)
        try:
            ctype = self.content_type(response)
            if ctype == "text/event-stream":
                async for event in self._parse_stream(response):
                    yield event
            elif ctype == "application/json":
                for event in self._parse_body(await self._read_json(response)):
                    yield event
            else:
                raise self._wrong_content_type(ctype)
        finally:
            await response.aclose()

    def _frame(self, data: str) -> dict[str, Any]:
        try:
            obj = json.loads(data)
        except ValueError:
            raise self._malformed(data) from None
        if not isinstance(obj, dict):
            raise self._malformed(data)
        return obj

    async def _parse_stream(self, response: httpx.Response) -> AsyncIterator[StreamEvent]:
        usage: Usage | None = None
        finished = False
        events = self._events(response)
        async with aclosing(events):
            async for sse in events:
                if not sse.data.strip():
                    continue
                frame = self._frame(sse.data)
                output = frame.get("output")
                if sse.event == "error" or not isinstance(output, dict):
                    if "code" in frame or "message" in frame or sse.event == "error":
                        raise self._body_error(frame)
                    raise self._malformed(sse.data)
                text, finish = output_text(output)
                if text:
                    yield TextDelta(text)
                # Usage is cumulative in every frame: the last one is the total.
                usage = usage_from_native(frame.get("usage")) or usage
                if finish is not None:
                    finished = True
                    break
            if finished:
                await self._drain(events)
        if not finished:
            raise self._cut()
        if usage is not None:
            yield usage

    def _parse_body(self, obj: Any) -> list[StreamEvent]:
        if not isinstance(obj, dict):
            raise self._error("protocol", "Response is JSON but not a generation result.")
        output = obj.get("output")
        if not isinstance(output, dict):
            if "code" in obj or "message" in obj:
                raise self._body_error(obj)
            raise self._error("protocol", "Response is JSON but not a generation result.")
        text, _ = output_text(output)
        events: list[StreamEvent] = [TextDelta(text)] if text else []
        usage = usage_from_native(obj.get("usage"))
        if usage is not None:
            events.append(usage)
        return events
