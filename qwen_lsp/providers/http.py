"""HTTP plumbing shared by the streaming providers.

Everything here is about the transport, not a particular wire format:
one lazily created ``httpx.AsyncClient`` per provider, the plain-http guard,
mapping HTTP statuses and transport exceptions to :class:`UpstreamError`,
reading Server-Sent Events (framed by httpx-sse) under a byte budget, and
scrubbing the API key from anything that ends up in a message.
"""

from __future__ import annotations

import asyncio
import codecs
import email.utils
import ipaddress
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from httpx_sse import EventSource, ServerSentEvent

from qwen_lsp.providers.base import StreamEvent, UpstreamError, UpstreamRequest

# Upstream text quoted in a message is cut to this many characters.
MAX_DETAIL_CHARS = 300
# Error bodies are small; never read more than this from one.
MAX_ERROR_BODY_BYTES = 64 * 1024
# After the final event, how long and how many events we read to reach the
# end of the body (normally just the terminating chunk, already in flight).
DRAIN_TIMEOUT_S = 0.5
DRAIN_MAX_EVENTS = 8
IDLE_POLL_S = 0.05

# Anything that looks like a DashScope/OpenAI style secret key. Used as a
# second line of defence after removing the configured key itself.
_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_\-]{6,}")


def scrub(text: str, secret: str | None) -> str:
    """Remove the configured key, and anything key-shaped, from ``text``."""
    if secret:
        text = text.replace(secret, "***")
    return _KEY_LIKE.sub("sk-***", text)


