"""OpenAI-compatible wire protocol (DashScope compatible-mode, llama.cpp, vLLM...).

FIM prompts go to ``{base}/completions`` and partial-mode chats to
``{base}/chat/completions``, always streamed with usage requested in the
final chunk.

Failure semantics of :meth:`OpenAICompatProvider.stream`: text is yielded as
soon as it arrives. If the stream then breaks (cut connection, malformed
chunk, byte cap, timeout) the generator raises :class:`UpstreamError` *after*
the deltas it already yielded, so a caller may keep the partial text.
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
    UpstreamRequest,
    Usage,
    usage_from_counts,
)
from qwen_lsp.providers.http import StreamingProvider


def usage_from_openai(raw: Any) -> Usage | None:
    """``usage`` of a chunk or body -> Usage (cached tokens may be missing)."""
    if not isinstance(raw, dict):
        return None
    return usage_from_counts(
        raw.get("prompt_tokens"), raw.get("completion_tokens"), raw.get("prompt_tokens_details")
    )


def choice_text(choice: Any) -> tuple[str, str | None]:
    """(text, finish_reason) of one streamed or complete choice."""
    if not isinstance(choice, dict):
        return "", None
    text: Any = None
    for key in ("delta", "message"):
        part = choice.get(key)
        if isinstance(part, dict):
            text = part.get("content")
            break
    else:
        text = choice.get("text")
    return (text if isinstance(text, str) else ""), choice.get("finish_reason") or None


class OpenAICompatProvider(StreamingProvider):
    default_name = "openai"

    def supports_fim(self) -> bool:
        return True

    async def token_ids(self, text: str) -> list[int] | None:
        """``text`` in the model's tokens, from llama-cpp-python's ``/extras/tokenize``.

        None where the server has no such endpoint (other OpenAI-compatible
        servers) or anything goes wrong: callers fall back to words.
        """
        root = self.base_url.removesuffix("/v1")
        try:
            response = await self._http().post(f"{root}/extras/tokenize", json={"input": text},
                                               headers=self._auth_headers())
            tokens = response.json().get("tokens") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            return None
        return tokens

    async def _detokenize(self, tokens: list[int]) -> str | None:
        """``tokens`` as text, from llama-cpp-python's ``/extras/detokenize``;
        None where that fails (the server decodes strictly, so a prefix that
        ends inside a multi-byte character is refused)."""
        root = self.base_url.removesuffix("/v1")
        try:
            response = await self._http().post(f"{root}/extras/detokenize",
                                               json={"tokens": tokens},
                                               headers=self._auth_headers())
            text = response.json().get("text") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return text if isinstance(text, str) else None

    async def token_covering(self, text: str, at: int) -> int | None:
        """The id of the model's token that covers ``text[at]``, as the engine's
        tokenizer splits ``text``; None where the server cannot say.

        Spaces glue to the word after them in Qwen's tokens ("    while" is
        "   " + " while"), so the token that starts a word is found by where
        each token ends, not by tokenizing ``text[:at]`` alone.
        """
        tokens = await self.token_ids(text)
        if not tokens or not 0 <= at < len(text):
            return None
        for end in range(1, len(tokens) + 1):
            head = await self._detokenize(tokens[:end])
            if head is None:
                continue  # inside a multi-byte character: the next prefix says
            if not text.startswith(head):
                return None  # a tokenizer that does not round-trip this text
            if len(head) > at:
                return tokens[end - 1]
        return None

    def build(self, request: UpstreamRequest) -> tuple[str, dict[str, Any]]:
        """The URL and JSON body for ``request``."""
        common: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.is_fim:
            url = f"{self.base_url}/completions"
            body: dict[str, Any] = {"model": self.model, "prompt": request.prompt, **common}
            body["stop"] = list(request.stop)
        else:
            url = f"{self.base_url}/chat/completions"
            body = {"model": self.model, "messages": request.messages or [], **common}
            if request.stop:
                body["stop"] = list(request.stop)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        body.update(request.extra)
        return url, body

    async def _stream(self, request: UpstreamRequest) -> AsyncIterator[StreamEvent]:
        url, body = self.build(request)
        response = await self._open(url, body, {"Accept": "text/event-stream"})
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

    async def _parse_stream(self, response: httpx.Response) -> AsyncIterator[StreamEvent]:
        usage: Usage | None = None
        finished = False
        events = self._events(response)
        async with aclosing(events):
            async for sse in events:
                data = sse.data.strip()
                if data == "[DONE]":
                    finished = True
                    break
                if not data:
                    continue
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise self._malformed(data) from None
                if not isinstance(chunk, dict):
                    raise self._malformed(data)
                if "error" in chunk:
                    raise self._body_error(chunk)
                choices = chunk.get("choices") or []
                if choices:
                    text, finish = choice_text(choices[0])
                    if text:
                        yield TextDelta(text)
                    finished = finished or finish is not None
                usage = usage_from_openai(chunk.get("usage")) or usage
            if finished:
                await self._drain(events)
        if not finished:
            raise self._cut()
        if usage is not None:
            yield usage

    def _parse_body(self, obj: Any) -> list[StreamEvent]:
        """A plain JSON completion (a server that ignored ``stream``)."""
        if isinstance(obj, dict) and "error" in obj:
            raise self._body_error(obj)
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._error("protocol", "Response is JSON but not a completion.")
        text, _ = choice_text(choices[0])
        events: list[StreamEvent] = [TextDelta(text)] if text else []
        usage = usage_from_openai(obj.get("usage"))
        if usage is not None:
            events.append(usage)
        return events