def truncate(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(base_url: str, api_key: str | None) -> None:
    """Refuse to send a key in clear text to anything but this machine."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamError("config", f"Invalid base URL {base_url!r}: expected http(s)://host/...")
    if api_key and parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise UpstreamError(
            "config",
            f"Refusing to send the API key over plain http to {parts.hostname}: "
            "use an https:// base URL (plain http is only allowed for localhost).",
        )


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def describe_error_body(body: bytes) -> tuple[str, str | None]:
    """Pull (message, code) out of an error body of either documented shape.

    OpenAI-compatible: ``{"error": {"message", "type", "code"}}``;
    DashScope native: ``{"code", "message", "request_id"}``. Anything else is
    quoted as text (HTML error pages from proxies, for instance).
    """
    text = body.decode("utf-8", errors="replace")
    try:
        obj = json.loads(text)
    except ValueError:
        return truncate(re.sub(r"<[^>]+>", " ", text)), None
    if isinstance(obj, dict):
        return describe_error_object(obj)
    return truncate(text), None


def describe_error_object(obj: dict[str, Any]) -> tuple[str, str | None]:
    err = obj.get("error")
    if isinstance(err, dict):
        code = err.get("code") or err.get("type")
        return truncate(str(err.get("message") or "")), str(code) if code else None
    if isinstance(err, str):
        return truncate(err), None
    code = obj.get("code")
    return truncate(str(obj.get("message") or "")), str(code) if code else None


def kind_for_code(code: str | None) -> str:
    """Classify an error reported inside a 200 response by its code string."""
    c = (code or "").lower()
    if "apikey" in c or "api_key" in c or "accessdenied" in c or "auth" in c:
        return "auth"
    if ("throttl" in c or "ratequota" in c or "rate_limit" in c or "quota" in c
            or c.startswith("limit_")):
        return "rate_limited"
    if "notfound" in c or "not_found" in c or "model_not" in c:
        return "not_found"
    if "invalid" in c or "datainspection" in c or "parameter" in c:
        return "bad_request"
    return "server"


_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def encode_body(body: dict[str, Any]) -> bytes:
    """JSON as UTF-8. A document may hold lone surrogates (JSON-RPC can carry
    "\\ud800", and files are read with surrogateescape); they cannot be sent
    as UTF-8, so the upstream gets U+FFFD in their place."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


class StreamingProvider:
    """Base class: client lifetime, request sending, SSE reading, errors."""

    default_name = "upstream"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_response_bytes: int = 1_000_000,
        name: str | None = None,
    ) -> None:
        self.name = name or self.default_name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key or None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self.max_response_bytes = max_response_bytes
        self._client: httpx.AsyncClient | None = None
        self._open_streams = 0

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r}, key={key})"

    # -- client ---------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            timeout = httpx.Timeout(
                connect=self._connect_timeout,
                read=self._read_timeout,
                write=self._read_timeout,
                pool=self._connect_timeout,
            )
            self._client = httpx.AsyncClient(timeout=timeout, trust_env=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def aclose_when_idle(self, grace: float) -> None:
        """Close once no stream is open, or after ``grace`` seconds.

        Used when settings change: completions already streaming from the old
        endpoint finish instead of failing with a closed connection.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._open_streams and loop.time() < deadline:
            await asyncio.sleep(IDLE_POLL_S)
        await self.aclose()

    # -- streaming ------------------------------------------------------------

    async def stream(self, request: UpstreamRequest) -> AsyncIterator[StreamEvent]:
        """The completion for ``request`` as text deltas, then usage if reported.

        Closing the iterator early closes the HTTP response, which stops the
        upstream from generating (and billing) the rest.
        """
        self._open_streams += 1
        try:
            async with aclosing(self._stream(request)) as events:
                async for event in events:
                    yield event
        finally:
            self._open_streams -= 1

    def _stream(self, request: UpstreamRequest) -> AsyncIterator[StreamEvent]:
        raise NotImplementedError

    # -- errors ---------------------------------------------------------------

    def _error(self, kind: str, message: str, **kw: Any) -> UpstreamError:
        return UpstreamError(kind, scrub(message, self._api_key), **kw)

    def _auth_headers(self) -> dict[str, str]:
        if self._api_key:
            return {"Authorization": f"Bearer {self._api_key}"}
        return {}

    def _status_error(self, status: int, body: bytes, headers: httpx.Headers) -> UpstreamError:
        detail, code = describe_error_body(body)
        suffix = f": {detail.rstrip('. ')}" if detail else ""
        if status == 429 or kind_for_code(code) == "rate_limited":
            # DashScope's throttling codes mean a rate limit whatever the status.
            retry = parse_retry_after(headers.get("retry-after"))
            return self._error(
                "rate_limited",
                f"Rate limited (HTTP {status}){suffix}",
                status=status,
                code=code,
                retry_after=retry,
            )
        if status == 400:
            return self._error(
                "bad_request", f"Bad request (HTTP 400){suffix}", status=status, code=code
            )
        if status in (401, 403):
            msg = (
                f"Authentication failed (HTTP {status}){suffix}. Check the API key, and that the "
                "key belongs to the configured `region` (intl and cn keys are different)."
            )
            return self._error("auth", msg, status=status, code=code)
        if status == 404:
            msg = f"Model {self.model!r} or endpoint not found (HTTP 404){suffix}. Check `model` and the base URL."
            return self._error("not_found", msg, status=status, code=code)
        if status >= 500:
            return self._error(
                "server", f"Upstream server error (HTTP {status}){suffix}", status=status, code=code
            )
        return self._error(
            "protocol", f"Unexpected HTTP status {status}{suffix}", status=status, code=code
        )

    def _body_error(self, obj: dict[str, Any]) -> UpstreamError:
        """An error object delivered inside a successful response or stream."""
        detail, code = describe_error_object(obj)
        label = f" [{code}]" if code else ""
        return self._error(
            kind_for_code(code), f"Upstream error{label}: {detail or 'no message'}", code=code
        )

    def _transport_error(self, exc: httpx.HTTPError, *, reading: bool) -> UpstreamError:
        where = (
            "while reading the response" if reading else f"calling {urlsplit(self.base_url).netloc}"
        )
        if isinstance(exc, httpx.TimeoutException):
            what = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting for data"
            return self._error("timeout", f"Timed out {what} ({where}).")
        if isinstance(exc, httpx.ConnectError):
            return self._error(
                "connect",
                f"Cannot connect to {urlsplit(self.base_url).netloc}: {truncate(str(exc))}",
            )
        if reading or isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            return self._error(
                "protocol", f"Connection lost {where}: {truncate(str(exc)) or type(exc).__name__}"
            )
        return self._error(
            "connect", f"HTTP failure {where}: {truncate(str(exc)) or type(exc).__name__}"
        )

    # -- sending and reading --------------------------------------------------

    async def _open(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> httpx.Response:
        """POST and return the streaming response once its status is 200.

        Non-200 responses are read (bounded), closed, and raised as errors.
        """
        check_transport(self.base_url, self._api_key)
        client = self._http()
        all_headers = {
            "Accept-Encoding": "identity",
            "Content-Type": "application/json",
            **self._auth_headers(),
            **headers,
        }
        request = client.build_request("POST", url, content=encode_body(body), headers=all_headers)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, reading=False) from None
        if response.status_code == 200:
            return response
        try:
            data = await self._read_bounded(response, MAX_ERROR_BODY_BYTES, strict=False)
        finally:
            await response.aclose()
        raise self._status_error(response.status_code, data, response.headers)

    async def _read_bounded(self, response: httpx.Response, limit: int, *, strict: bool) -> bytes:
        """Read a whole body, at most ``limit`` bytes (strict: raise if over)."""
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    if strict:
                        raise self._too_large()
                    chunks.append(chunk[: limit - (size - len(chunk))])
                    break
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, reading=True) from None
        return b"".join(chunks)

    def _too_large(self) -> UpstreamError:
        return self._error(
            "protocol", f"Response exceeded {self.max_response_bytes} bytes; stopped reading."
        )

    @staticmethod
    def content_type(response: httpx.Response) -> str:
        return response.headers.get("content-type", "").partition(";")[0].strip().lower()

    async def _read_json(self, response: httpx.Response) -> Any:
        """Read a complete (non-streamed) JSON body under the byte budget."""
        data = await self._read_bounded(response, self.max_response_bytes, strict=True)
        try:
            return json.loads(data)
        except ValueError:
            raise self._error("protocol", "Malformed JSON in a non-streamed response.") from None

    async def _events(self, response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
        """SSE events from ``response`` (framing by httpx-sse), byte-bounded."""
        limited = _LimitedResponse(response, self.max_response_bytes, self._too_large)
        source = EventSource(cast(httpx.Response, limited))
        try:
            async with aclosing(source.aiter_sse()) as events:
                async for event in events:
                    yield event
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, reading=True) from None

    async def _drain(self, events: AsyncIterator[ServerSentEvent]) -> None:
        """Read the rest of a finished stream so its connection can be reused.

        httpx puts a connection back in its pool only when the body was read
        to its end; a response closed earlier takes its connection with it,
        and the next completion pays for a new TCP and TLS handshake. This is
        best effort: a server that goes on talking after its final event is
        cut off after a few events or a short wait.
        """
        seen = 0
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                async for _ in events:
                    seen += 1
                    if seen >= DRAIN_MAX_EVENTS:
                        return
        except (TimeoutError, UpstreamError):
            pass

    def _wrong_content_type(self, ctype: str) -> UpstreamError:
        return self._error(
            "protocol",
            f"Expected a text/event-stream response, got {ctype or 'no content type'!r}.",
        )

    def _malformed(self, data: str) -> UpstreamError:
        return self._error("protocol", f"Malformed JSON in stream: {truncate(data, 120)}")

    def _cut(self) -> UpstreamError:
        return self._error("protocol", "Stream ended before the completion finished (cut mid-way).")


class _LimitedResponse:
    """The two parts of ``httpx.Response`` that httpx-sse reads, with a byte cap.

    Counting raw bytes (rather than events) means a server streaming an
    endless line with no event boundary is still stopped at the cap.
    """

    def __init__(self, response: httpx.Response, limit: int, too_large: Any) -> None:
        self._response = response
        self._limit = limit
        self._too_large = too_large
        self.headers = response.headers

    async def aiter_text(self) -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        seen = 0
        async for chunk in self._response.aiter_bytes():
            seen += len(chunk)
            if seen > self._limit:
                raise self._too_large()
            text = decoder.decode(chunk)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
